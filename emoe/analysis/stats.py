"""Statistics over a DataFrame of trials: model selection on ID, seed means, ranks per block, Friedman and friends.

Pure functions of a DataFrame (no MLflow). The method, stated in every report:
1. Trials: completed and early-stopped ones are used; failed ones are counted.
2. Model selection uses ID only: for each arm and task, the learning rate with the best mean ``id_score`` over seeds;
   that learning rate's seeds are reported. OOD metrics never select anything.
3. Seeds are averaged first, then ranked: within each block arms are ranked, 1 = best, ties get the average rank; an
   arm's Friedman rank is its mean rank. Blocks: with several tasks, each task (GLUE-X's rank: a task's OOD sets
   averaged into its ``ood_score``); with one task, each of its OOD sets (within-task evidence: the same models
   score every set). ID ranks over tasks separately.
4. Friedman chi-square with the Iman-Davenport F; the Nemenyi critical difference (q from scipy's studentized
   range); Holm-corrected Wilcoxon signed-rank tests of each arm against the dense baseline over the same blocks.
   With two arms only the Wilcoxon test.
5. Incomplete data is never ranked silently: a block missing an arm (or holding NaN) is dropped with a warning, and
   an arm missing seeds is averaged over the seeds it has, with a warning.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

from emoe.analysis import selection
from emoe.tracking import schema as tracking

BLOCKINGS = ("tasks", "sets", "sets-seeds")


@dataclasses.dataclass
class Analysis:
    table: pd.DataFrame  # one row per (task, arm): chosen lr, seeds, means and stds, ranks, failure counts
    ranks: pd.DataFrame  # blocks x arms, 1 = best
    id_ranks: pd.DataFrame  # tasks x arms on id_score
    tests: dict  # friedman / iman_davenport / nemenyi_cd / wilcoxon (DataFrame) / nemenyi_p (DataFrame)
    warnings: list[str]
    method: list[str]
    metric: str
    baseline: str | None
    summary: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # the paper's table: one row per arm
    blocks: str = "sets"


def ood_sets(df: pd.DataFrame) -> list[str]:
    return sorted(s for s in map(tracking.ood_score_set, df.columns) if s)


def find_baseline(df: pd.DataFrame, requested: str | None = None) -> str | None:
    """The dense baseline arm: ``requested``, else the arm named ``dense``, else the pre-trained dense one."""
    arms = list(dict.fromkeys(df["arm"]))
    if requested:
        if requested not in arms:
            raise ValueError(f"baseline arm {requested!r} not found; arms: {', '.join(map(str, arms))}")
        return requested
    if "dense" in arms:
        return "dense"
    dense = df[(df.get("method") == "dense") & (df.get("init", "pretrained") == "pretrained")]["arm"].unique()
    return dense[0] if len(dense) == 1 else None


def block_matrix(chosen: pd.DataFrame, metric: str, blocks: str, warnings: list[str]) -> pd.DataFrame:
    """Blocks x arms of seed-averaged (``tasks``, ``sets``) or per-seed (``sets-seeds``) values; incomplete blocks
    dropped with a warning (a block no arm has, such as an OOD set of another task, never existed: left out)."""
    if blocks not in BLOCKINGS:
        raise ValueError(f"unknown blocks {blocks!r}; valid choices: {', '.join(BLOCKINGS)}")
    # ood_score with sets: one block per task's OOD set; otherwise one block per task (ood_score: the task's sets
    # averaged).
    columns = [tracking.ood_score_metric(s) for s in ood_sets(chosen)] \
        if metric == tracking.OOD_SCORE and blocks != "tasks" else []
    columns = columns or [metric]
    keys = ["task"] + (["seed"] if blocks == "sets-seeds" else [])
    values = {}
    for col in columns:
        if col not in chosen:
            continue
        table = chosen.groupby(keys + ["arm"], sort=False)[col].mean().unstack("arm")
        for idx, row in table.iterrows():
            idx = idx if isinstance(idx, tuple) else (idx,)
            if row.isna().all():
                continue  # e.g. OOD set imdb of task rte: not a block
            values[(*idx[:1], tracking.ood_score_set(col) or col, *idx[1:])] = row
    if not values:
        return pd.DataFrame()
    matrix = pd.DataFrame(values).T
    matrix.index.names = ["task", "set"] + (["seed"] if blocks == "sets-seeds" else [])
    arms = list(dict.fromkeys(chosen["arm"]))
    matrix = matrix.reindex(columns=arms)
    incomplete = matrix.isna().any(axis=1)
    for idx in matrix.index[incomplete]:
        lacking = [a for a in arms if pd.isna(matrix.loc[idx, a])]
        warnings.append(f"block {'/'.join(map(str, idx))}: no {metric} for arm(s) {lacking}; block dropped")
    return matrix[~incomplete]


def rank_blocks(matrix: pd.DataFrame) -> pd.DataFrame:
    """Within each block, 1 = best (highest value); ties share the average rank."""
    return matrix.apply(lambda row: pd.Series(stats.rankdata(-row.to_numpy(float), method="average"),
                                              index=row.index), axis=1)


def friedman_tests(matrix: pd.DataFrame, baseline: str | None, alpha: float, warnings: list[str]) -> dict:
    import scikit_posthocs as sp
    from statsmodels.stats.multitest import multipletests

    n, k = matrix.shape
    out: dict = {"blocks": n, "arms": k, "alpha": alpha}
    if k >= 3 and n >= 2:
        chi2, p = stats.friedmanchisquare(*[matrix[c].to_numpy(float) for c in matrix.columns])
        denom = n * (k - 1) - chi2
        f = (n - 1) * chi2 / denom if denom > 0 else math.inf
        out["friedman"] = {"chi2": float(chi2), "df": k - 1, "p": float(p)}
        out["iman_davenport"] = {"F": float(f), "df1": k - 1, "df2": (k - 1) * (n - 1),
                                 "p": float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if math.isfinite(f) else 0.0}
        q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
        out["nemenyi_cd"] = float(q * math.sqrt(k * (k + 1) / (6 * n)))
        out["nemenyi_p"] = sp.posthoc_nemenyi_friedman(matrix.to_numpy(float))
        out["nemenyi_p"].index = out["nemenyi_p"].columns = list(matrix.columns)
    elif k >= 3:
        warnings.append(f"Friedman test needs at least 2 complete blocks, got {n}: not computed")
    if baseline is None or baseline not in matrix.columns:
        warnings.append("no dense baseline arm: Wilcoxon tests against it not computed")
        return out
    rows = []
    for arm in [c for c in matrix.columns if c != baseline]:
        diff = matrix[arm].to_numpy(float) - matrix[baseline].to_numpy(float)
        if n < 1 or np.allclose(diff, 0):
            rows.append({"arm": arm, "vs": baseline, "n": n, "W": math.nan, "p": 1.0})
            continue
        res = stats.wilcoxon(matrix[arm].to_numpy(float), matrix[baseline].to_numpy(float))
        rows.append({"arm": arm, "vs": baseline, "n": n, "W": float(res.statistic), "p": float(res.pvalue)})
    wil = pd.DataFrame(rows, columns=["arm", "vs", "n", "W", "p"])
    if len(wil):
        wil["p_holm"] = multipletests(wil["p"].to_numpy(), method="holm")[1]
        wil["significant"] = wil["p_holm"] < alpha
        if n < 6:
            warnings.append(f"Wilcoxon over {n} blocks: the smallest two-sided p it can give is {2 / 2 ** n:.3g}; "
                            "use more blocks (tasks, OOD sets, or --blocks sets-seeds) for power")
    out["wilcoxon"] = wil
    return out


def analyse(df: pd.DataFrame, metric: str = tracking.OOD_SCORE, blocks: str | None = None,
            baseline: str | None = None, alpha: float = 0.05) -> Analysis:
    """The whole method (module docstring) on a trials DataFrame (``emoe.analysis.results.load_trials``)."""
    warnings: list[str] = []
    if df.empty:
        raise ValueError("no trial runs to analyse")
    df = df.copy()
    df["task"] = df["task"].fillna("?") if "task" in df else "?"
    counts = df.groupby(["task", "arm"], sort=False)["outcome"].value_counts().unstack(fill_value=0)
    failed = int((df["outcome"] == "failed").sum())
    if failed:
        warnings.append(f"{failed} failed trial(s) left out (counted per arm in the table)")
    chosen = selection.select(df, warnings)
    base = find_baseline(df, baseline)
    if blocks is None:  # GLUE-X's rank over tasks once there are several; else within-task evidence
        blocks = "tasks" if chosen["task"].nunique() > 1 else "sets"
    matrix = block_matrix(chosen, metric, blocks, warnings)
    ranks = rank_blocks(matrix) if not matrix.empty else pd.DataFrame()
    id_matrix = block_matrix(chosen, tracking.ID_SCORE, "tasks", warnings)
    id_ranks = rank_blocks(id_matrix) if not id_matrix.empty else pd.DataFrame()
    tests = friedman_tests(matrix, base, alpha, warnings) if not matrix.empty else {"blocks": 0}

    rows = []
    metric_cols = [tracking.ID_SCORE] + [tracking.ood_score_metric(s) for s in ood_sets(chosen)] \
        + [tracking.OOD_SCORE]
    for (task, arm), group in chosen.groupby(["task", "arm"], sort=False):
        row = {"task": task, "arm": arm, "learning_rate": group["learning_rate"].iloc[0],
               "seeds": ",".join(str(int(s)) for s in sorted(group["seed"]))}
        for col in metric_cols:
            if col in group:
                row[f"{col}_mean"] = group[col].mean()
                row[f"{col}_std"] = group[col].std(ddof=1) if group[col].count() > 1 else 0.0
        # this task's blocks only (the rank over tasks is the paper table's)
        mine = ranks[ranks.index.get_level_values("task") == task] if not ranks.empty else ranks
        row["rank"] = mine[arm].mean() if arm in mine and len(mine) else math.nan
        mine = id_ranks[id_ranks.index.get_level_values("task") == task] if not id_ranks.empty else id_ranks
        row["id_rank"] = mine[arm].mean() if arm in mine and len(mine) else math.nan
        c = counts.loc[(task, arm)] if (task, arm) in counts.index else {}
        row["failed"] = int(c.get("failed", 0))
        row["early_stopped"] = int(c.get("early_stopped", 0))
        rows.append(row)
    for (task, arm) in counts.index:  # arms with no usable trial still show their failures
        if not any(r["task"] == task and r["arm"] == arm for r in rows):
            rows.append({"task": task, "arm": arm, "failed": int(counts.loc[(task, arm)].get("failed", 0)),
                         "early_stopped": int(counts.loc[(task, arm)].get("early_stopped", 0))})
    table = pd.DataFrame(rows)
    method = [
        "trials: completed and early-stopped used, failed counted",
        f"selection: {selection.RULE}",
        f"ranking: seeds averaged first; blocks = {BLOCK_NAMES[blocks]} on {metric}; 1 = best, ties averaged; "
        "ID ranks over tasks separately",
        f"tests: Friedman chi2 + Iman-Davenport F, Nemenyi CD (alpha={alpha}), Wilcoxon signed-rank vs "
        f"{base or 'n/a'} with Holm correction",
    ]
    return Analysis(table, ranks, id_ranks, tests, warnings, method, metric, base, paper_table(table, id_ranks, chosen),
                    blocks)


def paper_table(table: pd.DataFrame, id_ranks: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """The paper's table, one row per arm: the average ID score over tasks, the average OOD score over tasks, and
    the GLUE-X Friedman rank over tasks (each task's OOD sets averaged into its ``ood_score``, seeds averaged, arms
    ranked within each task, 1 = best), beside the ID rank over tasks. Tasks where an arm has no value are left out
    of every arm's averages (the same tasks for all)."""
    id_col, ood_col = f"{tracking.ID_SCORE}_mean", f"{tracking.OOD_SCORE}_mean"
    if table.empty or id_col not in table:
        return pd.DataFrame()
    wide = {c: table.pivot_table(index="task", columns="arm", values=c, sort=False) for c in (id_col, ood_col)
            if c in table}
    arms = list(dict.fromkeys(table["arm"]))
    rows = []
    ood = wide.get(ood_col, pd.DataFrame()).reindex(columns=arms).dropna()
    ood_ranks = rank_blocks(ood) if not ood.empty else pd.DataFrame()
    ids = wide[id_col].reindex(columns=arms).dropna()
    for arm in arms:
        rows.append({"arm": arm, "tasks": len(ids),
                     "id_score": ids[arm].mean() if arm in ids else math.nan,
                     "ood_score": ood[arm].mean() if arm in ood else math.nan,
                     "ood_rank": ood_ranks[arm].mean() if arm in ood_ranks else math.nan,
                     "id_rank": id_ranks[arm].mean() if arm in id_ranks else math.nan})
    return pd.DataFrame(rows)


BLOCK_NAMES = {"tasks": "each task (its OOD sets averaged: GLUE-X's rank)",
               "sets": "each task x OOD set (within-task evidence: the same models score every set)",
               "sets-seeds": "each task x OOD set x seed (pseudo-replication: seeds are not independent blocks)"}
