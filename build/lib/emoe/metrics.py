"""GLUE's metrics, computed with scikit-learn and scipy, and a task's primary score.

Names are GLUE's as GLUE-X's result files and ``evaluate``'s ``glue`` metric spell them. A task's primary score is
the mean of its metrics (GLUE's convention; the official EMoE code and GLUE-X average a task's metrics the same way).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np


def _accuracy(pred, gold):
    from sklearn.metrics import accuracy_score

    return accuracy_score(gold, pred)


def _f1(pred, gold):
    from sklearn.metrics import f1_score

    return f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0)  # GLUE: the positive class 1


def _mcc(pred, gold):
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(gold, pred)  # 0 for a constant prediction


def _correlation(fn: Callable) -> Callable:
    def metric(pred, gold):
        from scipy.stats import ConstantInputWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            value = fn(pred, gold)[0]
        # NOTE: a constant prediction (early in training) has no correlation; scipy returns nan. It scores 0, as
        # sklearn's MCC does for a constant prediction, so that one such evaluation does not poison the selection.
        return 0.0 if np.isnan(value) else value
    return metric


def _pearson(pred, gold):
    from scipy.stats import pearsonr

    return _correlation(pearsonr)(pred, gold)


def _spearman(pred, gold):
    from scipy.stats import spearmanr

    return _correlation(spearmanr)(pred, gold)


METRICS: dict[str, Callable] = {"accuracy": _accuracy, "f1": _f1, "matthews_correlation": _mcc,
                                "pearson": _pearson, "spearmanr": _spearman}


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """The prediction of each row of ``logits``: the score of a regression head, else the arg-max class."""
    return logits[:, 0] if regression else logits.argmax(-1)


def compute(names: tuple[str, ...] | list[str], pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Each named metric of predictions against gold labels."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid choices: {', '.join(METRICS)}")
    return {n: float(METRICS[n](pred, gold)) for n in names}


def primary(metrics: dict[str, float]) -> float:
    """A task's primary score: the mean of its metrics."""
    return float(np.mean(list(metrics.values())))
