"""One trial end to end on a tiny model: metric schema, reproducibility, NaN handling and the MLflow-logging CLI."""

import math

import pytest

from emoe import hparams, tracking
from emoe.train import main, train_and_evaluate


def timeless(reports):
    """Reports without their clock readings (wall_time, accelerator_time): everything else is deterministic."""
    if isinstance(reports, list):
        return [timeless(r) for r in reports]
    return {k: v for k, v in reports.items() if k not in ("wall_time", "accelerator_time")}


def interrupted(cfg, after: int, **hooks):
    """Run a trial until its ``after``-th report, then die there (a node lost right after a report and its
    checkpoint). Returns the reports it made and its last checkpoint, serialised at once and loaded back."""
    import io

    import torch

    states, reports = [], []

    def stop_after(metrics):
        reports.append(metrics)
        if len(reports) == after:
            raise KeyboardInterrupt

    def keep(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)  # serialised at once, as a checkpoint is
        states.append(buffer.getvalue())

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(cfg, stop_after, on_state=keep, **hooks)
    return reports, torch.load(io.BytesIO(states[-1]), weights_only=False)


def tiny_trial(model_dir, data_dir, **kw):
    return {"model": model_dir, "data_dir": str(data_dir), "num_experts": 4, "top_k": 2, "batch_size": 16,
            "max_length": 48, "max_train_samples": 96, "eval_steps": 3, "learning_rate": 1e-3, "epochs": 1, **kw}


def test_metric_schema_and_reports(tiny_model_dir, tiny_data_dir):
    reports = []
    final = train_and_evaluate(tiny_trial(tiny_model_dir, tiny_data_dir), reports.append)
    assert [r["step"] for r in reports] == [3, 6]  # every eval_steps and at the epoch end (6 steps)
    assert final == reports[-1]
    sets = ("imdb", "yelp", "amazon", "flipkart")
    expected = {"train_loss", "id_score", "id.accuracy", "ood_score", "epoch", "step", "load_entropy.block0",
                "load_entropy.block1", *(f"ood_score.{s}" for s in sets), *(f"ood.{s}.accuracy" for s in sets),
                *(f"{m}.block{b}" for m in ("active_neurons", "ffn_flops", "expert_stability") for b in (0, 1)),
                "wall_time", "trainable_params"}
    assert set(final) == expected
    assert 0 < reports[0]["wall_time"] < final["wall_time"]  # seconds trained and evaluated, growing
    from transformers import AutoModelForSequenceClassification

    assert final["trainable_params"] == AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2).num_parameters()  # full fine-tuning: every parameter (avg-k adds none)
    assert set(reports[0]) == expected - {"expert_stability.block0", "expert_stability.block1"}  # no earlier one
    assert 0 <= final["expert_stability.block1"] <= 1
    # k = 2 of N = 4 equal experts of the tiny BERT's 64 neurons: 32 kept per token; per neuron its key row and value
    # column (2 x 32 multiply-adds each), and the avg-k router's [32] x [32, 4] product
    assert final["active_neurons.block1"] == 32 and final["ffn_flops.block1"] == 32 * (2 * 32 + 2 * 32) + 2 * 32 * 4
    assert final["epoch"] == 1.0 and 0 <= final["id_score"] <= 1 and final["id_score"] == final["id.accuracy"]
    sizes = {"imdb": 40, "yelp": 32, "amazon": 32, "flipkart": 32}  # the tiny sets' rows (GLUE-X: size-weighted)
    assert math.isclose(final["ood_score"], sum(sizes[s] * final[f"ood_score.{s}"] for s in sets) / 136)
    assert 0 < final["load_entropy.block1"] <= math.log(4) + 1e-6


def test_dense_has_no_expert_metrics(tiny_model_dir, tiny_data_dir):
    final = train_and_evaluate(tiny_trial(tiny_model_dir, tiny_data_dir, method="dense", eval_steps=None))
    assert not [k for k in final if k.startswith("load_entropy")]


def test_same_config_and_seed_give_same_metrics(tiny_model_dir, tiny_data_dir):
    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, gate="learned", aux_loss_weight=0.01, gate_noise=1.0,
                     capacity_factor=1.5, expert_dropout=0.1, seed=3, grad_accum_steps=2)
    assert timeless(train_and_evaluate(cfg)) == timeless(train_and_evaluate(cfg))
    other = train_and_evaluate({**cfg, "seed": 4})
    assert other["train_loss"] != train_and_evaluate(cfg)["train_loss"]


def test_nan_loss_raises(tiny_model_dir, tiny_data_dir):
    with pytest.raises(FloatingPointError, match="train_loss became nan at step"):
        train_and_evaluate(tiny_trial(tiny_model_dir, tiny_data_dir, learning_rate=1e30, max_grad_norm=1e30))


@pytest.mark.parametrize("overrides, message", [
    ({"clustering": "dbscan"}, "unknown clustering 'dbscan'"),
    ({"task": "colaa"}, "unknown task 'colaa'"),
    ({"num_experts": 4, "top_k": 5}, "top_k=5 must be between 1 and num_experts=4"),
    ({"batch_size": 10, "grad_accum_steps": 3}, "batch_size=10 is not divisible by grad_accum_steps=3"),
    ({"learning_rate": 0}, "learning_rate=0.0 must be > 0"),
    ({"lr": 1e-3}, "unknown trial config key 'lr'"),
    ({"layers": "a,b"}, "layers must be comma-separated block indices"),
])
def test_bad_trial_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        hparams.trial_config(overrides)


def test_cli_logs_one_run_with_the_schema(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--model", tiny_model_dir, "--data-dir", str(tiny_data_dir), "--num-experts", "4", "--top-k", "2",
            "--max-train-samples", "64", "--max-length", "48", "--batch-size", "16", "--tracking-uri", uri,
            "--layers=-1", "--epochs", "1"]
    assert main(args) == 0
    client = tracking.client(uri)
    exp = client.get_experiment_by_name("emoe-train")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.ROLE] == "trial" and run.data.tags[tracking.OUTCOME] == "completed"
    assert set(hparams.KNOBS) <= set(run.data.params)
    assert run.data.params["num_experts"] == "4" and run.data.params["layers"] == "-1"
    assert {"id_score", "ood_score", "ood_score.imdb", "train_loss", "load_entropy.block1"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "id_score")] == [4]
    assert "emoe_config.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_cli_bad_input_is_one_line_and_logs_nothing(tiny_data_dir, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["--clustering", "dbscan", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown clustering 'dbscan'; valid choices:" in err
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--tracking-uri", uri]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for knob in hparams.KNOBS.values():
        assert knob.flag in out
    assert "--tracking-uri" in out and "--ood" in out


def _keyword_task(root, seed: int):
    """A task a tiny model must learn: the label is which of two keywords a sentence of random fillers holds."""
    import random

    from conftest import write_jsonl

    rng = random.Random(seed)
    fillers = "the a film plot actor scene story music day night city river old new long short red blue".split()

    def rows(n, words):
        out = []
        for i in range(n):
            label = i % 2
            text = [rng.choice(words) for _ in range(rng.randint(4, 10))]
            text.insert(rng.randint(0, len(text)), "wonderful" if label else "terrible")
            out.append({"sentence": " ".join(text), "label": label, "idx": i})
        return out

    write_jsonl(root / "sst2/train.jsonl", rows(320, fillers[:10]))
    write_jsonl(root / "sst2/validation.jsonl", rows(64, fillers[:10]))
    for name in ("imdb", "yelp", "amazon", "flipkart"):  # other fillers: the keyword rule still holds OOD
        write_jsonl(root / f"{name}/test.jsonl", rows(64, fillers[10:]))
    return root


@pytest.mark.parametrize("overrides", [{"method": "dense"}, {"clustering": "constrained", "gate": "avg_keys"},
                                       {"gate": "learned", "aux_loss_weight": 0.01, "gate_noise": 1.0}],
                         ids=["dense", "emoe-avg_keys", "emoe-learned"])
def test_training_learns_a_learnable_task(overrides, tiny_model_dir, tmp_path):
    """If the model stopped learning (a broken mask, a frozen optimiser, a lost gradient), this fails: a random tiny
    BERT must reach high ID and OOD accuracy on a keyword task within a few epochs."""
    data = _keyword_task(tmp_path / "data", seed=0)
    final = train_and_evaluate({"model": tiny_model_dir, "data_dir": str(data), "num_experts": 4, "top_k": 2,
                                "batch_size": 16, "max_length": 32, "epochs": 4, "learning_rate": 2e-3,
                                "warmup_ratio": 0.0, "seed": 0, **overrides})
    assert final["id_score"] >= 0.95 and final["ood_score"] >= 0.9, final


def _accuracy(model, data_dir, model_dir):
    """ID validation accuracy of a trained model, computed here (independently of the trainer's evaluation)."""
    import torch
    from transformers import AutoTokenizer

    from emoe.data import load_task

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    val = load_task("sst2", data_dir).validation
    model.eval()
    with torch.no_grad():
        batch = tokenizer(list(val["sentence"]), truncation=True, max_length=48, padding=True, return_tensors="pt")
        pred = model(**batch).logits.argmax(-1)
    return (pred == torch.tensor(list(val["label"]))).float().mean().item()


def test_keep_best_reports_the_best_id_evaluation_and_its_ood_scores(tiny_model_dir, tiny_data_dir):
    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, max_train_samples=160, eval_steps=2, epochs=2,
                     learning_rate=3e-3)
    latest, best = [], []
    train_and_evaluate(cfg, latest.append)
    final = train_and_evaluate({**cfg, "keep_best": True}, best.append)
    ids = [r["id_score"] for r in latest]
    first_best = ids.index(max(ids))
    assert first_best < len(ids) - 1  # the case is one where the last evaluation is not the best
    expected = latest[first_best]
    for key in ("id_score", "ood_score", "ood_score.imdb", "ood_score.yelp", "ood_score.amazon", "load_entropy.block1"):
        assert final[key] == expected[key]  # every OOD score from that same evaluation
    assert final["best_step"] == expected["step"] and final["step"] == latest[-1]["step"]
    assert [r["current_id_score"] for r in best] == ids  # the learning curve is still there
    assert [r["id_score"] for r in best] == [max(ids[:i + 1]) for i in range(len(ids))]  # what ASHA ranks on


def test_patience_stops_after_that_many_evaluations_without_improvement(tiny_model_dir, tiny_data_dir):
    from emoe.tracking import schema

    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, max_train_samples=160, eval_steps=1, epochs=3,
                     learning_rate=3e-3)
    full = []
    train_and_evaluate(cfg, full.append)
    ids = [r["id_score"] for r in full]
    since, stop = 0, None  # the official rule, by hand: stop once `patience` evaluations in a row did not improve
    best = -1.0
    for i, v in enumerate(ids):
        best, since = (v, 0) if v > best else (best, since + 1)
        if since >= 2:
            stop = i
            break
    assert stop is not None and stop < len(ids) - 1
    reports = []
    final = train_and_evaluate({**cfg, "patience": 2, "keep_best": True}, reports.append)
    assert len(reports) == stop + 1 and final["patience_stop"] == 1.0
    assert final["id_score"] == max(ids[:stop + 1])
    assert schema.finished(final, cfg["epochs"])  # ended by its protocol: a completed trial, not early-stopped


def test_eval_method_dense_and_emoe_evaluate_what_they_say(tiny_model_dir, tiny_data_dir):
    from emoe import set_bypass

    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, eval_steps=None, epochs=2, layers=(0, 1))
    seen = {}
    # dense: trained as EMoE (the same training as eval_method=same), evaluated with every expert on.
    same = train_and_evaluate(cfg, on_model=lambda m: seen.__setitem__("same", m))
    dense_eval = train_and_evaluate({**cfg, "eval_method": "dense"}, on_model=lambda m: seen.__setitem__("d", m))
    assert dense_eval["train_loss"] == same["train_loss"]
    assert dense_eval["id_score"] == _accuracy(set_bypass(seen["d"], True), tiny_data_dir, tiny_model_dir)
    assert same["id_score"] == _accuracy(seen["same"], tiny_data_dir, tiny_model_dir)
    assert not [k for k in dense_eval if k.startswith("load_entropy")]  # no routing at evaluation
    # emoe: trained dense (the same training as method=dense), evaluated with EMoE routing.
    dense = train_and_evaluate({**cfg, "method": "dense"})
    emoe_eval = train_and_evaluate({**cfg, "eval_method": "emoe"}, on_model=lambda m: seen.__setitem__("e", m))
    assert emoe_eval["train_loss"] == dense["train_loss"]
    assert emoe_eval["id_score"] == _accuracy(set_bypass(seen["e"], False), tiny_data_dir, tiny_model_dir)
    assert "load_entropy.block1" in emoe_eval
    with pytest.raises(ValueError, match="eval_method='dense' needs method='emoe'"):
        hparams.trial_config({"method": "dense", "eval_method": "dense"})


@pytest.mark.parametrize("keep_best", [False, True])
def test_per_example_predictions_are_the_reported_evaluations(keep_best, tiny_model_dir, tiny_data_dir):
    """The saved predictions, in each set's own order, score exactly the reported metrics (with keep_best: those of
    the kept evaluation); regression scores and class ids are stored small."""
    import numpy as np

    from emoe.data import load_task

    saved = []
    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, epochs=2, keep_best=keep_best, max_eval_samples=40)
    reports = []
    final = train_and_evaluate(cfg, reports.append, on_predictions=saved.append)
    assert len(saved) == len(reports) >= 2  # one set per evaluation (a stopped trial keeps its last report's)
    preds = saved[-1]
    data = load_task("sst2", tiny_data_dir, max_train_samples=96, max_eval_samples=40)
    assert set(preds) == {"id", "imdb", "yelp", "amazon", "flipkart"} and preds["id"].dtype == np.int8
    assert np.mean(preds["id"] == np.array(data.validation["label"])) == pytest.approx(final["id.accuracy"])
    for name in ("imdb", "flipkart"):
        gold = np.array(data.ood[name]["label"])
        assert np.mean(preds[name] == gold) == pytest.approx(final[f"ood.{name}.accuracy"])


LORA_GMOE = {"method": "gmoe", "gate": "learned", "expert_repeat": 2, "regime": "lora_block", "layers": (-1,),
             "noise_tuning": 0.1, "gate_noise": 1.0, "expert_bias": "per_expert"}


@pytest.mark.parametrize("kill_after, overrides", [(1, {}), (2, {"keep_best": True, "gate_noise": 1.0,
                                                                  "expert_dropout": 0.1, "grad_accum_steps": 2}),
                                                    (3, {"method": "dense"}), (2, {**LORA_GMOE, "keep_best": True}),
                                                    (1, {"gate": "learned", "regime": "lora_gates"})])
def test_resume_from_a_state_continues_exactly(kill_after, overrides, tiny_model_dir, tiny_data_dir):
    """A run stopped after an evaluation and resumed from the state saved there trains no step twice and ends with
    exactly the uninterrupted run's reports (CPU): optimiser, scheduler, RNG (dropout, gate noise) and data order."""
    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, epochs=2, **overrides)
    full = []
    train_and_evaluate(cfg, full.append)
    first, resume = interrupted(cfg, kill_after)
    rest = []
    final = train_and_evaluate(cfg, rest.append, resume=resume)
    assert rest[0]["step"] == first[-1]["step"] + (full[1]["step"] - full[0]["step"])  # the next evaluation
    assert timeless(first + rest) == timeless(full) and timeless(final) == timeless(full[-1])


def test_kept_model_is_the_best_evaluations_state(tiny_model_dir, tiny_data_dir, tmp_path):
    """keep_model='best' hands over the weights of the best ID evaluation (float16), not the last ones; saved with
    save_converted they load back as the converted model."""
    import io

    import torch

    from emoe.convert import emoe_layers, load_converted, save_converted

    states, kept = [], []

    def keep_state(state):
        buffer = io.BytesIO()
        torch.save({"step": state["step"], "model": state["model"]}, buffer)
        states.append(buffer.getvalue())

    def keep(model, state):
        kept.append({k: v.clone() for k, v in state.items()})  # a copy: the trainer updates its dict in place
        save_converted(model, tmp_path / "model", state=state)

    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, epochs=3, keep_best=True, learning_rate=5e-3)
    final = train_and_evaluate(cfg, on_state=keep_state, on_kept_model=keep)
    state = kept[-1]  # handed over at each new best: the last is the best evaluation's
    at = {s["step"]: s["model"] for s in (torch.load(io.BytesIO(b), weights_only=False) for b in states)}
    assert final["best_step"] < final["step"]  # the best evaluation is not the last one here
    best = at[int(final["best_step"])]
    assert all(torch.equal(state[k], v.half() if v.is_floating_point() else v) for k, v in best.items())
    saved = torch.load(tmp_path / "model" / "model.pt", weights_only=True)  # the file holds the best, too
    assert all(torch.equal(saved[k], v.half() if v.is_floating_point() else v) for k, v in best.items())
    calls = len(kept)
    loaded = load_converted(tmp_path / "model")
    assert [f.block for f in emoe_layers(loaded)] == [0, 1]
    assert train_and_evaluate(tiny_trial(tiny_model_dir, tiny_data_dir, keep_model="none"),
                              on_kept_model=kept.append) and len(kept) == calls  # none: nothing handed over


def test_a_lora_trials_kept_model_loads_back_with_its_adapters_and_scores(tiny_model_dir, tiny_data_dir, tmp_path):
    """Under a LoRA regime with trained sparse experts beside the adapters (GMoE, LoRA + block), the kept model saves
    and loads back as the same wrapped model: the loaded model's predictions are those of the trained model holding
    the kept (float16) state, and it scores the kept evaluation's ID accuracy (up to what float16 rounding moves)."""
    import numpy as np
    import torch

    from emoe.convert import emoe_layers, load_converted, save_converted
    from emoe.data import load_task

    kept, models = [], []

    def keep(model, state):
        kept.append({k: v.clone() for k, v in state.items()})
        models.append(model)
        save_converted(model, tmp_path / "model", state=state)

    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, epochs=2, keep_best=True, learning_rate=5e-3, **LORA_GMOE)
    final = train_and_evaluate(cfg, on_kept_model=keep)
    loaded = load_converted(tmp_path / "model")
    assert type(loaded).__name__ == "PeftModelForSequenceClassification"
    assert [type(f).__name__ for f in emoe_layers(loaded)] == ["GmoeFFN"]
    trained = models[-1].eval()
    trained.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in kept[-1].items()})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = load_task("sst2", tiny_data_dir, max_train_samples=96)
    texts = list(data.validation[data.task.text_fields[0]])
    with torch.no_grad():
        preds = []
        for start in range(0, len(texts), 16):
            inputs = tokenizer(texts[start:start + 16], padding=True, truncation=True, max_length=48,
                               return_tensors="pt")
            logits = loaded(**inputs).logits
            assert torch.equal(logits, trained(**inputs).logits)
            preds.append(logits.argmax(-1).numpy())
    accuracy = np.mean(np.concatenate(preds) == np.array(data.validation["label"]))
    assert abs(accuracy - final["id.accuracy"]) <= 2 / len(texts)


def test_a_lora_checkpoint_holds_what_trains_and_resumes_exactly(tiny_model_dir, tiny_data_dir):
    """Under a LoRA regime a checkpoint leaves out the frozen weights (a rebuilt trial recreates them: pre-trained,
    converted, seeded noise); the kept best-so-far state inside it too. Resuming from it ends exactly as the
    uninterrupted run, and the kept model handed over after the resume is whole."""
    cfg = tiny_trial(tiny_model_dir, tiny_data_dir, epochs=2, keep_best=True, **LORA_GMOE)
    full, kept = [], []
    train_and_evaluate(cfg, full.append)
    first, state = interrupted(cfg, 2)
    assert any("lora_A" in k for k in state["model"]) and any(".fc1_weight" in k for k in state["model"])
    frozen = ("word_embeddings.weight", "layer.0.attention.self.query.base_layer.weight",
              "layer.0.output.dense.weight")  # left out (block 1, -1, trains in full)
    assert not [k for k in state["model"] if k.endswith(frozen)]
    assert set(state["best_model"]) <= set(state["model"])
    rest = []
    final = train_and_evaluate(cfg, rest.append, resume=state,
                               on_kept_model=lambda model, best: kept.append(set(best)))
    assert timeless(first + rest) == timeless(full) and timeless(final) == timeless(full[-1])
    names = set(dict(train_and_evaluate.__globals__["Trial"](hparams.trial_config(cfg), None,
                                                               train_and_evaluate.__globals__["Hooks"]())
                     .model.state_dict()))
    assert all(k == names for k in kept)
