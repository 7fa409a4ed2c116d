"""The two OOD protocols, each as its reference code does it: GLUE-X (YangLinyi/GLUE-X evaluation/utils_lp.py,
eval_OOD_bert.py, top_OOD_lp.py) and the official EMoE OOD script (qiuzh20/EMoE Language/test_glue_no_trainer.py)."""

import math

import numpy as np
import pytest
from conftest import _NLI, write_jsonl

from emoe import metrics
from emoe.data import load_task
from emoe.protocols import OOD_PROTOCOLS
from emoe.train import evaluation_loaders, train_and_evaluate


def _sentences(n, label=0, tag=""):
    return [{"sentence": f"{tag} review number {i} " + "word " * (i % 7), "label": (label + i) % 2} for i in range(n)]


def _pairs(n, tag=""):
    return [{"sentence1": f"{tag} first {i}", "sentence2": f"{tag} second {i}", "label": i % 2, "idx": i}
            for i in range(n)]


def _nli(n, labels=None):
    rows = [{"premise": p, "hypothesis": h, "label": y} for p, h, y in (_NLI * n)[:n]]
    for row, label in zip(rows, labels or []):
        row["label"] = label
    return rows


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    """Every split of each set, of distinct sizes, so that which splits a protocol reads shows in the row count."""
    root = tmp_path_factory.mktemp("splits")
    write_jsonl(root / "sst2/train.jsonl", _sentences(32))
    write_jsonl(root / "sst2/validation.jsonl", _sentences(8))
    for name, (train, test) in {"imdb": (7, 5), "yelp": (11, 3), "amazon": (13, 2)}.items():
        write_jsonl(root / f"{name}/train.jsonl", _sentences(train, tag=f"{name}-train"))
        write_jsonl(root / f"{name}/test.jsonl", _sentences(test, tag=f"{name}-test"))
    for name, (train, validation) in {"mrpc": (9, 4), "qqp": (6, 5), "rte": (10, 3)}.items():
        write_jsonl(root / f"{name}/train.jsonl", _pairs(train, f"{name}-train"))
        write_jsonl(root / f"{name}/validation.jsonl", _pairs(validation, f"{name}-validation"))
    write_jsonl(root / "mnli/train.jsonl", _nli(24))
    write_jsonl(root / "mnli/validation_matched.jsonl", _nli(6))
    write_jsonl(root / "mnli/validation_mismatched.jsonl", _nli(4))
    write_jsonl(root / "snli/train.jsonl", _nli(8, [0, 1, 2, -1, 0, 1, 2, 0]))
    write_jsonl(root / "snli/validation.jsonl", _nli(3))
    write_jsonl(root / "snli/test.jsonl", _nli(5, [0, -1, 2, 1, -1]))  # -1: no gold label (SNLI's "-")
    sick = [{"premise": "a b", "hypothesis": "c d", "label": 0, "relatedness": r} for r in (4.5, 3.2, 1.0, 2.5)]
    write_jsonl(root / "sick/test.jsonl", sick)
    write_jsonl(root / "stsb/train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 2.5, "idx": 0}] * 16)
    write_jsonl(root / "stsb/validation.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 3.0, "idx": 0}] * 4)
    return root


def test_splits_per_protocol(split_dir):
    """GLUE-X concatenates (IMDB, Yelp, Amazon train+test; MRPC, QQP, RTE train+validation; SNLI all); the official
    EMoE script scores one split (test_name_mapping: IMDB, Yelp, Amazon, SNLI, SICK test; MRPC, QQP validation)."""
    gluex = load_task("sst2", split_dir, ood_sets=["imdb", "yelp", "amazon"])
    emoe = load_task("sst2", split_dir, ood_sets=["imdb", "yelp", "amazon"], ood_protocol="emoe")
    assert {k: len(v) for k, v in gluex.ood.items()} == {"imdb": 12, "yelp": 14, "amazon": 15}
    assert {k: len(v) for k, v in emoe.ood.items()} == {"imdb": 5, "yelp": 3, "amazon": 2}
    assert all(s.startswith("imdb-test") for s in emoe.ood["imdb"]["sentence"])
    gluex = load_task("rte", split_dir, ood_sets=["mrpc", "qqp"])
    emoe = load_task("rte", split_dir, ood_sets=["mrpc", "qqp"], ood_protocol="emoe")
    assert {k: len(v) for k, v in gluex.ood.items()} == {"mrpc": 13, "qqp": 11}
    assert {k: len(v) for k, v in emoe.ood.items()} == {"mrpc": 4, "qqp": 5}
    # GLUE-X's label mapping holds under both: MRPC's "equivalent" (1) is RTE's entailment (0)
    assert emoe.ood["mrpc"]["label"] == [1 - i % 2 for i in range(4)]


def test_unlabelled_rows_are_kept_and_scored_wrong(split_dir):
    """GLUE-X reads SNLI's train+validation+test, the official script its test split; both keep the rows without a
    gold label (-1), which no prediction matches."""
    gluex = load_task("mnli", split_dir, ood_sets=["snli"])
    emoe = load_task("mnli", split_dir, ood_sets=["snli"], ood_protocol="emoe")
    assert len(gluex.ood["snli"]) == 16 and gluex.ood["snli"]["label"].count(-1) == 3
    assert emoe.ood["snli"]["label"] == [0, -1, 2, 1, -1]
    gold = np.array(emoe.ood["snli"]["label"])
    perfect_where_labelled = np.where(gold >= 0, gold, 0)
    assert metrics.compute(("accuracy",), perfect_where_labelled, gold)["accuracy"] == pytest.approx(3 / 5)
    # the ID task's own data drops them: training never sees a -1 label
    assert min(load_task("snli", split_dir, ood_sets=[]).train["label"]) == 0


def test_sick_for_stsb_per_protocol(split_dir):
    """GLUE-X's sick_num5: round(relatedness - 1) (half to even); the official script: the raw relatedness."""
    assert load_task("stsb", split_dir).ood["sick"]["label"] == [4.0, 2.0, 0.0, 2.0]
    assert load_task("stsb", split_dir, ood_protocol="emoe").ood["sick"]["label"] == pytest.approx([4.5, 3.2, 1.0,
                                                                                                     2.5])


def test_metrics_per_protocol():
    from emoe.data import get_task

    gluex, emoe = OOD_PROTOCOLS["gluex"], OOD_PROTOCOLS["emoe"]
    assert gluex.metrics(get_task("mrpc")) == ("accuracy", "f1") and emoe.metrics(get_task("mrpc")) == ("accuracy",)
    assert gluex.metrics(get_task("cola")) == ("matthews_correlation",)
    assert emoe.metrics(get_task("cola")) == ("accuracy",)
    assert emoe.metrics(get_task("stsb")) == ("pearson", "spearmanr")  # SICK from STS-B: a regression
    # MRPC -> Twitter-like rows: accuracy 0.8 where GLUE's mean(accuracy 0.8, F1 2/3) is 0.733
    pred, gold = np.array([1, 1, 0, 0, 0]), np.array([1, 0, 0, 0, 0])
    assert metrics.primary(metrics.compute(emoe.metrics(get_task("mrpc")), pred, gold)) == pytest.approx(0.8)
    assert metrics.primary(metrics.compute(gluex.metrics(get_task("mrpc")), pred, gold)) == pytest.approx((0.8 + 2 / 3) / 2)


def test_loaders_follow_the_protocol(tiny_model_dir, split_dir):
    """Max length and batch of the OOD sets: GLUE-X 512, the trial's batch, padded to the max length when a capacity
    makes padding count; EMoE 128 and batch 32. The ID set keeps the trial's. Never past the model's positions."""
    import types

    import datasets
    import transformers as T

    from emoe import hparams

    tokenizer = T.AutoTokenizer.from_pretrained(tiny_model_dir)  # declares 512 tokens
    wide = types.SimpleNamespace(max_position_embeddings=1024)  # a model with more positions than any protocol needs
    rows = [{"sentence": "word " * 600, "label": 0}] * 40
    sets = {"id": datasets.Dataset.from_list(rows), "long": datasets.Dataset.from_list(rows)}
    task = load_task("sst2", split_dir, ood_sets=[]).task
    for protocol, capacity, length, batch in [("gluex", None, 512, 8), ("gluex", 1.5, 512, 8), ("emoe", None, 128, 32),
                                              ("emoe", 1.5, 128, 32)]:
        cfg = hparams.trial_config({"model": tiny_model_dir, "max_length": 16, "eval_batch_size": 8,
                                    "ood_protocol": protocol, "capacity_factor": capacity})
        loaders, _ = evaluation_loaders(sets, tokenizer, task, cfg, wide)
        assert loaders["id"].batch_size == 8 and next(iter(loaders["id"]))["input_ids"].shape[1] == 16
        assert loaders["long"].batch_size == batch
        assert next(iter(loaders["long"]))["input_ids"].shape[1] == length
        # the tiny model has 128 positions: no protocol reads past them
        narrow, _ = evaluation_loaders(sets, tokenizer, task, cfg, T.AutoConfig.from_pretrained(tiny_model_dir))
        assert next(iter(narrow["long"]))["input_ids"].shape[1] == 128
    cfg = hparams.trial_config({"model": tiny_model_dir, "ood_max_length": 64})
    loaders, _ = evaluation_loaders(sets, tokenizer, task, cfg, wide)
    assert next(iter(loaders["long"]))["input_ids"].shape[1] == 64
    short = [{"sentence": "a few words", "label": 0}] * 4
    sets = {"id": datasets.Dataset.from_list(short), "short": datasets.Dataset.from_list(short)}
    for protocol, capacity, width in [("gluex", None, lambda w: w < 16), ("gluex", 1.5, lambda w: w == 512),
                                      ("emoe", 1.5, lambda w: w < 16)]:
        cfg = hparams.trial_config({"model": tiny_model_dir, "capacity_factor": capacity, "ood_protocol": protocol})
        loaders, _ = evaluation_loaders(sets, tokenizer, task, cfg, wide)
        assert width(next(iter(loaders["short"]))["input_ids"].shape[1])


def test_trial_scores_ood_by_protocol(tiny_model_dir, split_dir, tmp_path):
    """One trial on MRPC: GLUE-X scores each OOD set with accuracy and F1 and weights the sets by size; the official
    script accuracy alone and a plain mean. A user's own set follows the protocol too."""
    mine = write_jsonl(tmp_path / "mine.jsonl", _pairs(7, "mine"))
    base = {"model": tiny_model_dir, "data_dir": str(split_dir), "task": "mrpc", "ood_sets": ("qqp", "rte"),
            "ood": {"mine": str(mine)}, "num_experts": 4, "top_k": 2, "batch_size": 4, "epochs": 1,
            "max_length": 32, "learning_rate": 1e-3}
    gluex = train_and_evaluate(base)
    assert {k for k in gluex if k.startswith("ood.")} == {f"ood.{s}.{m}" for s in ("qqp", "rte", "mine")
                                                         for m in ("accuracy", "f1")}
    sizes = {"qqp": 11, "rte": 13, "mine": 7}
    assert math.isclose(gluex["ood_score"], sum(n * gluex[f"ood_score.{s}"] for s, n in sizes.items()) / 31)
    emoe = train_and_evaluate({**base, "ood_protocol": "emoe"})
    assert {k for k in emoe if k.startswith("ood.")} == {f"ood.{s}.accuracy" for s in ("qqp", "rte", "mine")}
    assert all(emoe[f"ood_score.{s}"] == emoe[f"ood.{s}.accuracy"] for s in ("qqp", "rte", "mine"))
    assert math.isclose(emoe["ood_score"], np.mean([emoe[f"ood_score.{s}"] for s in ("qqp", "rte", "mine")]))
    assert emoe["id_score"] == pytest.approx(np.mean([emoe["id.accuracy"], emoe["id.f1"]]))  # ID keeps GLUE's
    # GLUE-X weighs each set by its full size, however few of its rows --max-eval-samples evaluates
    capped = train_and_evaluate({**base, "max_eval_samples": 4})
    assert math.isclose(capped["ood_score"], sum(n * capped[f"ood_score.{s}"] for s, n in sizes.items()) / 31)
    scores = [capped[f"ood_score.{s}"] for s in sizes]
    if len(set(scores)) > 1:  # then the weights show: not the plain mean
        assert not math.isclose(capped["ood_score"], np.mean(scores))


def test_unlabelled_rows_through_a_trial(tiny_model_dir, split_dir, tmp_path):
    """SNLI's -1 rows reach the evaluation and count as wrong; where F1 or MCC would score them, they are refused
    when the set is loaded, before any training."""
    kept = {}
    base = {"model": tiny_model_dir, "data_dir": str(split_dir), "task": "mnli", "ood_sets": ("snli",),
            "num_experts": 4, "top_k": 2, "batch_size": 8, "epochs": 1, "max_length": 32, "learning_rate": 1e-3,
            "ood_protocol": "emoe"}
    final = train_and_evaluate(base, on_predictions=kept.update)
    gold = np.array([0, -1, 2, 1, -1])
    assert final["ood.snli.accuracy"] == pytest.approx(np.mean(kept["snli"] == gold))
    assert final["ood.snli.accuracy"] <= 3 / 5
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", _pairs(3) + [{"sentence1": "a", "sentence2": "b",
                                                                          "label": -1}])
    mrpc = {**base, "task": "mrpc", "ood_sets": (), "ood": {"mine": str(unlabelled)}}
    with pytest.raises(ValueError, match=r"label\(s\) \[-1\] outside task mrpc's labels"):
        train_and_evaluate({**mrpc, "ood_protocol": "gluex"})  # MRPC's F1 has no place for them
    assert "ood.mine.accuracy" in train_and_evaluate(mrpc)  # accuracy alone: scored wrong


def test_flip_keeps_unlabelled_rows():
    from emoe.data import _flip

    assert [_flip(x) for x in (0, 1, -1)] == [1, 0, -1]


def test_unknown_protocol_is_one_line():
    from emoe import hparams

    with pytest.raises(ValueError, match="^unknown ood_protocol 'glue'; valid choices: gluex, emoe$"):
        hparams.trial_config({"ood_protocol": "glue"})
