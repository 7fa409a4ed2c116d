"""GLUE-X's tasks: every cross-task label mapping on known examples, self-collected sets named before anything
runs, STS-B trained as regression, the epoch caps."""

import math

import pytest
from conftest import write_jsonl

from emoe.data import TASKS, load_task


# --- label mappings (GLUE-X evaluation/utils_lp.py::preprocess_data) on known examples ---

def _pair(a, b, label, **extra):
    return {"sentence1": a, "sentence2": b, "label": label, **extra}


@pytest.fixture
def glue_x_dir(tmp_path):
    """A layout whose OOD sets hold rows of known labels, in the sets' own formats."""
    d = tmp_path / "data"
    for task in ("rte", "mrpc", "stsb"):
        rows = [_pair("a b", "c d", 2.5 if task == "stsb" else i % 2) for i in range(4)]
        write_jsonl(d / task / "train.jsonl", rows)
        write_jsonl(d / task / "validation.jsonl", rows)
    # mrpc 1 = equivalent, rte 0 = entailment, qqp 1 = duplicate, hans 0 = entailment
    write_jsonl(d / "mrpc" / "train.jsonl", [_pair("m1", "m2", 1), _pair("m3", "m4", 0)])
    write_jsonl(d / "rte" / "train.jsonl", [_pair("r1", "r2", 0), _pair("r3", "r4", 1)])
    write_jsonl(d / "qqp" / "train.jsonl", [{"question1": "q1", "question2": "q2", "label": 1},
                                            {"question1": "q3", "question2": "q4", "label": 0}])
    write_jsonl(d / "hans" / "train.jsonl", [{"premise": "h1", "hypothesis": "h2", "label": 0},
                                             {"premise": "h3", "hypothesis": "h4", "label": 1}])
    write_jsonl(d / "scitail" / "test.jsonl", [{"premise": "s1", "hypothesis": "s2", "label": "entails"},
                                               {"premise": "s3", "hypothesis": "s4", "label": "neutral"}])
    write_jsonl(d / "twitter" / "test.jsonl", [{"Sent_1": "t1", "Sent_2": "t2", "Label": 1},
                                               {"Sent_1": "t3", "Sent_2": "t4", "Label": 0}])
    write_jsonl(d / "sick" / "test.jsonl", [{"premise": f"p{i}", "hypothesis": "h", "label": 0, "relatedness": r}
                                            for i, r in enumerate([1.0, 2.6, 3.5, 4.5, 5.0])])
    return d


def _labels(data, name):
    first = data.task.text_fields[0]
    return dict(zip(data.ood[name][first], data.ood[name]["label"]))


def test_rte_ood_labels_follow_glue_x(glue_x_dir):
    data = load_task("rte", glue_x_dir)
    assert _labels(data, "mrpc")["m1"] == 0 and _labels(data, "mrpc")["m3"] == 1  # equivalent -> entailment
    assert _labels(data, "qqp")["q1"] == 0 and _labels(data, "qqp")["q3"] == 1  # duplicate -> entailment
    assert _labels(data, "hans") == {"h1": 0, "h3": 1}  # same order as RTE: unchanged
    assert _labels(data, "scitail") == {"s1": 0, "s3": 1}  # entails 0, neutral 1
    assert set(data.ood["qqp"].column_names) >= {"sentence1", "sentence2"}  # renamed to RTE's fields


def test_mrpc_ood_labels_follow_glue_x(glue_x_dir):
    data = load_task("mrpc", glue_x_dir)
    assert _labels(data, "qqp") == {"q1": 1, "q3": 0}  # duplicate = equivalent: unchanged
    assert _labels(data, "rte")["r1"] == 1 and _labels(data, "rte")["r3"] == 0  # entailment -> equivalent
    assert _labels(data, "hans") == {"h1": 1, "h3": 0}
    assert _labels(data, "twitter") == {"t1": 1, "t3": 0}


def test_qqp_ood_sets_take_qqp_fields(glue_x_dir):
    from emoe.data import _to_task

    task = TASKS["qqp"]
    ds = _to_task(__import__("datasets").Dataset.from_list([_pair("m1", "m2", 1)]), task.ood["mrpc"], task)
    assert ds[0] == {"question1": "m1", "question2": "m2", "label": 1}
    ds = _to_task(__import__("datasets").Dataset.from_list([_pair("r1", "r2", 0)]), task.ood["rte"], task)
    assert ds[0]["label"] == 1 and ds[0]["question1"] == "r1"


def test_stsb_ood_sick_is_glue_x_relatedness_minus_one_rounded(glue_x_dir):
    data = load_task("stsb", glue_x_dir)
    got = dict(zip(data.ood["sick"]["sentence1"], data.ood["sick"]["label"]))
    # round(r - 1), Python's round (half to even, as GLUE-X): 3.5 -> 2, 4.5 -> 4 (round(3.5) = 4), 2.6 -> 2
    assert got == {"p0": 0.0, "p1": 2.0, "p2": 2.0, "p3": 4.0, "p4": 4.0}
    assert data.validation.features["label"].dtype == "float32"


def test_packaged_cross_task_rows_map_as_glue_x(tmp_path):
    """Real rows of the packaged slice: an MRPC pair marked equivalent is an RTE entailment (0), and back."""
    import json

    from emoe.data import DATA_ALIASES

    mrpc = [json.loads(l) for l in (DATA_ALIASES["demo"] / "mrpc" / "train.jsonl").read_text().splitlines()]
    rte = load_task("rte", "demo", ood_sets=["mrpc"])
    mapped = dict(zip(rte.ood["mrpc"]["sentence1"], rte.ood["mrpc"]["label"]))
    for row in mrpc[:20]:
        assert mapped[row["sentence1"]] == 1 - row["label"]


def test_self_collected_sets_come_from_files_only(glue_x_dir, tmp_path, monkeypatch):
    import datasets

    from emoe import data

    fake = datasets.Dataset.from_list([{"sentence": "a b", "label": 0}, {"sentence": "c d", "label": 1}])
    monkeypatch.setattr(data, "_hub", lambda source: fake)  # every Hub set "loads"
    with pytest.raises(ValueError) as err:
        load_task("cola")
    text = str(err.value)
    assert "\n" not in text and text == (
        "task cola: OOD set 'grammar' is self-collected by GLUE-X (not on the Hub): pass --ood grammar=FILE, or "
        "--data-dir DIR with DIR/grammar/test.jsonl (or leave grammar out: --ood-sets NONE)")
    path = write_jsonl(tmp_path / "grammar.jsonl", [{"sentence": "x y", "label": 1}])
    assert len(load_task("cola", ood={"grammar": str(path)}).ood["grammar"]) == 1
    assert list(load_task("cola", ood_sets=[]).ood) == []
    # a self-collected set in GLUE-X's own format (string labels) maps as GLUE-X does
    news = write_jsonl(tmp_path / "newsqa.jsonl", [{"question": "q", "sentence": "s", "label": "not_entailment"},
                                                   {"question": "q2", "sentence": "s2", "label": "entailment"}])
    monkeypatch.setattr(data, "_hub", lambda source: datasets.Dataset.from_list(
        [{"question": "a", "sentence": "b", "label": 0}]))
    assert load_task("qnli", ood={"newsqa": str(news)}).ood["newsqa"]["label"] == [1, 0]
    flip = write_jsonl(tmp_path / "flip.jsonl", [{"Summary": "ok", "Sentiment": s}
                                                 for s in ("positive", "neutral", "negative")])
    monkeypatch.setattr(data, "_hub", lambda source: fake)
    got = load_task("sst2", ood={"flipkart": str(flip)}, ood_sets=["flipkart"]).ood["flipkart"]
    assert got["label"] == [1, 0, 0] and got["sentence"] == ["ok"] * 3  # neutral counts as negative


# --- training ---

def test_stsb_trains_as_regression(tiny_model_dir, tiny_data_dir):
    from emoe.train import train_and_evaluate

    seen = {}

    def on_model(model):
        seen["labels"] = model.config.num_labels
        seen["model"] = model

    final = train_and_evaluate({"task": "stsb", "model": tiny_model_dir, "data_dir": str(tiny_data_dir),
                                "max_length": 32, "batch_size": 16, "epochs": 1, "num_experts": 4, "top_k": 2,
                                "learning_rate": 1e-3}, on_model=on_model)
    assert seen["labels"] == 1 and seen["model"].config.problem_type == "regression"  # MSE on one output
    assert {"id.pearson", "id.spearmanr", "ood_score.sick", "ood.sick.pearson"} <= set(final)
    assert final["id_score"] == pytest.approx((final["id.pearson"] + final["id.spearmanr"]) / 2)
    assert final["epoch"] == 1.0 and math.isfinite(final["train_loss"])


def test_epochs_default_to_the_task_cap():
    from emoe import hparams

    assert hparams.trial_config({"task": "mnli"})["epochs"] == 3
    assert hparams.trial_config({"task": "rte"})["epochs"] == 10
    assert hparams.trial_config({"task": "mnli", "epochs": 2})["epochs"] == 2
