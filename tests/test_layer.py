"""The EMoE layer and the surgery: equivalence with the dense model, routing, gates, and safe failure."""

import copy
import types

import pytest
import torch
from conftest import ARCHS, hidden, tiny_inputs, tiny_model
from transformers.pytorch_utils import Conv1D

import emoe
from emoe import EmoeConfig, convert, emoe_layers

NON_LEARNED = [g for g in emoe.GATES if g != "learned"]  # gates whose weights are 1 (the binary mask) forward
# the gates that score x . G_i (not learned: the cosine router; not the fitted and analytic routers: their own
# functions of x)
VECTOR_GATES = [g for g in NON_LEARNED if g not in ("mlp", "analytic", "norm_regression")]


def calibration(arch: str) -> list:
    """Calibration batches for the routers fitted to data (mlp, analytic, norm_regression); other conversions ignore
    them."""
    return [tiny_inputs(arch, seed) for seed in range(1, 21)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gate", NON_LEARNED)
def test_all_experts_equals_dense(arch, gate):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch)
    with torch.no_grad():
        ref = hidden(model, inputs)
        convert(model, EmoeConfig(clustering="kmeans", gate=gate, num_experts=8, top_k=8, layers=(0, -1)),
                calibration=calibration(arch))
        out = hidden(model, inputs)
    assert len(emoe_layers(model)) == 2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


# (the gradient split reads a task loss, which these headless models lack: tests/test_controls.py converts a model
# with a head by it)
@pytest.mark.parametrize("clustering", [c for c in emoe.CLUSTERING if c != "gradient"])
def test_all_experts_equals_dense_every_clustering(clustering):
    model = tiny_model("bert")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        ref = hidden(model, inputs)
        convert(model, EmoeConfig(clustering=clustering, num_experts=4, top_k=4, layers=(0, 1, 2)),
                calibration=[tiny_inputs("bert", seed) for seed in range(20)])  # the data-driven splits' data
        torch.testing.assert_close(hidden(model, inputs), ref, atol=1e-5, rtol=0)


def test_fewer_experts_changes_output():
    model = tiny_model("bert")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        ref = hidden(model, inputs)
        convert(model, EmoeConfig(num_experts=8, top_k=2))
        assert (hidden(model, inputs) - ref).abs().max() > 1e-3


def _weight_rows(proj):
    """Keys [d_ff, d] straight from a first projection's weight (independent of emoe.architectures)."""
    return proj.weight.t() if isinstance(proj, Conv1D) else proj.weight


@pytest.mark.parametrize("arch", ARCHS)
def test_routing_is_top_k_of_direct_gate_computation(arch):
    model = tiny_model(arch)
    convert(model, EmoeConfig(clustering="constrained", gate="avg_keys", num_experts=8, top_k=3, layers=(1,)))
    (ffn,) = emoe_layers(model)
    keys_proj = ffn._keys_proj[0]
    seen = {}
    keys_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    ffn.register_forward_hook(lambda m, a, out: seen.update(h=a[0].detach(), out=out.detach()))
    with torch.no_grad():
        model(**tiny_inputs(arch))
    x, h = seen["x"], seen["h"]
    keys = _weight_rows(keys_proj)
    gates = torch.stack([keys[ffn.labels == i].mean(0) for i in range(8)])  # avg-k
    top = (x @ gates.t()).topk(3, dim=-1).indices  # [..., 3]
    keep = torch.zeros(*x.shape[:-1], 8).scatter(-1, top, 1.0)  # [..., N]
    neuron_mask = keep[..., ffn.labels]  # [..., d_ff]
    torch.testing.assert_close(seen["out"], ffn.values(h * neuron_mask), atol=1e-6, rtol=0)
    # each token keeps exactly k experts' worth of neurons
    assert torch.all(neuron_mask.sum(-1) == 3 * 64 // 8)


@pytest.mark.parametrize("gate", VECTOR_GATES)
def test_gate_follows_or_ignores_weights(gate):
    model = tiny_model("bert")
    convert(model, EmoeConfig(gate=gate, num_experts=4, top_k=2, layers=(0,)))
    (ffn,) = emoe_layers(model)
    before = ffn.gate_vectors().detach().clone()
    with torch.no_grad():
        ffn._keys_proj[0].weight.mul_(2.0)
        ffn.values.weight.mul_(3.0)
    after = ffn.gate_vectors().detach()
    expected = {"avg_keys": 2.0, "avg_values": 3.0}.get(gate, 1.0)  # fixed and learned gates do not follow
    torch.testing.assert_close(after, before * expected)


def test_gate_values_by_definition():
    model = tiny_model("gpt2")  # Conv1D: both projections stored transposed
    convert(model, EmoeConfig(gate="avg_values", num_experts=4, top_k=2, layers=(0,)))
    (ffn,) = emoe_layers(model)
    values = ffn.values.weight  # c_proj: [d_ff, d], row j is what neuron j writes
    expected = torch.stack([values[ffn.labels == i].mean(0) for i in range(4)])
    torch.testing.assert_close(ffn.gate_vectors(), expected)
    convert(model, EmoeConfig(gate="centroid", num_experts=4, top_k=2, layers=(1,)))
    ffn1 = emoe_layers(model)[1]
    unit = torch.nn.functional.normalize(ffn1._keys_proj[0].weight.t(), dim=1)
    torch.testing.assert_close(ffn1.gate_vectors(), torch.stack([unit[ffn1.labels == i].mean(0) for i in range(4)]))


def test_learned_avg_keys_gate_starts_from_avg_k_and_trains():
    model = tiny_model("bert").train()
    convert(model, EmoeConfig(gate="learned_avg_keys", num_experts=4, top_k=2, layers=(0,)))
    (ffn,) = emoe_layers(model)
    torch.testing.assert_close(ffn.gate.weight.detach(),
                               torch.stack([ffn.keys[ffn.labels == i].mean(0) for i in range(4)]).detach())
    out = hidden(model, tiny_inputs("bert"))
    out.sum().backward()
    assert ffn.gate.weight.grad is not None and ffn.gate.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in ffn.parameters() if p is not ffn.values.weight and p is not ffn.values.bias) == 4 * 32


def test_binary_gates_add_no_parameters():
    model = tiny_model("bert")
    n = sum(p.numel() for p in model.parameters())
    convert(model, EmoeConfig(gate="avg_keys", num_experts=4, top_k=2))
    assert sum(p.numel() for p in model.parameters()) == n


def test_diagnostics():
    model = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(-1,)))
    (ffn,) = emoe_layers(model)
    assert ffn.labels.shape == (64,) and ffn.labels.dtype == torch.long
    assert (ffn.num_experts, ffn.top_k, ffn.block) == (4, 2, 2)
    with torch.no_grad():
        model(**tiny_inputs("bert"))
    assert ffn.last_load.shape == (4,) and abs(ffn.last_load.sum().item() - 1) < 1e-6
    assert 0 <= ffn.load_entropy() <= torch.log(torch.tensor(4.0)).item() + 1e-6


def test_state_dict_and_deepcopy_round_trip():
    cfg = EmoeConfig(num_experts=4, top_k=2, clustering="random", gate="random")
    model = convert(tiny_model("bert"), cfg)
    clone = copy.deepcopy(model)
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        torch.testing.assert_close(hidden(clone, inputs), hidden(model, inputs))
        other = convert(tiny_model("bert", seed=1),
                        EmoeConfig(num_experts=4, top_k=2, clustering="kmeans", gate="random", seed=3))
        other.load_state_dict(model.state_dict())
        assert torch.equal(emoe_layers(other)[0].labels, emoe_layers(model)[0].labels)
        torch.testing.assert_close(hidden(other, inputs), hidden(model, inputs))


def test_dense_method_leaves_model_alone():
    model = tiny_model("bert")
    assert convert(model, EmoeConfig(method="dense")) is model and not emoe_layers(model)


def _untouched(model):
    return not emoe_layers(model) and not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("cfg, message", [
    (dict(layers=(0, 3)), "block index 3 out of range for a model with 3 blocks (valid: -3..2)"),
    (dict(layers=(-4,)), "block index -4 out of range"),
    (dict(layers=(0, -3)), "name the same block twice"),
    (dict(num_experts=128, top_k=4, clustering="kmeans"), "num_experts=128 exceeds the layer's 64 neurons"),
    (dict(num_experts=6, top_k=2, clustering="constrained"), "num_experts=6 does not divide d_ff=64 (block 1)"),
    (dict(num_experts=6, top_k=2, clustering="random"), "does not divide d_ff=64"),
])
def test_bad_conversion_raises_and_leaves_model_untouched(cfg, message):
    model = tiny_model("bert")
    with pytest.raises(ValueError) as err:
        convert(model, EmoeConfig(**cfg))
    assert message in str(err.value)
    assert _untouched(model)


def test_unbalanced_algorithms_accept_non_divisor():
    model = convert(tiny_model("bert"), EmoeConfig(num_experts=6, top_k=2, clustering="hierarchical"))
    assert all(torch.bincount(f.labels).min() > 0 for f in emoe_layers(model))


def test_second_conversion_refused():
    model = convert(tiny_model("bert"), EmoeConfig(num_experts=4, top_k=2))
    with pytest.raises(ValueError, match="already converted"):
        convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0, -1)))
    assert len(emoe_layers(model)) == 2


def test_unsupported_model_lists_supported_types():
    fake = torch.nn.Linear(2, 2)
    fake.config = types.SimpleNamespace(model_type="t5")
    with pytest.raises(ValueError, match="unsupported model type 't5'; supported: bert, roberta, distilbert, gpt2"):
        convert(fake, EmoeConfig())


def test_sequence_classification_wrapper_converts():
    import transformers as T

    cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    model = T.BertForSequenceClassification(cfg).eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        ref = model(**inputs).logits
        convert(model, EmoeConfig(num_experts=4, top_k=4))
        torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-5, rtol=0)
    assert model.emoe_config.num_experts == 4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gate", list(emoe.GATES))
@pytest.mark.parametrize("clustering", ["constrained", "kmeans"])  # balanced, and unequal experts (padding)
def test_sparse_execution_equals_masked(arch, gate, clustering):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch)
    convert(model, EmoeConfig(clustering=clustering, gate=gate, num_experts=8, top_k=2, layers=(0, -1)),
            calibration=calibration(arch))
    with torch.no_grad():
        masked = hidden(model, inputs)
        emoe.set_execution(model, "sparse")
        sparse = hidden(model, inputs)
        assert (masked - hidden(tiny_model(arch), inputs)).abs().max() > 1e-4  # routing really drops neurons
        emoe.set_execution(model, "masked")
        again = hidden(model, inputs)
    torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, masked, atol=0, rtol=0)


def test_sparse_execution_computes_only_the_selected_experts_and_follows_weight_changes():
    model = tiny_model("bert")
    convert(model, EmoeConfig(clustering="constrained", num_experts=8, top_k=2, layers=(1,)))
    (ffn,) = emoe_layers(model)
    emoe.set_execution(model, "sparse")
    widths = []
    ffn._keys_proj[0].register_forward_hook(lambda m, a, out: widths.append(out.shape[-1]))
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        hidden(model, inputs)
        assert widths == [2 * 64 // 8]  # k * m neurons per token instead of d_ff = 64
        ffn.values.weight.mul_(2.0)  # an in-place change (as an optimiser makes) repacks the weights
        sparse = hidden(model, inputs)
        emoe.set_execution(model, "masked")
        torch.testing.assert_close(sparse, hidden(model, inputs), atol=1e-5, rtol=1e-5)


def test_sparse_execution_is_inference_only_and_checks_its_mode():
    model = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=8, top_k=2, layers=(1,)))
    with pytest.raises(ValueError, match="unknown execution 'fast'; valid choices: masked, sparse"):
        emoe.set_execution(model, "fast")
    emoe.set_execution(model, "sparse").train()
    with pytest.raises(RuntimeError, match="sparse execution is for inference"):
        hidden(model, tiny_inputs("bert"))


def test_routing_is_fp32_under_bf16_autocast():
    """The router scores in fp32 even inside a bf16 autocast region (the official code's fp32 gate): the top-k
    choice is the one fp32 weights make, not one bf16 rounding could flip."""
    from emoe.gating import AvgKeysGate
    from emoe.routing import route

    g = torch.Generator().manual_seed(0)
    x, keys = torch.randn(64, 32, generator=g), torch.randn(16, 32, generator=g)
    gate = AvgKeysGate(keys, keys, torch.arange(16) % 8, 8, 0)
    gates = gate.vectors(keys, keys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = route(gate.logits(x.bfloat16(), keys, keys), top_k=2, combine="softmax", training=True,
                  gate_noise=1.0, aux=True)
        assert (x @ gates.t()).dtype == torch.bfloat16  # what autocast does to a plain matmul
    assert r.scores.dtype == r.weights.dtype == r.aux_loss.dtype == torch.float32
    r = route(gate.logits(x, keys, keys), top_k=2)
    torch.testing.assert_close(r.scores, x @ gates.t())
    assert torch.equal(r.experts, (x @ gates.t()).topk(2, dim=-1).indices)
    assert r.counts.sum() == 64 * 2 and torch.isclose(r.load.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_model_saves_and_loads_as_converted(arch, tmp_path):
    """save_converted / load_converted round-trip a converted model: the same class, state-dict keys and
    partitions (set by hand here: no clustering on load), and in float32 the same outputs."""
    from emoe.convert import load_converted, save_converted

    model = tiny_model(arch)
    convert(model, EmoeConfig(num_experts=8, top_k=2, layers=(0, -1), gate="learned", capacity_factor=1.5))
    for f in emoe_layers(model):  # partitions that no clustering would give: they must come from the file
        f.labels.copy_(torch.arange(f.labels.numel()) % 8)
    model.eval()
    inputs = tiny_inputs(arch)
    for half in (False, True):  # float32: the same model exactly; float16 (kept models): the same structure
        save_converted(model, tmp_path / f"m{half}", half=half)
        loaded = load_converted(tmp_path / f"m{half}")
        assert loaded.state_dict().keys() == model.state_dict().keys()
        assert loaded.emoe_config == model.emoe_config and type(loaded) is type(model)
        for a, b in zip(emoe_layers(model), emoe_layers(loaded)):
            assert torch.equal(a.labels, b.labels) and a.block == b.block
        if not half:
            with torch.no_grad():
                torch.testing.assert_close(hidden(loaded, inputs), hidden(model, inputs), atol=1e-6, rtol=0)
