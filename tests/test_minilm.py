"""The real pre-trained all-MiniLM-L6-v2 (packaged, offline): every algorithm and gate converts and trains (the
data-driven ones on a calibration set of packaged SST-2 sentences)."""

import pytest
import torch

import emoe
from emoe import EmoeConfig, convert, emoe_layers, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = load_model("minilm", num_labels=2)
    return model.state_dict(), tokenizer


@pytest.fixture(scope="module")
def calibration(minilm):
    """64 packaged SST-2 training sentences in two batches, with their labels: the data-driven constructions' and
    routers' data."""
    import json

    from conftest import PACKAGED_DATA

    with open(PACKAGED_DATA / "sst2" / "train.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(64)]
    tokenizer = minilm[1]
    return [{**tokenizer([r["sentence"] for r in rows[i:i + 32]], return_tensors="pt", padding=True),
             "labels": torch.tensor([r["label"] for r in rows[i:i + 32]])} for i in (0, 32)]


# every construction with the paper's gate, every gate on the paper's construction (each pair works on the tiny
# models of tests/test_layer.py; here the real weights)
PAIRS = [(c, "avg_keys") for c in emoe.CLUSTERING] + [("constrained", g) for g in emoe.GATES if g != "avg_keys"]


@pytest.mark.parametrize("clustering, gate", PAIRS)
def test_minilm_converts_forward_backward(minilm, calibration, clustering, gate):
    state, tokenizer = minilm
    model, _ = load_model("minilm", num_labels=2)
    model.load_state_dict(state)
    convert(model, EmoeConfig(clustering=clustering, gate=gate, num_experts=16, top_k=4), calibration=calibration)
    layers = emoe_layers(model)
    assert [f.block for f in layers] == [4, 5] and all(f.labels.numel() == 1536 for f in layers)
    batch = tokenizer(["a gripping, beautiful film", "dull and far too long"], return_tensors="pt", padding=True)
    out = model(**batch, labels=torch.tensor([1, 0]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.bert.encoder.layer[5].intermediate.dense.weight.grad.abs().sum() > 0
    assert all(0 < f.load_entropy() <= torch.log(torch.tensor(16.0)).item() + 1e-6 for f in layers)


def test_random_init_differs_from_pretrained():
    pre, _ = load_model("minilm", num_labels=2, init="pretrained")
    rnd, _ = load_model("minilm", num_labels=2, init="random")
    a = pre.bert.encoder.layer[0].intermediate.dense.weight
    b = rnd.bert.encoder.layer[0].intermediate.dense.weight
    assert a.shape == b.shape and not torch.allclose(a, b)


@pytest.mark.parametrize("knobs", [{"clustering": "coactivation"}, {"clustering": "cmoe", "shared_experts": 1},
                                   {"gate": "mlp"}, {"gate": "analytic"}, {"expert_selection": "static"},
                                   {"expert_selection": "random"}, {"clustering": "gradient"},
                                   {"gate": "norm_regression", "expert_selection": "dynamic"}])
def test_minilm_trains_and_evaluates_every_new_construction_router_and_control(knobs):
    """One short trial of the packaged MiniLM on the packaged SST-2 slice (its calibration set drawn from that
    training data): finite scores, and the compute the arm keeps (k of N experts, plus any shared one)."""
    from emoe.train import train_and_evaluate

    final = train_and_evaluate({"data_dir": "demo", "max_train_samples": 64, "max_eval_samples": 32, "epochs": 1,
                                "max_length": 32, "batch_size": 16, "ood_max_length": 32, "calibration_samples": 64,
                                **knobs})
    assert 0 <= final["id_score"] <= 1 and 0 <= final["ood_score"] <= 1
    kept = (4 + knobs.get("shared_experts", 0)) * 1536 // 16  # top_k 4 of N 16 experts of 96 neurons
    if knobs.get("expert_selection") == "dynamic":  # as many experts per token as reach (1 - tau) of its best
        assert 96 <= final["active_neurons.block5"] <= 1536
    else:
        assert final["active_neurons.block5"] == kept
