"""How a trial scores its OOD sets: GLUE-X's protocol or the official EMoE OOD script's, each as its code does it.

``gluex`` follows YangLinyi/GLUE-X (``evaluation/utils_lp.py::preprocess_data``, ``eval_OOD_bert.py``,
``top_OOD_lp.py``); ``emoe`` follows qiuzh20/EMoE (``Language/test_glue_no_trainer.py``). They differ in

| | ``gluex`` | ``emoe`` |
| --- | --- | --- |
| metrics of a set | the ID task's GLUE metrics, their mean | accuracy (SICK seen from STS-B: Pearson and Spearman on the raw relatedness score, regression; their mean) |
| splits | GLUE-X's concatenations (IMDB, Yelp, Amazon train+test; MRPC, QQP, RTE, HANS train+validation; SNLI, SICK all) | one split per set: ``test_name_mapping`` (IMDB, Yelp, Amazon, SICK, SNLI test; MRPC, QQP, HANS validation) |
| a task's ``ood_score`` | the sets' scores weighted by their sizes | the plain mean of the sets' scores |
| max length | 512 (``--max_len``) | 128 (``--max_length``) |
| batch | GLUE-X's is per model and GPU (e.g. BERT-base 1000 on A100, 50 on V100), in shuffled order: the trial's ``eval_batch_size`` here | 32 (``--per_device_eval_batch_size``), in the set's order |
| padding | to the max length (``pad_to_max_length=True``) | to the longest of the batch |
| SICK from STS-B | ``round(relatedness - 1)`` (``sick_num5``) | the raw relatedness score, 1 to 5 |

Both keep SNLI's unlabelled rows (label -1), which no prediction matches: they count as wrong.

Padding and batch change a score only when an expert capacity drops tokens (a capacity counts a batch's padded
positions); without one, padding to the longest of each batch gives the same predictions faster, so ``gluex`` pads
to the max length only when ``capacity_factor`` is set.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class OodProtocol:
    name: str
    max_length: int  # tokens per OOD example
    batch_size: int | None  # examples per OOD evaluation batch; None: the trial's evaluation batch
    pad_to_max_length: bool  # pad every OOD batch to max_length (matters only with a capacity)
    size_weighted: bool  # a task's ood_score: the sets' scores weighted by their sizes, else their plain mean
    accuracy_only: bool  # classification sets are scored by accuracy alone, whatever the ID task's metrics
    one_split: dict[str, str]  # built-in set -> the one split it is scored on (absent: the set's own splits)
    raw_sick_relatedness: bool  # SICK for STS-B: the raw score (1-5), not GLUE-X's round(score - 1)

    def metrics(self, task) -> tuple[str, ...]:
        """The metrics an OOD set of ``task`` is scored with (their mean is the set's ``ood_score.<set>``)."""
        if self.accuracy_only and not task.regression:
            return ("accuracy",)
        return task.metrics

    def aggregate(self, scores: dict[str, float], sizes: dict[str, int]) -> float:
        """A task's ``ood_score`` from its sets' scores (and sizes: each set's full row count, as GLUE-X weighs it,
        whatever share of it ``max_eval_samples`` evaluates); NaN without any set."""
        if not scores:
            return float("nan")
        names = list(scores)
        values = np.array([scores[n] for n in names], dtype=float)
        if not self.size_weighted:
            return float(values.mean())
        missing = [n for n in names if n not in sizes]
        if missing:
            raise ValueError(f"ood_protocol {self.name!r} weights each OOD set by its size; no size for "
                             f"{', '.join(missing)}")
        weights = np.array([sizes[n] for n in names], dtype=float)
        return float((weights * values).sum() / weights.sum())


OOD_PROTOCOLS: dict[str, OodProtocol] = {
    "gluex": OodProtocol("gluex", max_length=512, batch_size=None, pad_to_max_length=True, size_weighted=True,
                         accuracy_only=False, one_split={}, raw_sick_relatedness=False),
    # test_name_mapping of test_glue_no_trainer.py. MNLI-mismatched and RTE are absent from that mapping (the script
    # stops on them with a KeyError): MNLI-mismatched is scored on validation_mismatched (its one labelled split,
    # which the script's unreachable MNLI branch names), RTE on its validation split as MRPC's and QQP's.
    # Self-collected sets (Grammar, Flipkart, Twitter, NewsQA, SciTail) are read whole, as its load_from_disk does.
    "emoe": OodProtocol("emoe", max_length=128, batch_size=32, pad_to_max_length=False, size_weighted=False,
                        accuracy_only=True, raw_sick_relatedness=True,
                        one_split={"imdb": "test", "yelp": "test", "amazon": "test", "sick": "test", "snli": "test",
                                   "mrpc": "validation", "qqp": "validation", "hans": "validation",
                                   "rte": "validation"}),
}


def get_protocol(name: str) -> OodProtocol:
    if name not in OOD_PROTOCOLS:
        raise ValueError(f"unknown ood_protocol {name!r}; valid choices: {', '.join(OOD_PROTOCOLS)}")
    return OOD_PROTOCOLS[name]
