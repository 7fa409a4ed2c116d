"""A reviewer's paragraph: the text a paper's appendix needs about a sweep, filled from the sweep itself.

Runs, seeds, learning rates and epochs, the model and the data caps, the selection rule, what the intervals and
tests are, the primary analysis's power, and the compute. Every number comes from the trials and the analysis;
nothing is typed by hand, so the paragraph cannot drift from the tables beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emoe.analysis.stats import Analysis
from emoe.tracking import schema


def _values(trials: pd.DataFrame, column: str) -> list:
    if column not in trials:
        return []
    return sorted({v for v in trials[column].dropna().tolist()}, key=lambda v: (str(type(v)), v))


def _ints(values) -> list[int]:
    """The whole numbers among ``values`` (params may be logged as text: "None", "3"); the rest left out."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            out.append(int(f))
    return sorted(set(out))


def _join(items, unit: str = "") -> str:
    items = [f"{x:g}" if isinstance(x, float) else str(x) for x in items]
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "none"
    return text + unit


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def chose_something(a: Analysis) -> bool:
    """Whether the oracle rule chose anything: more than one learning rate, or a kept best evaluation."""
    sel = a.selection
    return bool(len(sel)) and sel["inflation"].notna().any() and bool((sel["rates"] > 1).any() or sel["epochs"].any())


def paragraph(a: Analysis, trials: pd.DataFrame | None = None) -> str:
    """The appendix paragraph for analysis ``a`` of ``trials`` (default: the trials it analysed)."""
    trials = a.trials if trials is None else trials
    used = trials[trials["outcome"].isin(("completed", "early_stopped"))]
    failed = int((trials["outcome"] == "failed").sum())
    stopped = int((trials["outcome"] == "early_stopped").sum())
    arms = [arm for arm in a.arms if arm in set(trials["arm"])]
    tasks, seeds = _values(trials, "task"), _values(trials, "seed")
    rates = _values(trials, "learning_rate")
    epochs = _values(trials, "epochs")
    models = _values(trials, "model")
    out = [f"We ran {len(trials)} fine-tuning runs ({len(used)} finished, {failed} failed"
           + (f", {stopped} stopped early by the scheduler" if stopped else "") + "): "
           f"{len(arms)} arm(s) ({_join(arms)}) on {len(tasks)} task(s) ({_join(tasks)}), "
           f"{len(seeds)} seed(s) each ({_join(_ints(seeds))}) and learning rate(s) {_join(rates)}"
           + (f", for at most {_join(_ints(epochs))} epoch(s)" if _ints(epochs) else "")
           + (f", starting from {_join(models)}" if models else "") + "."]
    caps = [f"{c.replace('_', ' ')} {v}" for c in ("max_train_samples", "max_eval_samples", "dev_samples")
            for v in _ints(_values(trials, c))[:1]]
    if caps:
        out.append(f"Data caps: {_join(caps)}.")
    if a.rule == "clean":
        out.append("The learning rate (and the evaluation kept) were chosen per arm and task on a development "
                   "split carved from the training set, never trained on, the same rows for every arm; the task's "
                   "validation set is reported as a test set.")
    else:
        out.append("The learning rate (and the evaluation kept) were chosen per arm and task on the ID validation "
                   "set that is also reported (the official protocol: the oracle rule)"
                   + (f"; choosing on it inflated the reported ID score by {a.selection['inflation'].mean():+.4f} "
                      "on average (each seed scored at the rate the other seeds chose)"
                      if chose_something(a) else "; with one learning rate and no kept best evaluation, nothing "
                      "was chosen") + ".")
    if len(a.rules):
        gap = a.rules[f"gap.{schema.ID_SCORE}"].mean()
        out.append(f"Against choosing on a development split, the oracle rule's ID score was higher by {gap:+.4f} "
                   "on average over arms and tasks.")
    status = a.status or {}
    kind = "primary" if not status.get("exploratory") else "exploratory"
    n_blocks = int(a.tests.get("blocks", 0) or 0)
    block_text = {"tasks": "tasks (seeds averaged)", "seeds": "task x seed pairs"}.get(a.blocks, a.blocks)
    if a.baseline is not None and len(a.comparisons):
        level = a.tests.get("level", 0.95)
        out.append(f"The {kind} analysis compares each arm with {a.baseline} on {a.metric} over {n_blocks} "
                   f"blocks ({block_text}): a Wilcoxon signed-rank test (exact p, zero differences split between "
                   f"the signs), Holm-corrected over the {len(a.comparisons)} comparison(s) at alpha "
                   f"{status.get('family_alpha', 0.05):.4g}, with {100 * level:.2f}% t-intervals "
                   "(simultaneous 95% over the family, Bonferroni) for the mean difference.")
        detectable = a.comparisons["detectable"].replace([np.inf, -np.inf], np.nan).dropna() \
            if "detectable" in a.comparisons else pd.Series(dtype=float)
        if len(detectable):
            out.append(f"With {n_blocks} blocks and the spread observed, the smallest difference each comparison "
                       f"could detect at 80% power was {detectable.min():.4f} to {detectable.max():.4f} "
                       f"({a.metric} units).")
        else:
            out.append(f"With {n_blocks} blocks no difference could reach significance at that level (too few "
                       "blocks for the exact test): the comparisons are descriptive.")
    out.append("Ranks are Friedman ranks within blocks (1 = best, ties averaged); a failed run ranks last in its "
               "block and is never dropped.")
    if schema.WALL_TIME in used and used[schema.WALL_TIME].notna().any():
        wall = used[schema.WALL_TIME].dropna()
        text = (f"Compute: {_hours(float(wall.sum()))} of training and evaluation in total, "
                f"{wall.mean():.0f} s per run on average")
        if schema.ACCELERATOR_TIME in used and used[schema.ACCELERATOR_TIME].notna().any():
            text += f", {_hours(float(used[schema.ACCELERATOR_TIME].sum()))} of GPU time"
        if schema.TRAINABLE_PARAMS in used and used[schema.TRAINABLE_PARAMS].notna().any():
            p = used.groupby("arm")[schema.TRAINABLE_PARAMS].mean()
            text += f"; trainable parameters {p.min() / 1e6:.2f}M to {p.max() / 1e6:.2f}M per arm"
        out.append(text + ".")
    return " ".join(out)
