"""GLUE-X's metrics: each against a formula computed here by hand, and every task's metric set."""

import math

import numpy as np
import pytest

from emoe import metrics
from emoe.data import GLUE, TASKS


# --- metrics: each against a formula computed here by hand (not the library the code calls) ---

PRED = np.array([1, 1, 0, 1, 0, 0, 1, 0, 1, 1])
GOLD = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0, 1])


def test_classification_metrics_equal_their_formulas():
    tp = int(((PRED == 1) & (GOLD == 1)).sum())  # 4
    tn = int(((PRED == 0) & (GOLD == 0)).sum())  # 3
    fp = int(((PRED == 1) & (GOLD == 0)).sum())  # 2
    fn = int(((PRED == 0) & (GOLD == 1)).sum())  # 1
    assert (tp, tn, fp, fn) == (4, 3, 2, 1)
    out = metrics.compute(("accuracy", "f1", "matthews_correlation"), PRED, GOLD)
    assert out["accuracy"] == pytest.approx(7 / 10)
    assert out["f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert out["matthews_correlation"] == pytest.approx(mcc) and mcc == pytest.approx(10 / math.sqrt(6 * 5 * 4 * 5))
    assert metrics.primary(out) == pytest.approx((0.7 + 8 / 11 + mcc) / 3)  # GLUE: a task's score = mean of metrics


def test_correlations_equal_their_formulas():
    pred = np.array([0.5, 2.0, 1.0, 4.5, 3.0, 3.0])
    gold = np.array([0.0, 2.5, 1.5, 5.0, 2.0, 3.5])
    x, y = pred - pred.mean(), gold - gold.mean()
    pearson = (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())

    def ranks(v):  # average ranks for ties, by hand
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2 + 1
            i = j + 1
        return np.array(r)

    rx, ry = ranks(pred) - ranks(pred).mean(), ranks(gold) - ranks(gold).mean()
    spearman = (rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum())
    out = metrics.compute(("pearson", "spearmanr"), pred, gold)
    assert out["pearson"] == pytest.approx(pearson) and out["spearmanr"] == pytest.approx(spearman)
    # a constant prediction has no correlation: 0, never NaN (it would poison selection)
    assert metrics.compute(("pearson", "spearmanr"), np.ones(6), gold) == {"pearson": 0.0, "spearmanr": 0.0}


def test_each_task_carries_glue_metrics_and_the_official_epoch_caps():
    assert GLUE == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
    assert {t: TASKS[t].metrics for t in GLUE} == {
        "cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
        "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearmanr"), "mnli": ("accuracy",),
        "qnli": ("accuracy",), "rte": ("accuracy",)}
    assert {t for t in GLUE if TASKS[t].epochs == 3} == {"mnli", "qqp", "qnli"}
    assert all(TASKS[t].epochs == 10 for t in GLUE if t not in ("mnli", "qqp", "qnli"))
    assert TASKS["stsb"].regression and TASKS["stsb"].num_labels == 1 and not TASKS["snli"].glue_x
    assert {t: list(TASKS[t].ood) for t in GLUE} == {  # GLUE-X's pairs (its result files)
        "cola": ["grammar"], "sst2": ["imdb", "yelp", "amazon", "flipkart"], "mrpc": ["qqp", "rte", "hans", "twitter"],
        "qqp": ["mrpc", "rte", "hans", "twitter"], "stsb": ["sick"], "mnli": ["mnli_mismatched", "snli", "sick"],
        "qnli": ["newsqa"], "rte": ["mrpc", "qqp", "hans", "scitail"]}


def test_score_metrics_names_every_metric():
    from emoe.train import score_metrics

    scores = {"id": {"accuracy": 0.8, "f1": 0.6}, "qqp": {"accuracy": 0.5, "f1": 0.7}, "rte": {"accuracy": 0.4, "f1": 0.2}}
    out = score_metrics(scores, {"id": 10, "qqp": 100, "rte": 300})
    # GLUE-X (top_OOD_lp.py): each set's metrics weighted by the set's size: (100 * 0.6 + 300 * 0.3) / 400
    assert out == pytest.approx({"id_score": 0.7, "id.accuracy": 0.8, "id.f1": 0.6, "ood_score.qqp": 0.6,
                                 "ood.qqp.accuracy": 0.5, "ood.qqp.f1": 0.7, "ood_score.rte": 0.3,
                                 "ood.rte.accuracy": 0.4, "ood.rte.f1": 0.2, "ood_score": 0.375})
    # the official EMoE script scores each set alone; a task's OOD score is their plain mean
    assert score_metrics(scores, {"id": 10, "qqp": 100, "rte": 300}, "emoe")["ood_score"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="size"):
        score_metrics(scores)  # GLUE-X's weights are the sets' sizes: none given is a bug, not an unweighted mean
