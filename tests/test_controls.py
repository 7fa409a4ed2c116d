"""The controls that separate modular structure from fewer active neurons: the static pruning control and the matched
random mask keep exactly the routed arm's neurons per token; the mask's choice does not depend on the input; the
static experts are the most often selected on the calibration set (recomputed here from the gate's definition)."""

import numpy as np
import pytest
import torch

from conftest import hidden, tiny_inputs, tiny_model
from emoe import EmoeConfig, convert, emoe_layers
from emoe.calibration import collect
from emoe.gating import expert_means
from emoe.routing import route

CALIBRATION = [tiny_inputs("bert", seed) for seed in range(1, 21)]


def converted(selection: str, **kw):
    model = tiny_model("bert")
    cfg = EmoeConfig(num_experts=4, top_k=2, layers=(1,), clustering="contiguous", expert_selection=selection, **kw)
    return convert(model, cfg, use_cache=False, calibration=CALIBRATION)


@pytest.mark.parametrize("selection", ["static", "random"])
def test_controls_keep_exactly_the_routed_arms_neurons_per_token(selection):
    """Counted on the kept neurons of every token: k experts of d_ff / N neurons, as the routed (top-k) arm."""
    counts = {}
    for name in ("top", selection):
        model = converted(name)
        with torch.no_grad():
            hidden(model, tiny_inputs("bert", 99))
        (layer,) = emoe_layers(model)
        counts[name] = layer.last_active
    assert counts["top"] == counts[selection] == 2 * 64 / 4


def test_the_random_mask_does_not_depend_on_the_input():
    """Two different inputs under the same generator state keep the same experts; the next draw differs."""
    logits_a = torch.randn(50, 8)
    logits_b = torch.randn(50, 8) * 10 + 3
    torch.manual_seed(0)
    a = route(logits_a, 3, selection="random").experts
    torch.manual_seed(0)
    b = route(logits_b, 3, selection="random").experts
    assert torch.equal(a, b)
    assert not torch.equal(a, route(logits_a, 3, selection="random").experts)
    assert all(len(set(row.tolist())) == 3 for row in a)  # k distinct experts per token
    torch.manual_seed(1)
    draws = torch.cat([route(logits_a, 3, selection="random").experts.reshape(-1) for _ in range(200)])
    share = torch.bincount(draws, minlength=8).float() / draws.numel()
    assert torch.allclose(share, torch.full((8,), 1 / 8), atol=0.01)  # uniform over the experts


def test_static_experts_are_the_most_often_selected_on_the_calibration_set():
    """Recomputed from avg-k's definition: each calibration token's FFN input against the mean of each expert's keys,
    its top-2, counted; the two most frequent are every token's experts, whatever the input."""
    model = converted("static")
    (layer,) = emoe_layers(model)
    reference = tiny_model("bert")
    stats = collect(reference, CALIBRATION, [1])
    keys = reference.encoder.layer[1].intermediate.dense.weight
    labels = torch.arange(64) // 16
    scores = stats.inputs[1] @ expert_means(keys.detach(), labels, 4).t()
    counts = np.bincount(scores.topk(2, dim=-1).indices.reshape(-1).numpy(), minlength=4)
    expected = sorted(np.argsort(-counts, kind="stable")[:2].tolist())
    assert layer.static_experts.tolist() == expected
    with torch.no_grad():
        hidden(model, tiny_inputs("bert", 5))
        chosen = layer.last_load.nonzero().squeeze(1).tolist()
    assert chosen == expected  # every token kept those two


def test_a_saved_static_control_loads_without_calibration(tmp_path):
    from emoe.convert import load_converted, save_converted

    model = converted("static")
    save_converted(model, tmp_path / "m", half=False)
    loaded = load_converted(tmp_path / "m")
    assert emoe_layers(loaded)[0].static_experts.tolist() == emoe_layers(model)[0].static_experts.tolist()


def test_data_driven_conversions_refuse_to_run_without_calibration():
    with pytest.raises(ValueError, match="needs a calibration set"):
        convert(tiny_model("bert"), EmoeConfig(num_experts=4, top_k=2, expert_selection="static"))
    with pytest.raises(ValueError, match="needs a calibration set"):
        convert(tiny_model("bert"), EmoeConfig(num_experts=4, top_k=2, clustering="coactivation"))
    with pytest.raises(ValueError, match="GMoE's experts are copies"):
        EmoeConfig(method="gmoe", num_experts=4, top_k=2, expert_selection="static")


@pytest.mark.parametrize("knobs", [{"clustering": "coactivation"}, {"expert_selection": "static"},
                                   {"expert_selection": "random"}])
def test_new_constructions_and_controls_run_masked_and_sparse_alike(knobs):
    import emoe

    model = tiny_model("bert")
    inputs = tiny_inputs("bert")
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0, -1), **knobs), use_cache=False,
            calibration=CALIBRATION)
    with torch.no_grad():
        torch.manual_seed(0)  # the random mask draws the same experts in both executions
        masked = hidden(model, inputs)
        emoe.set_execution(model, "sparse")
        torch.manual_seed(0)
        sparse = hidden(model, inputs)
    assert (masked - hidden(tiny_model("bert"), inputs)).abs().max() > 1e-4
    torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=1e-5)


# -- CMoE: shared experts, its routed split, its analytic router --------------------------------------------------


def _top10_rates(acts: torch.Tensor) -> torch.Tensor:
    """How often each neuron is among a token's 10 largest absolute activations (computed here with a loop)."""
    counts = torch.zeros(acts.shape[1])
    for row in acts.abs():
        for n in row.argsort(descending=True)[:10]:
            counts[n] += 1
    return counts / acts.shape[0]


@pytest.mark.parametrize("clustering", ["cmoe", "constrained"])
def test_shared_experts_are_exactly_the_most_frequently_active_neurons(clustering):
    from emoe.clustering import cluster_keys

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(300, 64, generator=g) * torch.linspace(0.2, 3.0, 64)[torch.randperm(64, generator=g)]
    keys = torch.randn(64, 8, generator=g)
    labels = cluster_keys(keys, clustering, num_experts=8, seed=0, activations=acts, shared=2)
    rates = _top10_rates(acts)
    expected = set(torch.argsort(-rates, stable=True)[:16].tolist())
    assert set(np.flatnonzero(labels < 2).tolist()) == expected
    assert np.all(np.bincount(labels, minlength=8) == 8)  # each neuron once, equal experts


def test_shared_experts_are_always_on_and_routing_picks_k_of_the_others():
    model = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(1,), clustering="cmoe", shared_experts=1),
            use_cache=False, calibration=CALIBRATION)
    (layer,) = emoe_layers(model)
    with torch.no_grad():
        hidden(model, tiny_inputs("bert", 7))
    assert layer.last_active == 3 * 16  # the shared expert and 2 of the 3 routed, 16 neurons each
    assert layer.last_load[0] == pytest.approx(1 / 3)  # the shared expert: every token, a third of the selections
    with pytest.raises(ValueError, match="must be at most the routed experts"):
        EmoeConfig(num_experts=4, top_k=4, shared_experts=1)


def test_the_analytic_router_is_its_definition_and_needs_no_training():
    """Representatives recomputed: each expert's member whose top-10 marker column is closest (L1) to the mean of its
    members'; the score |gelu(x . k_r / |k_r|)| of each expert's representative; no parameter to train."""
    model = tiny_model("bert")
    reference = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(1,), clustering="contiguous", gate="analytic"),
            use_cache=False, calibration=CALIBRATION)
    (layer,) = emoe_layers(model)
    assert not list(layer.gate.parameters())
    stats = collect(reference, CALIBRATION, [1])
    acts = stats.activations[1]
    marks = torch.zeros_like(acts)
    for t, row in enumerate(acts.abs()):
        marks[t, row.argsort(descending=True)[:10]] = 1
    reps = []
    for e in range(4):
        members = list(range(16 * e, 16 * (e + 1)))
        centroid = marks[:, members].mean(1, keepdim=True)
        reps.append(members[int((marks[:, members] - centroid).abs().sum(0).argmin())])
    assert layer.gate.representatives.tolist() == reps
    keys = reference.encoder.layer[1].intermediate.dense.weight.detach()
    x = stats.inputs[1][:20]
    expected = torch.nn.functional.gelu(x @ torch.nn.functional.normalize(keys[reps], dim=1).t()).abs()
    torch.testing.assert_close(layer.gate.logits(x, layer.keys, layer.values_matrix), expected)


# -- MoEfication's MLP predictor ---------------------------------------------------------------------------------


def test_the_mlp_router_starts_as_its_definition_and_learns_to_pick_the_top_experts():
    """Before its fit: tanh(x/|x| . c_e) with c_e the mean of expert e's L2-normalised keys, then the identity;
    after it (on calibration tokens), its top-2 overlaps the true top-2 experts (by summed relu activation) on
    held-out tokens far above chance (2/8), and it has no parameter left to train."""
    from emoe.gating import MlpGate

    g = torch.Generator().manual_seed(0)
    keys, labels = torch.randn(64, 16, generator=g), torch.arange(64) // 8
    gate = MlpGate(keys, keys, labels, 8, seed=0)
    x = torch.randn(30, 16, generator=g)
    centres = torch.stack([torch.nn.functional.normalize(keys[labels == e], dim=1).mean(0) for e in range(8)])
    expected = torch.tanh(torch.nn.functional.normalize(x, dim=1) @ centres.t())
    torch.testing.assert_close(gate.logits(x, keys, keys), expected)
    assert not list(gate.parameters())
    layer = fitted_router("mlp")
    assert layer.gate.held_out_accuracy > 0.5  # chance: 2/8
    assert not list(layer.gate.parameters())


def fitted_router(gate: str):
    """A tiny BERT's block 1 with 8 contiguous experts, ``gate`` fitted on 119 calibration batches."""
    model = tiny_model("bert")
    convert(model, EmoeConfig(num_experts=8, top_k=2, layers=(1,), gate=gate, clustering="contiguous"),
            use_cache=False, calibration=[tiny_inputs("bert", s) for s in range(1, 120)])
    (layer,) = emoe_layers(model)
    return layer


def test_expert_stability_is_the_mean_jaccard_of_each_tokens_experts():
    from emoe.train import expert_stability

    before = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    after = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    # token 0 keeps both experts (1), token 1 keeps one of three in the union (1/3), token 2 keeps none of none (1)
    assert expert_stability(before, after) == pytest.approx((1 + 1 / 3 + 1) / 3)


def test_the_mlp_router_fit_is_cached_and_read_back():
    """The second conversion with the same weights, calibration set, partition, N, k and seed reads the first fit
    (the same router, no training); another calibration set fits again."""
    from emoe.cache import cache_dir

    before = set(cache_dir("routers").glob("mlp-*.npy"))
    cfg = EmoeConfig(num_experts=8, top_k=2, layers=(1,), gate="mlp", clustering="contiguous")
    first = convert(tiny_model("bert"), cfg, calibration=CALIBRATION)
    written = set(cache_dir("routers").glob("mlp-*.npy")) - before
    assert len(written) == 1
    again = convert(tiny_model("bert"), cfg, calibration=CALIBRATION)
    a, b = emoe_layers(first)[0].gate, emoe_layers(again)[0].gate
    assert torch.equal(a.w1, b.w1) and torch.equal(a.w2, b.w2) and a.held_out_accuracy == b.held_out_accuracy
    convert(tiny_model("bert"), cfg, calibration=CALIBRATION[:10])
    assert len(set(cache_dir("routers").glob("mlp-*.npy")) - before) == 2


# -- LLaMA-MoE's gradient split --------------------------------------------------------------------------------------


def llama_moe_greedy(scores: np.ndarray) -> np.ndarray:
    """LLaMA-MoE's ``split_without_neuron_sharing`` (criterion max), step by step as its loop: each expert's scores
    sorted, a pointer per expert past the used neurons, the best head among the experts not yet full taken (``>=``:
    the later expert on a tie)."""
    num_experts, d_ff = scores.shape
    size = d_ff // num_experts
    order = [list(np.argsort(-scores[e], kind="stable")) for e in range(num_experts)]
    used, start, count, labels = [False] * d_ff, [0] * num_experts, [0] * num_experts, np.zeros(d_ff, dtype=int)
    for _ in range(d_ff):
        best, best_e, best_n = -np.inf, -1, -1
        for e in range(num_experts):
            if count[e] == size:
                continue
            while used[order[e][start[e]]]:
                start[e] += 1
            n = order[e][start[e]]
            if scores[e, n] >= best:
                best, best_e, best_n = scores[e, n], e, n
        labels[best_n], used[best_n] = best_e, True
        start[best_e] += 1
        count[best_e] += 1
    return labels


def test_the_greedy_split_is_llama_moes_loop():
    from emoe.clustering import greedy_split

    rng = np.random.default_rng(0)
    for num_experts, d_ff in ((4, 32), (8, 96), (3, 30)):
        scores = rng.standard_normal((num_experts, d_ff))
        labels = greedy_split(scores)
        np.testing.assert_array_equal(labels, llama_moe_greedy(scores))
        assert np.all(np.bincount(labels, minlength=num_experts) == d_ff // num_experts)


def planted_importance(d_ff: int = 64, groups: int = 4, sequences: int = 80, length: int = 6, seed: int = 0):
    """Sequences of ``groups`` kinds (their FFN inputs around one direction per kind); on a sequence of kind g the
    neurons of planted group g matter (high |h dL/dh|), the others barely; the keys are random."""
    from emoe.calibration import LayerStats

    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(groups), d_ff // groups))
    kind = rng.integers(0, groups, sequences)
    kind[:groups] = np.arange(groups)
    centres = rng.standard_normal((groups, 16)) * 3
    seq = np.repeat(np.arange(sequences), length)
    inputs = centres[kind[seq]] + rng.standard_normal((seq.size, 16))
    importance = (truth[None, :] == kind[seq][:, None]) * rng.uniform(0.5, 1.5, (seq.size, d_ff))
    importance = importance + rng.uniform(0, 0.2, (seq.size, d_ff))
    stats = LayerStats(torch.zeros(seq.size, d_ff), torch.from_numpy(inputs).float(),
                       torch.from_numpy(importance).float(), torch.from_numpy(seq))
    return torch.from_numpy(rng.standard_normal((d_ff, 16))).float(), stats, truth


def test_the_gradient_split_recovers_neurons_important_for_the_same_data():
    from sklearn.metrics import adjusted_rand_score

    from emoe.clustering import cluster_keys

    keys, stats, truth = planted_importance()
    found = cluster_keys(keys, "gradient", num_experts=4, seed=0, activations=stats)
    assert adjusted_rand_score(truth, found) >= 0.9
    assert np.all(np.bincount(found, minlength=4) == 16)
    assert adjusted_rand_score(truth, cluster_keys(keys, "constrained", num_experts=4, seed=0)) < 0.2
    with pytest.raises(ValueError, match="importance"):
        cluster_keys(keys, "gradient", num_experts=4, seed=0, activations=stats.activations)


def test_importance_is_each_tokens_activation_times_its_loss_gradient():
    """Recomputed independently: the intermediate activations kept by a forward hook on the first projection's
    activation, their gradient from loss.backward(), |h * grad| on the non-padding tokens."""
    import transformers as T

    from emoe.calibration import collect

    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=100)).eval()
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    batch = {"input_ids": torch.randint(1, 100, (3, 7), generator=torch.Generator().manual_seed(1)),
             "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
    stats = collect(model, [batch], [1], importance=True)
    kept = []

    def keep(module, args, out):
        out.retain_grad()
        kept.append(out)

    model.bert.encoder.layer[1].intermediate.register_forward_hook(keep)
    model(**batch).loss.backward()
    expected = (kept[0] * kept[0].grad).abs().reshape(-1, 64)[mask.reshape(-1).bool()]
    torch.testing.assert_close(stats.importance[1], expected)
    assert stats.sequences.tolist() == [0] * 7 + [1] * 5 + [2] * 7
    # the partition cache's key names the weights the importance read: another head, another calibration name
    assert collect(model, [batch], [1], importance=True).name == stats.name
    with torch.no_grad():
        model.classifier.weight.add_(0.1)
    assert collect(model, [batch], [1], importance=True).name != stats.name
    with pytest.raises(ValueError, match="labelled"):
        collect(model, [{k: v for k, v in batch.items() if k != "labels"}], [1], importance=True)


def test_a_model_converts_by_the_gradient_split_without_changing_its_weights():
    import transformers as T

    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=100)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 100, (4, 9), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
            for _ in range(6)]
    with torch.no_grad():
        dense = model(input_ids=data[0]["input_ids"]).logits
    convert(model, EmoeConfig(num_experts=4, top_k=4, layers=(0, -1), clustering="gradient"), use_cache=False,
            calibration=data)
    assert all(np.all(np.bincount(layer.labels.numpy(), minlength=4) == 16) for layer in emoe_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # every expert on: the dense model
        torch.testing.assert_close(model(input_ids=data[0]["input_ids"]).logits, dense, atol=1e-5, rtol=0)
    import emoe

    for layer in emoe_layers(model):  # two of the four experts: masked and sparse alike
        layer.top_k = 2
    with torch.no_grad():
        masked = model(input_ids=data[1]["input_ids"]).logits
        emoe.set_execution(model, "sparse")
        torch.testing.assert_close(model(input_ids=data[1]["input_ids"]).logits, masked, atol=1e-5, rtol=1e-5)


# -- D2DMoE: the norm-regression router and dynamic k ------------------------------------------------------------------


def test_dynamic_k_keeps_every_expert_within_tau_of_the_best():
    """Against a per-token loop over D2DMoE's rule: expert e kept iff score_e >= (1 - tau) * max score."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 8, generator=g) ** 3
    for tau in (0.1, 0.5, 0.9, 1.0):
        routing = route(scores, 2, selection="dynamic", tau=tau)
        table = routing.table()
        for t in range(40):
            kept = {e for e in range(8) if scores[t, e] >= (1 - tau) * scores[t].max()}
            assert {e for e in range(8) if table[t, e] != 0} == kept
            assert set(table[t].unique().tolist()) <= {0.0, 1.0}
        assert routing.counts.tolist() == (table != 0).sum(0).tolist()
    assert (route(scores, 2, selection="dynamic", tau=1.0).table() != 0).all()  # tau 1: every expert above 0
    sizes = (route(scores, 2, selection="dynamic", tau=0.5).table() != 0).sum(-1)
    assert sizes.min() >= 1 and len(set(sizes.tolist())) > 1  # k varies per token


def test_expert_output_norms_are_each_experts_share_of_the_ffn_output():
    """Independently: the value projection run on the activations with every other expert's neurons zeroed, its bias
    taken off, the L2 norm per token."""
    from emoe.gating import expert_output_norms

    g = torch.Generator().manual_seed(0)
    h, proj = torch.randn(20, 64, generator=g), torch.nn.Linear(64, 32)
    labels = torch.randperm(64, generator=g) % 4
    expected = torch.stack([(proj(h * (labels == e).float()) - proj.bias).norm(dim=-1) for e in range(4)], -1)
    torch.testing.assert_close(expert_output_norms(h, proj.weight.t().detach(), labels, 4), expected, atol=1e-5,
                               rtol=1e-5)


def test_the_norm_regression_router_learns_which_experts_write_most():
    """Fitted at conversion (D2DMoE's router: MSE on the experts' output norms), frozen, non-negative scores; its
    top-2 overlaps the true top-2 by norm on held-out tokens above chance (2/8)."""
    layer = fitted_router("norm_regression")
    assert layer.gate.held_out_accuracy > 0.4  # chance: 2/8
    assert not list(layer.gate.parameters())
    x = torch.randn(5, 32)
    scores = layer.gate.logits(x, layer.keys, layer.values_matrix)
    router = torch.nn.Sequential(torch.nn.Linear(32, 128, bias=False), torch.nn.ReLU(),
                                 torch.nn.Linear(128, 8, bias=False))  # D2DMoE's, its output through abs
    router[0].weight.data, router[2].weight.data = layer.gate.w1.clone(), layer.gate.w2.clone()
    torch.testing.assert_close(scores, router(x).abs())
    assert (scores >= 0).all()


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_dynamic_k_runs_masked_and_sparse_alike_computing_only_the_kept_experts(arch):
    import emoe

    model = tiny_model(arch)
    inputs = tiny_inputs(arch)
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(0, -1), gate="norm_regression",
                              expert_selection="dynamic", dynamic_tau=0.5), use_cache=False,
            calibration=[tiny_inputs(arch, s) for s in range(1, 21)])
    with torch.no_grad():
        masked = hidden(model, inputs)
        active = [layer.last_active for layer in emoe_layers(model)]
        emoe.set_execution(model, "sparse")
        widths = []
        layer = emoe_layers(model)[0]
        layer._keys_proj[0].register_forward_hook(lambda m, a, out: widths.append(out.numel()))
        sparse = hidden(model, inputs)
    torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=1e-5)
    assert all(0 < a < 64 for a in active)  # fewer than every neuron, a variable count
    assert widths[0] == pytest.approx(active[0] * inputs["input_ids"].numel())  # equal experts of 16: only the kept ones computed


def test_dynamic_k_refuses_gates_and_routers_it_cannot_threshold():
    with pytest.raises(ValueError, match="valid gates: analytic, norm_regression"):
        EmoeConfig(expert_selection="dynamic", gate="avg_keys")
    with pytest.raises(ValueError, match="exact routing"):
        EmoeConfig(expert_selection="dynamic", gate="norm_regression", capacity_factor=1.5)
    with pytest.raises(ValueError, match="dynamic_tau=0.0 must be in \\(0, 1\\]"):
        EmoeConfig(expert_selection="dynamic", gate="norm_regression", dynamic_tau=0.0)
