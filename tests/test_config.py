import pytest

from emoe import EmoeConfig


def test_defaults_are_the_papers():
    c = EmoeConfig()
    assert (c.init, c.method, c.clustering, c.gate, c.num_experts, c.top_k, c.layers) == (
        "pretrained", "emoe", "constrained", "avg_keys", 16, 4, (-2, -1))


def test_json_round_trip():
    c = EmoeConfig(init="random", clustering="spectral", gate="learned", num_experts=8, top_k=2, layers=[0, -1],
                   seed=7, aux_loss_weight=0.01, gate_noise=1.0, capacity_factor=1.5, expert_dropout=0.1,
                   cluster_seed="trial", expert_selection="not_top")
    assert EmoeConfig.from_json(c.to_json()) == c
    assert EmoeConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["layers"] == [0, -1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(clustering="dbscan"), "unknown clustering 'dbscan'; valid choices: constrained, kmeans, hierarchical, "
                                "spectral, random, contiguous"),
    (dict(gate="moe_router"), "unknown gate 'moe_router'; valid choices: avg_keys, centroid, avg_values, random, "
                              "learned, learned_avg_keys, analytic, mlp"),
    (dict(init="imagenet"), "unknown init 'imagenet'; valid choices: pretrained, random"),
    (dict(method="moe"), "unknown method 'moe'; valid choices: emoe, dense"),
    (dict(num_experts=4, top_k=8), "top_k=8 must be between 1 and num_experts=4"),
    (dict(top_k=0), "top_k=0 must be between 1"),
    (dict(num_experts=0, top_k=1), "num_experts=0 must be >= 1"),
    (dict(num_experts=16.0), "num_experts must be an integer"),
    (dict(layers=()), "layers is empty"),
    (dict(aux_loss_weight=0.1), "aux_loss_weight=0.1 needs gate_noise > 0"),
    (dict(capacity_factor=0.0), "capacity_factor=0.0 must be > 0 (or none: exact routing)"),
    (dict(expert_dropout=1.0), "expert_dropout=1.0 must be in [0, 1)"),
    (dict(gate_noise=-1.0), "gate_noise=-1.0 must be >= 0"),
    (dict(cluster_seed="each"), "cluster_seed must be an integer or 'trial', got 'each'"),
    (dict(expert_selection="middle"), "unknown expert_selection 'middle'; valid choices: top, bottom, not_top"),
    (dict(num_experts=4, top_k=4, expert_selection="not_top"), "top_k=4 must be below num_experts=4"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError) as err:
        EmoeConfig(**kwargs)
    assert message in str(err.value)


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="unknown EmoeConfig field"):
        EmoeConfig.from_dict({"experts": 4})


def test_every_knob_round_trips_exactly_through_its_mlflow_param():
    """Issue 21: config -> MLflow params -> config is exact for every knob (a tuple is logged as ``a,b``; reading it
    back with ``ast.literal_eval`` raised, so ``emoe.evaluate`` failed on every sweep run with --ood-sets)."""
    from emoe import hparams
    from emoe.tracking import param_value

    samples = {hparams._optional_int: 3, hparams._optional_float: 0.5, hparams._optional_str: "x",
               hparams._optional_names: ("imdb", "yelp"), hparams._int_tuple: (-2, -1), hparams._bool: True,
               int: 7, float: 5e-05, hparams._cluster_seed: "trial"}
    checked = 0
    for name, knob in hparams.KNOBS.items():
        values = [knob.default, *(knob.choices or ()), *([samples[knob.type]] if knob.type in samples else [])]
        for value in values:
            text = param_value(value)
            assert hparams.from_param(name, text) == value, (name, value, text)
            checked += 1
    assert checked > 2 * len(hparams.KNOBS)
    cfg = hparams.trial_config({"ood_sets": ("imdb", "yelp"), "layers": (-1,), "max_grad_norm": None,
                                "keep_best": True, "cluster_seed": "trial", "ood": {"mine": "/data/mine.csv"}})
    from emoe.evaluate import trial_config_of

    assert trial_config_of({k: param_value(v) for k, v in cfg.items()}) == cfg


def test_interval_states_its_bounds():
    from emoe.config import Interval

    assert [str(Interval(1)), str(Interval(0, open_low=True)), str(Interval(0, 1)), str(Interval(0, 1, open_high=True)),
            str(Interval(high=2.5))] == [">= 1", "> 0", "in [0, 1]", "in [0, 1)", "<= 2.5"]
    assert 0 in Interval(0, 1) and 1 in Interval(0, 1) and 1 not in Interval(0, 1, open_high=True)
    assert 0 not in Interval(0, open_low=True) and float("nan") not in Interval(0)
    with pytest.raises(ValueError, match=r"^x=2 must be in \[0, 1\] \(or none: off\)$"):
        Interval(0, 1).check("x", 2, none="off")


NUMERIC_TYPES = ("int", "float", "_optional_int", "_optional_float", "_cluster_seed")


def test_every_numeric_knob_declares_its_range():
    """Issue 22: each numeric knob carries its valid range (a new one without is caught here); the construction
    knobs' are EmoeConfig's own."""
    from emoe import hparams

    numeric = [k for k in hparams.KNOBS.values() if k.type.__name__ in NUMERIC_TYPES]
    assert len(numeric) > 20 and [k.name for k in numeric if k.range is None] == []
    for name, valid in EmoeConfig.RANGES.items():
        assert hparams.KNOBS[name].range is valid


def _beyond(valid, step=1):
    """The values just outside an interval (and its bounds, inside unless open)."""
    outside, inside = [], []
    for bound, sign, is_open in ((valid.low, -1, valid.open_low), (valid.high, 1, valid.open_high)):
        if bound is not None:
            outside += [bound + sign * step] + ([bound] if is_open else [])
            inside += [] if is_open else [bound]
    return outside, inside


def test_every_range_is_checked_by_trial_config_in_one_line():
    """A value just outside a knob's range is refused naming the knob, the value and the range; a bound inside is
    accepted."""
    from emoe import hparams

    base = {"num_experts": 4, "top_k": 1, "gate_noise": 1.0, "batch_size": 8}
    for name, knob in hparams.KNOBS.items():
        if knob.range is None:
            continue
        step = 1 if knob.type.__name__ in ("int", "_optional_int", "_cluster_seed") else 0.5
        outside, inside = _beyond(knob.range, step)
        valid = "between 1 and num_experts=4" if name == "top_k" else str(knob.range)  # k's range depends on N
        for value in outside:
            with pytest.raises(ValueError) as err:
                hparams.trial_config({**base, name: value})
            text = str(err.value)
            assert "\n" not in text and f"{name}={knob.type(value)} must be {valid}" in text, text
        for value in inside:
            assert hparams.trial_config({**base, name: value})[name] == value


@pytest.mark.parametrize("overrides, message", [
    ({"warmup_ratio": 1.5}, "warmup_ratio=1.5 must be in [0, 1]"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1 must be >= 0"),
    ({"gate_noise": "-1e-3"}, "gate_noise=-0.001 must be >= 0"),
    ({"expert_dropout": 1.0}, "expert_dropout=1.0 must be in [0, 1)"),
    ({"capacity_factor": 0}, "capacity_factor=0.0 must be > 0 (or none: exact routing)"),
    ({"num_experts": 4, "top_k": 8}, "top_k=8 must be between 1 and num_experts=4"),
    ({"seed": -1}, "seed=-1 must be in [0, 4294967295]"),
    ({"max_grad_norm": 0}, "max_grad_norm=0.0 must be > 0 (or none)"),
    ({"eval_steps": 0}, "eval_steps=0 must be >= 1 (or none)"),
])
def test_out_of_range_knobs_are_refused(overrides, message):
    from emoe import hparams

    with pytest.raises(ValueError) as err:
        hparams.trial_config(overrides)
    assert str(err.value) == message


def test_help_shows_each_range():
    from emoe.train import build_parser

    text = " ".join(build_parser().format_help().split())
    for fragment in ("share of steps with linear warm-up; warmup_ratio in [0, 1] (default: 0.06)",
                     "weight_decay >= 0 (default: 0.01)", "capacity_factor > 0 or none (default: None)",
                     "expert_dropout in [0, 1) (default: 0.0)", "batch_size >= 1 (default: 32)"):
        assert fragment in text
