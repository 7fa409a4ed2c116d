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
    (dict(gate="mlp"), "unknown gate 'mlp'; valid choices: avg_keys, centroid, avg_values, random, learned, "
                       "learned_avg_keys"),
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
