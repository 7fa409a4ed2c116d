"""The official EMoE code's router and protocol as knobs, each checked against an independent computation of the
rule (qiuzh20/EMoE: Language/moe_utils.py, search_glue_no_trainer.py; its Tutel: fast_dispatch.py, losses.py,
gates/cosine_top.py)."""

import math

import numpy as np
import pytest
import torch
from conftest import ARCHS, hidden, tiny_inputs, tiny_model

import emoe
from emoe import EmoeConfig, convert, emoe_layers
from emoe.routing import capacity_slots, load_importance_loss, route


def slots_by_hand(probs: np.ndarray, experts: np.ndarray, capacity_factor: float) -> np.ndarray:
    """The capacity rule written out with Python loops: tokens in order of their largest probability (ties by
    position), all first choices before any second choice, each expert taking pairs until it holds
    n * int(factor * ceil(T / N))."""
    num_tokens, num_experts = probs.shape
    n = experts.shape[1]
    capacity = n * int(capacity_factor * math.ceil(num_tokens / num_experts))
    order = sorted(range(num_tokens), key=lambda t: (-probs[t].max(), t))
    used = [0] * num_experts
    keep = np.zeros_like(experts, dtype=bool)
    for j in range(n):
        for t in order:
            e = experts[t, j]
            keep[t, j] = used[e] < capacity
            used[e] += 1  # a pair past capacity still took its place in the count (as Tutel's cumsum does)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_tokens, num_experts, k, factor", [(40, 8, 3, 1.0), (37, 6, 2, 0.5), (64, 16, 4, 1.5)])
def test_capacity_matches_the_rule_written_out(seed, num_tokens, num_experts, k, factor):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=g) * 3
    logits[:, 0] += 5.0  # a popular expert: its later claimants overflow
    probs = logits.softmax(-1)
    experts = logits.topk(k, dim=-1).indices
    keep = capacity_slots(probs, experts, factor).numpy()
    expected = slots_by_hand(probs.numpy(), experts.numpy(), factor)
    np.testing.assert_array_equal(keep, expected)
    assert (~keep).any()  # the case is one that drops
    partial = keep.any(1) & ~keep.all(1)
    assert partial.any()  # some tokens lose some but not all of their experts


def routed_by_hand(model, ffn, capacity_factor):
    """Run the tiny BERT once; return the layer's output (``[T, d]``, with its graph), its input activations and the
    kept (token, expert) pairs worked out by hand: avg-k gates, top-2, the capacity rule (``[T, N]`` 0/1)."""
    seen = {}
    ffn._keys_proj[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    ffn.register_forward_hook(lambda m, a, out: seen.update(h=a[0].detach(), out=out))
    model(**tiny_inputs("bert"))
    x, h = seen["x"].reshape(-1, 32), seen["h"].reshape(-1, 64)
    keys = ffn._keys_proj[0].weight.detach()
    gates = torch.stack([keys[ffn.labels == i].mean(0) for i in range(ffn.num_experts)])
    logits = x @ gates.t()
    experts = logits.topk(ffn.top_k, dim=-1).indices
    keep = torch.from_numpy(slots_by_hand(logits.softmax(-1).numpy(), experts.numpy(), capacity_factor))
    assert (~keep).any() and keep.any()
    table = torch.zeros(len(x), ffn.num_experts).scatter(-1, experts, keep.float())
    return seen["out"].reshape(-1, 32), h, table


def test_capacity_drops_the_expert_and_its_share_of_the_bias():
    """A dropped pair removes that expert's neurons from the token and its bias / k share (official: each expert
    carries the output bias divided by top_k)."""
    model = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0,), capacity_factor=0.25))
    (ffn,) = emoe_layers(model)
    with torch.no_grad():
        out, h, table = routed_by_hand(model, ffn, 0.25)
    expected = h * table[:, ffn.labels] @ ffn.values.weight.detach().t() \
        + table.sum(1, keepdim=True) / 2 * ffn.values.bias.detach()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("capacity", [None, 0.25])
def test_per_expert_bias_equals_the_shared_bias_at_conversion(arch, capacity):
    """Official experts each carry a copy of bias / k: at conversion the model is the shared-bias model, with or
    without dropped pairs; architectures without a value bias get no copies."""
    inputs = tiny_inputs(arch)
    a, b = tiny_model(arch), tiny_model(arch)
    cfg = dict(num_experts=8, top_k=2, layers=(0, -1), capacity_factor=capacity)
    convert(a, EmoeConfig(**cfg))
    convert(b, EmoeConfig(**cfg, expert_bias="per_expert"))
    with torch.no_grad():
        torch.testing.assert_close(hidden(b, inputs), hidden(a, inputs), atol=1e-5, rtol=1e-5)
    for ffn in emoe_layers(b):
        bias = getattr(ffn.values, "bias", None)
        if bias is None:
            assert ffn.expert_bias is None
        else:
            torch.testing.assert_close(ffn.expert_bias.detach(), (bias.detach() / 2).expand(8, -1))


def test_per_expert_biases_are_each_tokens_own_and_train_apart():
    """With per-expert biases a token's output bias is the sum of its kept experts' copies (a dropped pair adds
    none); the gradient reaches each copy in proportion to the tokens that kept it, and none reaches the dense bias."""
    model = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0,), capacity_factor=0.25, expert_bias="per_expert"))
    (ffn,) = emoe_layers(model)
    with torch.no_grad():
        ffn.expert_bias.copy_(torch.randn_like(ffn.expert_bias))
    model.eval()
    out, h, table = routed_by_hand(model, ffn, 0.25)
    expected = h * table[:, ffn.labels] @ ffn.values.weight.detach().t() + table @ ffn.expert_bias.detach()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    torch.testing.assert_close(ffn.expert_bias.grad, table.sum(0)[:, None].expand(4, 32))
    assert ffn.values.bias.grad is None or not ffn.values.bias.grad.any()


def test_capacity_none_is_exact_and_a_large_factor_drops_nothing():
    model, inputs = tiny_model("bert"), tiny_inputs("bert")
    ref = model.state_dict()
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0, 1)))
    with torch.no_grad():
        exact = hidden(model, inputs)
    other = tiny_model("bert")
    other.load_state_dict(ref)
    convert(other, EmoeConfig(num_experts=4, top_k=2, layers=(0, 1), capacity_factor=100.0))
    with torch.no_grad():
        torch.testing.assert_close(hidden(other, inputs), exact, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_noise_and_expert_dropout_act_in_training_only(arch):
    model, inputs = tiny_model(arch), tiny_inputs(arch)
    convert(model, EmoeConfig(num_experts=8, top_k=2, layers=(0, -1), gate_noise=50.0, expert_dropout=0.5))
    with torch.no_grad():
        model.eval()
        first, second = hidden(model, inputs), hidden(model, inputs)
        torch.testing.assert_close(first, second, atol=0, rtol=0)  # evaluation is deterministic
        model.train()
        torch.manual_seed(0)
        noisy = hidden(model, inputs)
        torch.manual_seed(1)
        assert (hidden(model, inputs) - noisy).abs().max() > 1e-4  # training draws noise and dropout


def test_gate_noise_is_scaled_by_the_number_of_experts():
    logits = torch.zeros(20000, 8)
    torch.manual_seed(0)
    noisy = route(logits, 2, training=True, gate_noise=2.0).scores
    assert noisy.std().item() == pytest.approx(2.0 / 8, rel=0.02)
    assert torch.equal(route(logits, 2, training=False, gate_noise=2.0).scores, logits)


def test_load_importance_loss_is_tutels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g)
    kth = torch.randn(50, generator=g)
    p = logits.softmax(-1).numpy()
    imp = p.sum(0)
    cv2 = lambda v: v.var(ddof=1) / (v.mean() ** 2 + 1e-10)  # noqa: E731  (torch's var is unbiased)
    from scipy.stats import norm

    load = norm.cdf(p - kth.numpy()[:, None], scale=1.0 / 6).sum(0)
    expected = (cv2(imp) + cv2(load)) / 2
    assert load_importance_loss(logits, kth, 1.0).item() == pytest.approx(expected, rel=1e-4)


def test_aux_loss_reaches_the_hidden_states_with_a_frozen_gate():
    model = tiny_model("bert").train()
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(1,), gate_noise=1.0, aux_loss_weight=0.01))
    (ffn,) = emoe_layers(model)
    hidden(model, tiny_inputs("bert"))
    aux = emoe.aux_loss(model)
    assert aux is not None and aux.requires_grad
    model.zero_grad()
    aux.backward()
    lower = model.encoder.layer[0].attention.self.query.weight.grad  # below the converted block
    assert lower is not None and lower.abs().sum() > 0
    assert not list(ffn.gate.parameters())  # avg_keys has nothing to train
    assert ffn._keys_proj[0].weight.grad is None or ffn._keys_proj[0].weight.grad.abs().sum() == 0  # gate frozen


@pytest.mark.parametrize("arch", ARCHS)
def test_learned_avg_keys_equals_avg_keys_at_initialisation(arch):
    inputs = tiny_inputs(arch)
    a, b = tiny_model(arch), tiny_model(arch)
    convert(a, EmoeConfig(gate="avg_keys", num_experts=8, top_k=2, layers=(0, -1)))
    convert(b, EmoeConfig(gate="learned_avg_keys", num_experts=8, top_k=2, layers=(0, -1)))
    torch.testing.assert_close(hidden(b, inputs), hidden(a, inputs), atol=0, rtol=0)


def test_official_learned_gate_weights_sum_to_one_and_train():
    model = tiny_model("bert").train()
    convert(model, EmoeConfig(gate="learned", num_experts=8, top_k=3, layers=(1,), gate_noise=1.0,
                              aux_loss_weight=0.01))
    (ffn,) = emoe_layers(model)
    routings = []
    original = emoe.layer.route
    emoe.layer.route = lambda *a, **k: routings.append(original(*a, **k)) or routings[-1]
    try:
        out = hidden(model, tiny_inputs("bert"))
    finally:
        emoe.layer.route = original
    (r,) = routings
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(r.weights.shape[:-1]))
    (out.sum() + emoe.aux_loss(model)).backward()
    gate = ffn.gate
    assert gate.sim_matrix.grad.abs().sum() > 0 and gate.cosine_projector.weight.grad.abs().sum() > 0
    assert gate.temperature.grad is not None
    assert gate.temperature.exp().item() == pytest.approx(2.0)  # 1 / 0.5 at initialisation


def test_cluster_seed_fixed_shares_the_partition_across_trial_seeds():
    def labels(**kw):
        model = tiny_model("bert")
        convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0,), **kw), use_cache=False)
        return emoe_layers(model)[0].labels

    fixed = [labels(seed=s, cluster_seed=0) for s in (0, 1, 2)]
    assert all(torch.equal(fixed[0], f) for f in fixed[1:])
    per_trial = [labels(seed=s, cluster_seed="trial") for s in (0, 1, 2)]
    assert torch.equal(per_trial[0], fixed[0])  # trial seed 0 = cluster seed 0
    assert not all(torch.equal(per_trial[0], f) for f in per_trial[1:])


@pytest.mark.parametrize("selection", ["top", "bottom", "not_top"])
def test_expert_selection_picks_the_right_experts(selection):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 6, generator=g)
    r = route(logits, 2, selection=selection)
    order = logits.argsort(-1, descending=True)
    expected = {"top": order[:, :2], "bottom": order[:, -2:], "not_top": order[:, 2:]}[selection]
    assert torch.equal(r.experts.sort(-1).values, expected.sort(-1).values)


# --- GPT-2's MLP output dropout (the official gpt_to_MoE replaces the whole MLP, its dropout with it) ---

def _mlp_output_in_training(model, block: int, inputs) -> torch.Tensor:
    out = {}
    handle = model.h[block].mlp.register_forward_hook(lambda m, a, o: out.setdefault("y", o))
    model.train()
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return out["y"]


def test_official_mlp_output_dropout_drops_gpt2s_and_keeps_berts(tmp_path):
    import transformers

    from emoe.convert import load_converted, save_converted

    inputs = tiny_inputs("gpt2")
    for setting, zeros in (("keep", True), ("official", False)):
        model = tiny_model("gpt2")
        model.config.resid_pdrop = 0.5
        for block in model.h:
            block.mlp.dropout.p = 0.5
        convert(model, EmoeConfig(num_experts=4, top_k=4, layers=(1,), mlp_output_dropout=setting))
        y = _mlp_output_in_training(model, 1, inputs)
        assert bool((y == 0).any()) == zeros  # about half the outputs zeroed while the dropout is there
        assert (_mlp_output_in_training(model, 0, inputs) == 0).any()  # an unconverted block keeps its own
        assert isinstance(model.h[1].mlp.dropout, torch.nn.Identity) == (setting == "official")
    # a saved model loads back without it
    model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=100, pad_token_id=0))
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(-1,), mlp_output_dropout="official"))
    loaded = load_converted(save_converted(model, tmp_path / "m"))
    assert isinstance(loaded.transformer.h[1].mlp.dropout, torch.nn.Identity)
    assert not isinstance(loaded.transformer.h[0].mlp.dropout, torch.nn.Identity)
    # BERT: the official code keeps BertOutput's dropout (it is not in the replaced layers)
    bert = tiny_model("bert")
    convert(bert, EmoeConfig(num_experts=4, top_k=2, layers=(1,), mlp_output_dropout="official"))
    assert isinstance(bert.encoder.layer[1].output.dropout, torch.nn.Dropout)


def test_max_grad_norm_none_never_clips(tiny_model_dir, tiny_data_dir, monkeypatch):
    from emoe.train import train_and_evaluate

    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(a[1]) or clip(*a, **k))
    cfg = {"model": tiny_model_dir, "data_dir": str(tiny_data_dir), "num_experts": 4, "top_k": 2, "batch_size": 32,
           "max_length": 32, "max_train_samples": 64, "max_eval_samples": 16, "epochs": 1, "ood_sets": ()}
    train_and_evaluate({**cfg, "max_grad_norm": 0.5})
    assert calls == [0.5, 0.5]  # every optimiser step
    calls.clear()
    train_and_evaluate({**cfg, "max_grad_norm": None})
    assert calls == []


def test_paper_preset_is_the_official_command(capsys):
    """--preset paper: ASHA off, no clipping, fp32, the official OOD script's protocol, GPT-2's MLP dropout as the
    official conversion leaves it, and what it set before; its dry run says each of them."""
    from emoe import hparams
    from emoe.sweep import SweepSettings, main
    from emoe.sweep.design import Ablation

    settings = SweepSettings.from_preset("paper")
    cfg = hparams.trial_config(settings.trial)
    assert settings.scheduler == "none"
    assert (cfg["max_grad_norm"], cfg["precision"], cfg["ood_protocol"], cfg["mlp_output_dropout"]) == (
        None, "fp32", "emoe", "official")
    assert (cfg["model"], cfg["layers"], cfg["num_experts"], cfg["top_k"], cfg["capacity_factor"]) == (
        "bert-base-cased", (10,), 64, 16, 1.5)
    design = Ablation.over("clustering", ["constrained"])
    assert main(design, ["--preset", "paper", "--dry-run", "--model", "minilm", "--layers", "4", "--data-dir", "demo",
                         "--max-train-samples", "64", "--max-eval-samples", "16"]) == 0
    out = capsys.readouterr().out
    for text in ("scheduler: none", "max_grad_norm None", "precision fp32", "mlp_output_dropout official",
                 "OOD: ood_protocol emoe (metrics: accuracy; splits: one per set; ood_score: plain mean of the sets; "
                 "max length 128; batch 32"):
        assert text in out, text
