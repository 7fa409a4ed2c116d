"""Model selection, defined once: every table that picks a learning rate (the sweep's closing table, the report)
calls ``select``. ID metrics only; OOD metrics never select anything."""

from __future__ import annotations

import pandas as pd

from emoe.tracking import schema

USED_OUTCOMES = ("completed", "early_stopped")
RULE = (f"per arm and task, the learning rate with the best mean {schema.ID_SCORE} over seeds (ID only; the smaller "
        "rate among equals); completed trials count, early-stopped ones with the ID score they reached when stopped "
        "(ASHA stops a trial for trailing its bracket, so it cannot win by stopping), and a rate where any seed "
        "failed (diverged) ranks below every rate without a failure")


def select(trials: pd.DataFrame, warnings: list[str] | None = None) -> pd.DataFrame:
    """The trials of each (task, arm)'s chosen learning rate (``RULE``).

    Args:
        trials: one row per trial with ``task, arm, seed, learning_rate, outcome`` and ``id_score``.
        warnings: gets a line for each gap (trials without ``id_score``, seeds missing at the chosen rate,
            early-stopped trials among the chosen).

    Returns:
        The chosen rows, in the order of ``trials``' (task, arm) groups.
    """
    warnings = [] if warnings is None else warnings
    used = trials[trials["outcome"].isin(USED_OUTCOMES)]
    failed = trials[trials["outcome"] == "failed"]
    failed_rates = {key: set(g["learning_rate"]) for key, g in failed.groupby(["task", "arm"], sort=False)}
    chosen = []
    all_seeds = sorted(used["seed"].dropna().unique())
    for (task, arm), group in used.groupby(["task", "arm"], sort=False):
        bad = failed_rates.get((task, arm), set())
        if bad and set(group["learning_rate"]) - bad:
            group = group[~group["learning_rate"].isin(bad)]
            warnings.append(f"{task}/{arm}: learning rate(s) {sorted(bad)} had a failed (diverged) trial; not "
                            "selectable while another rate has none")
        scored = group.dropna(subset=[schema.ID_SCORE])
        if len(scored) < len(group):
            warnings.append(f"{task}/{arm}: {len(group) - len(scored)} trial(s) without {schema.ID_SCORE} ignored")
        if scored.empty:
            warnings.append(f"{task}/{arm}: no trial with {schema.ID_SCORE}; arm left out")
            continue
        means = scored.groupby("learning_rate")[schema.ID_SCORE].mean().sort_index()
        best = means.idxmax()  # first (smallest) learning rate among equals
        rows = scored[scored["learning_rate"] == best]
        missing = sorted(set(all_seeds) - set(rows["seed"]))
        if missing:
            warnings.append(f"{task}/{arm}: seed(s) {[int(s) for s in missing]} missing at the chosen learning rate "
                            f"{best:g}; averaged over seeds {[int(s) for s in sorted(rows['seed'])]}")
        stopped = int((rows["outcome"] == "early_stopped").sum())
        if stopped:
            warnings.append(f"{task}/{arm}: {stopped} early-stopped trial(s) at the chosen learning rate {best:g} "
                            "report partially trained metrics")
        chosen.append(rows)
    return pd.concat(chosen, ignore_index=True) if chosen else used.iloc[0:0]
