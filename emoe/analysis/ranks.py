"""Ranks with intervals, aggregate scores with intervals, performance profiles and budget curves.

Pure functions of a DataFrame (no MLflow). Most take ``values``: one row per fine-tuned model, with the columns
``task, seed, arm, value`` (the chosen learning rate's trial of that arm, task and seed: ``selection.select``), and
``higher`` (True: a higher value is better). Every gap in the data is stated in ``warnings``, never dropped silently:
- a (task, seed, arm) given twice is averaged into one value (a repeat, never a second seed);
- a NaN value is a missing value.
Values are rounded to ``DECIMALS`` before they are ranked or compared (float noise must not break ties).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from emoe.analysis import selection
from emoe.analysis.selection import DECIMALS

VALUE_COLUMNS = ("task", "seed", "arm", "value")
GRID_COLUMNS = ("task", "arm", "seed", "learning_rate", "outcome")
CHUNK = 4_000_000  # bootstrap draws are made in chunks of at most this many gathered values (memory bound)


# --- input ---

def _check_values(values: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """``values`` with one float value per (task, seed, arm), NaN rows dropped; repeats averaged (with a warning)."""
    missing = [c for c in VALUE_COLUMNS if c not in values.columns]
    if missing:
        raise ValueError(f"values lacks column(s) {missing}; needs {', '.join(VALUE_COLUMNS)}")
    df = values[list(VALUE_COLUMNS)].copy()
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    nan = df["value"].isna()
    if nan.any():
        cells = ", ".join(f"{t}/{a}/seed {s}" for t, s, a in df.loc[nan, ["task", "seed", "arm"]].itertuples(False))
        warnings.append(f"{int(nan.sum())} value(s) are NaN, treated as missing: {cells}")
        df = df[~nan]
    keys = ["task", "seed", "arm"]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        n = df[dup].groupby(keys, sort=False).ngroups
        warnings.append(f"{int(dup.sum())} rows repeat {n} (task, seed, arm) cell(s): each cell's repeats averaged "
                        "into one value (not counted as seeds)")
        df = df.groupby(keys, sort=False, as_index=False)["value"].mean()
    if df.empty:
        raise ValueError("values has no value to analyse (no row, or every value NaN)")
    return df


def _check_boot(n_boot: int, level: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: a whole number of bootstrap resamples, 1 or more (e.g. 2000)")
    if not 0 < level < 1:
        raise ValueError(f"level={level:g}: an interval's coverage is between 0 and 1 (e.g. 0.95)")


def _percentiles(draws: np.ndarray, level: float) -> np.ndarray:
    """The percentile interval (arch's and so rliable's ``percentile`` method: numpy's linear interpolation):
    ``[2, ...]``, the lower bounds first."""
    return np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)


def _seed_text(seeds) -> str:
    return str([int(s) if float(s).is_integer() else s for s in sorted(seeds)])


# --- Friedman mean ranks with hierarchical bootstrap intervals ---

def _blocks(df: pd.DataFrame, arms: list, warnings: list[str]) -> tuple[str, list[np.ndarray]]:
    """The blocks and their values: ``("tasks" | "seeds", [seeds x arms] per block)``.

    Several tasks: a block is a task, its arms compared on the seeds every arm has there (a seed some arm lacks is
    left out of the task for every arm, so that each arm's mean is over the same seeds); a task without such a seed
    is dropped. One task: a block is a seed; a seed some arm lacks is dropped."""
    tasks = list(dict.fromkeys(df["task"]))
    unit = "tasks" if len(tasks) > 1 else "seeds"
    blocks = []
    wide = df.pivot(index=["task", "seed"], columns="arm", values="value").reindex(columns=arms)
    for task in tasks:
        table = wide.xs(task, level="task").sort_index()
        lacking = table.isna()
        absent = [a for a in arms if lacking[a].all()]
        if absent:
            warnings.append(f"{task}: no value for arm(s) {absent}; " +
                            ("task dropped" if unit == "tasks" else "nothing to rank"))
            continue
        partial = lacking.any(axis=1)
        if partial.any():
            for seed in table.index[partial]:
                which = [a for a in arms if lacking.loc[seed, a]]
                warnings.append(f"{task}/seed {_seed_text([seed])[1:-1]}: no value for arm(s) {which}; "
                                + ("seed left out of this task for every arm (arms compared on the same seeds)"
                                   if unit == "tasks" else "block dropped"))
            table = table[~partial]
        if unit == "tasks":
            blocks.append(table.to_numpy(float))
        else:
            blocks.extend(table.to_numpy(float)[i:i + 1] for i in range(len(table)))
    return unit, blocks


def _rank_sums(means: np.ndarray, higher: bool) -> np.ndarray:
    """Rank sums over blocks, ``means``: ``[..., blocks, arms]`` -> ``[..., arms]``; 1 = best, ties averaged.
    Sums of half-integers are exact in floating point, so equal sums compare equal."""
    sign = -1.0 if higher else 1.0
    return stats.rankdata(sign * np.round(means, DECIMALS), method="average", axis=-1).sum(axis=-2)


def rank_intervals(values: pd.DataFrame, higher: bool = True, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0, warnings: list[str] | None = None) -> pd.DataFrame:
    """Friedman mean ranks with hierarchical bootstrap percentile intervals and the probability of ranking first.

    Mean rank: with several tasks, each arm's value in a task is its mean over the task's seeds, ranked within the
    task (1 = best, ties share the average rank; means rounded to ``DECIMALS``), the ranks averaged over tasks
    (GLUE-X's rank). With one task, the blocks are its seeds: each seed's values ranked, averaged over seeds.

    Interval: a two-level bootstrap (``n_boot`` resamples, ``numpy.random.default_rng(seed)``): tasks drawn with
    replacement, then within each drawn task its seeds drawn with replacement (as many as it has); a drawn seed
    brings every arm's value on it (the arms stay paired); the seed means are ranked and averaged as above. With one
    task, seeds are drawn with replacement. The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    percentiles of the resampled mean ranks. It estimates the mean rank over a population of tasks like these
    (with this many seeds each), not over these tasks only.

    ``p_first``: the fraction of resamples in which the arm has the best (lowest) mean rank, a tie for first
    counting 1/m to each of the m tied arms (so the column sums to 1).

    Missing values (``warnings`` gets a line for each): with several tasks, a seed some arm lacks is left out of its
    task for every arm, and a task with an arm lacking every seed is dropped; with one task, a seed some arm lacks
    is dropped.

    Returns:
        One row per arm, in the order arms first appear in ``values``: ``arm, mean_rank, low, high, p_first,
        blocks`` (the number of tasks, or of seeds with one task, used). ``attrs``: ``blocks_are`` (``"tasks"`` or
        ``"seeds"``), ``warnings`` (this call's lines).
    """
    warnings = [] if warnings is None else warnings
    start = len(warnings)
    _check_boot(n_boot, level)
    df = _check_values(values, warnings)
    arms = list(dict.fromkeys(df["arm"]))
    if len(arms) < 2:
        raise ValueError(f"ranks need 2 or more arms; values has {len(arms)} ({arms})")
    unit, blocks = _blocks(df, arms, warnings)
    if not blocks:
        raise ValueError(f"no {unit[:-1]} has a value for every arm {arms}: nothing to rank")
    n_blocks, n_arms = len(blocks), len(arms)
    counts = np.array([len(b) for b in blocks])  # seeds per block
    width = int(counts.max())
    cube = np.zeros((n_blocks, width, n_arms))  # cube: [blocks, seeds, arms], zero padded past each block's seeds
    for i, b in enumerate(blocks):
        cube[i, :len(b)] = b
    means = cube.sum(axis=1) / counts[:, None]  # means: [blocks, arms]
    point = _rank_sums(means, higher) / n_blocks

    rng = np.random.default_rng(seed)
    sums = np.empty((n_boot, n_arms))
    step = max(1, CHUNK // (n_blocks * width * n_arms))
    for lo in range(0, n_boot, step):
        b = min(step, n_boot - lo)
        drawn = rng.integers(0, n_blocks, size=(b, n_blocks))  # drawn: [resamples, blocks] (block indices)
        n = counts[drawn]
        picks = rng.integers(0, n[..., None], size=(b, n_blocks, width))  # a seed of the drawn block, per slot
        used = np.arange(width) < n[..., None]  # only the first n slots: as many seeds as the block has
        values_ = cube[drawn[..., None], picks] * used[..., None]  # [resamples, blocks, seeds, arms]
        sums[lo:lo + b] = _rank_sums(values_.sum(axis=2) / n[..., None], higher)
    boot = sums / n_blocks
    low, high = _percentiles(boot, level)
    first = sums == sums.min(axis=1, keepdims=True)
    p_first = (first / first.sum(axis=1, keepdims=True)).mean(axis=0)
    out = pd.DataFrame({"arm": arms, "mean_rank": point, "low": low, "high": high, "p_first": p_first,
                        "blocks": n_blocks})
    out.attrs.update(blocks_are=unit, warnings=list(warnings[start:]))
    return out


# --- IQM and probability of improvement (rliable) ---

def _runs_by_tasks(df: pd.DataFrame, warnings: list[str]) -> tuple[list, dict[str, np.ndarray]]:
    """rliable's input: arm -> ``[runs, tasks]`` (seeds as runs), on the tasks every arm has; each arm keeps the
    seeds it has on every one of those tasks (rliable needs a full matrix per arm; arms may differ in seeds)."""
    arms = list(dict.fromkeys(df["arm"]))
    tasks = list(dict.fromkeys(df["task"]))
    have = df.groupby("task", sort=False)["arm"].agg(set)
    kept = [t for t in tasks if have[t] >= set(arms)]
    for t in tasks:
        if t not in kept:
            warnings.append(f"{t}: no value for arm(s) {[a for a in arms if a not in have[t]]}; task dropped from "
                            "IQM and probability of improvement (rliable needs the same tasks for every arm)")
    if not kept:
        raise ValueError(f"no task has a value for every arm {arms}")
    scores = {}
    for arm in arms:
        table = df[(df["arm"] == arm) & df["task"].isin(kept)].pivot(index="seed", columns="task", values="value")
        table = table.reindex(columns=kept).sort_index()
        partial = table.isna().any(axis=1)
        if partial.any():
            lost = {s: [t for t in kept if np.isnan(table.loc[s, t])] for s in table.index[partial]}
            warnings.append(f"{arm}: seed(s) {_seed_text(lost)} lack a value on task(s) "
                            f"{sorted({t for ts in lost.values() for t in ts}, key=kept.index)}; dropped on every "
                            "task (rliable needs the same seeds on every task)")
            table = table[~partial]
        if table.empty:
            warnings.append(f"{arm}: no seed has a value on every task; arm left out")
            continue
        scores[arm] = table.to_numpy(float)  # [runs, tasks]
    return kept, scores


def _resample(scores: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """rliable's stratified bootstrap (``StratifiedBootstrap``, ``task_bootstrap=False``): every entry of the
    ``[runs, tasks]`` matrix redrawn from the runs of its own task, with replacement. ``[n_boot, runs, tasks]``."""
    runs, tasks = scores.shape
    return scores[rng.integers(0, runs, size=(n_boot, runs, tasks)), np.arange(tasks)]


def _improvement_probability(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rliable's ``probability_of_improvement`` over a leading batch axis: per task, P(X > Y) + P(X = Y) / 2 over
    every pair of runs (the Mann-Whitney U over runs_x * runs_y), averaged over tasks. ``x``: ``[..., runs_x,
    tasks]``, ``y``: ``[..., runs_y, tasks]``."""
    x, y = x[..., :, None, :], y[..., None, :, :]
    return ((x > y).mean(axis=(-3, -2)) + 0.5 * (x == y).mean(axis=(-3, -2))).mean(axis=-1)


def improvement(values: pd.DataFrame, higher: bool = True, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                baseline: str | None = None, warnings: list[str] | None = None) -> pd.DataFrame:
    """Interquartile mean and probability of improvement over ``baseline`` (Agarwal et al. 2021, rliable).

    The scores of an arm are a ``[runs, tasks]`` matrix, its seeds as runs, on the tasks every arm has (a task
    some arm lacks is dropped; an arm's seed missing on one task is dropped on every task: ``warnings`` says
    which). With ``higher`` False the values are negated first (rliable assumes higher is better) and the IQM
    negated back, so ``p_improve`` is always the probability that the arm is better.

    - ``iqm``: ``rliable.metrics.aggregate_iqm``, the 25% trimmed mean (scipy's ``trim_mean``: int(0.25 n) values
      cut at each end) of all the arm's runs on all tasks pooled.
    - ``p_improve``: ``rliable.metrics.probability_of_improvement(arm, baseline)``: per task, P(X > Y) +
      P(X = Y) / 2 over every pair of an arm's run and a baseline's run, averaged over tasks. NaN for the baseline
      itself, and for every arm without ``baseline``.
    - Intervals: rliable's stratified bootstrap (``n_boot`` resamples, percentile method: what
      ``rliable.library.get_interval_estimates`` does): each task's runs redrawn with replacement within the task,
      tasks fixed (rliable's default ``task_bootstrap=False``: the uncertainty of new seeds on these tasks); the
      arm and the baseline redrawn independently (``StratifiedIndependentBootstrap``).
      NOTE: the resampling is written here in numpy with ``numpy.random.default_rng(seed)`` rather than called
      through ``rliable.library``, which cannot run with pandas >= 3: rliable 1.2 pins arch < 8, whose import fails
      under pandas 3, and arch 8 rejects the ``random_state`` rliable passes it. rliable also draws from numpy's
      global random state, so its ``random_state`` argument does not make its intervals reproducible. The point
      estimates are rliable's own functions; the statistic of each resample is the same formula, batched.

    Returns:
        One row per arm (in the order arms first appear in ``values``): ``arm, iqm, iqm_low, iqm_high, p_improve,
        p_low, p_high``. ``attrs``: ``tasks`` (those used), ``runs`` (arm -> seeds used), ``warnings``.
    """
    from rliable import metrics  # only its metrics: rliable.library imports arch (see the NOTE above)

    warnings = [] if warnings is None else warnings
    start = len(warnings)
    _check_boot(n_boot, level)
    df = _check_values(values, warnings)
    arms = list(dict.fromkeys(df["arm"]))
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} not found; arms: {', '.join(map(str, arms))}")
    sign = 1.0 if higher else -1.0
    tasks, scores = _runs_by_tasks(df, warnings)
    scores = {arm: sign * s for arm, s in scores.items()}  # higher = better from here on
    if baseline is not None and baseline not in scores:
        raise ValueError(f"baseline arm {baseline!r} has no seed with a value on every task {tasks}")
    rng = np.random.default_rng(seed)
    rows = []
    for arm, x in scores.items():
        iqm = float(metrics.aggregate_iqm(x))
        boot = stats.trim_mean(_resample(x, n_boot, rng).reshape(n_boot, -1), 0.25, axis=1)
        iqm_low, iqm_high = sorted(sign * _percentiles(boot, level))  # negated back: the bounds swap
        p = p_low = p_high = math.nan
        if baseline is not None and arm != baseline:
            y = scores[baseline]
            p = float(metrics.probability_of_improvement(x, y))
            p_low, p_high = _percentiles(_improvement_probability(_resample(x, n_boot, rng),
                                                                  _resample(y, n_boot, rng)), level)
        rows.append({"arm": arm, "iqm": sign * iqm, "iqm_low": iqm_low, "iqm_high": iqm_high, "p_improve": p,
                     "p_low": p_low, "p_high": p_high})
    out = pd.DataFrame(rows, columns=["arm", "iqm", "iqm_low", "iqm_high", "p_improve", "p_low", "p_high"])
    out.attrs.update(tasks=tasks, runs={a: s.shape[0] for a, s in scores.items()}, warnings=list(warnings[start:]))
    return out


# --- performance profile ---

def performance_profile(values: pd.DataFrame, higher: bool = True, taus=None,
                        warnings: list[str] | None = None) -> pd.DataFrame:
    """The performance profile (Dolan and Moré 2002) on the gap to the best arm, across tasks.

    Per task, each arm's mean over its seeds; its gap is ``best - mean`` (``mean - best`` when ``higher`` is
    False), >= 0, rounded to ``DECIMALS``; ``rho_arm(tau)`` is the fraction of tasks whose gap is <= ``tau``.
    An absolute gap, not Dolan and Moré's ratio (a ratio of scores such as accuracy depends on the scale's zero).
    A task some arm lacks is dropped (``warnings`` says which).

    Args:
        taus: the thresholds; default 50 evenly spaced from 0 to the largest gap (just 0 when every gap is 0).

    Returns:
        Long format, ``arm, tau, fraction``: arms in the order they first appear in ``values``, taus ascending.
    """
    warnings = [] if warnings is None else warnings
    df = _check_values(values, warnings)
    arms = list(dict.fromkeys(df["arm"]))
    means = df.groupby(["task", "arm"], sort=False)["value"].mean().unstack("arm").reindex(columns=arms)
    lacking = means.isna().any(axis=1)
    for task in means.index[lacking]:
        warnings.append(f"{task}: no value for arm(s) {[a for a in arms if np.isnan(means.loc[task, a])]}; task "
                        "dropped from the performance profile")
    means = means[~lacking].to_numpy(float)  # [tasks, arms]
    if not len(means):
        raise ValueError(f"no task has a value for every arm {arms}")
    gaps = np.round(means.max(axis=1, keepdims=True) - means if higher else means - means.min(axis=1, keepdims=True),
                    DECIMALS)
    if taus is None:
        top = float(gaps.max())
        taus = np.linspace(0.0, top, 50) if top > 0 else np.zeros(1)
    taus = np.sort(np.asarray(taus, float).ravel())
    if np.isnan(taus).any() or (taus < 0).any():
        raise ValueError(f"taus must be >= 0 (a gap to the best is never negative); got {taus.min()}")
    fraction = (gaps[None, :, :] <= taus[:, None, None]).mean(axis=1)  # fraction: [taus, arms]
    return pd.DataFrame({"arm": np.repeat(np.array(arms, dtype=object), len(taus)),
                         "tau": np.tile(taus, len(arms)), "fraction": fraction.T.ravel()})


# --- expected validation performance (Dodge et al. 2019) ---

def _max_probabilities(scores, n) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Sorted scores ``v`` and ``P[k, i]`` = P(the max of n[k] draws with replacement is the i-th smallest) =
    (i/N)^n - ((i-1)/N)^n, with the shape of ``n``."""
    v = np.sort(np.asarray(scores, float).ravel())
    if not len(v):
        raise ValueError("scores is empty: the expected maximum needs at least one observed score")
    if np.isnan(v).any():
        raise ValueError(f"scores has {int(np.isnan(v).sum())} NaN value(s): drop them first")
    n_arr = np.asarray(n)
    if not np.issubdtype(n_arr.dtype, np.number) or np.any(n_arr != np.round(n_arr)) or np.any(n_arr < 1):
        raise ValueError(f"n must be whole numbers of configurations, 1 or more; got {n!r}")
    shape, ns = n_arr.shape, n_arr.astype(float).ravel()
    i = np.arange(1, len(v) + 1) / len(v)
    p = i[None, :] ** ns[:, None] - (i - 1 / len(v))[None, :] ** ns[:, None]
    return v, p, shape


def expected_max(scores, n) -> np.ndarray:
    """Dodge et al. (2019, "Show Your Work"): the expected best score after ``n`` configurations drawn with
    replacement from the observed ``scores``: with ``v_(1) <= ... <= v_(N)`` sorted,
    ``E[max_n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n)``. n = 1 gives the mean; as n grows, the max.

    Args:
        scores: the observed scores (any shape, flattened), no NaN; higher is better.
        n: an int or array of ints >= 1.

    Returns:
        An array of the shape of ``n`` (0-d for an int).
    """
    v, p, shape = _max_probabilities(scores, n)
    return (p @ v).reshape(shape)


def expected_max_std(scores, n) -> np.ndarray:
    """The standard deviation of the max of ``n`` draws (Dodge et al. 2019): ``sqrt(sum_i p_i (v_(i) - E)^2)``
    with the probabilities ``p_i`` and expectation ``E`` of ``expected_max``. The shape of ``n``."""
    v, p, shape = _max_probabilities(scores, n)
    mean = p @ v
    return np.sqrt(np.maximum((p * (v[None, :] - mean[:, None]) ** 2).sum(axis=1), 0.0)).reshape(shape)


def budget_curves(trials: pd.DataFrame, metric: str = "id_score", max_n: int | None = None,
                  higher: bool | None = None, warnings: list[str] | None = None) -> pd.DataFrame:
    """Expected best ``metric`` per (task, arm) as a function of the number of configurations tried (Dodge et al.
    2019): every trial of the arm on the task (each learning rate and seed) is one configuration.

    Trials without ``metric`` are left out (so are failed ones, where ``outcome`` is given: only
    ``selection.USED_OUTCOMES`` count; ``warnings`` says how many), and repeats of one (task, arm, seed, learning
    rate) cell are averaged into one (``selection.collapse_duplicates``) where those columns are given. A
    lower-is-better metric (``higher`` False, or the schema's direction of ``metric`` when None) gives the expected
    minimum, in the same column.

    Args:
        max_n: the largest n; default the number of the arm's trials on the task.

    Returns:
        ``task, arm, n, expected_max, std`` for n = 1..max_n, (task, arm) in the order they first appear.
    """
    from emoe.analysis.stats import higher_is_better

    warnings = [] if warnings is None else warnings
    missing = [c for c in ("task", "arm", metric) if c not in trials.columns]
    if missing:
        raise ValueError(f"trials lacks column(s) {missing}; needs task, arm and the metric {metric!r}")
    if max_n is not None and (int(max_n) != max_n or max_n < 1):
        raise ValueError(f"max_n={max_n}: a whole number of configurations, 1 or more")
    sign = 1.0 if higher_is_better(metric, higher) else -1.0
    df = trials
    if set(GRID_COLUMNS) <= set(df.columns):
        df = selection.collapse_duplicates(df, warnings)
    if "outcome" in df.columns:
        unused = ~df["outcome"].isin(selection.USED_OUTCOMES)
        if unused.any():
            warnings.append(f"{int(unused.sum())} trial(s) neither completed nor early-stopped (failed) left out of "
                            "the budget curves")
        df = df[~unused]
    nan = df[metric].isna()
    if nan.any():
        warnings.append(f"{int(nan.sum())} trial(s) without {metric} left out of the budget curves")
        df = df[~nan]
    rows = []
    for (task, arm), group in df.groupby(["task", "arm"], sort=False):
        scores = sign * group[metric].to_numpy(float)
        n = np.arange(1, (max_n or len(scores)) + 1)
        rows.append(pd.DataFrame({"task": task, "arm": arm, "n": n, "expected_max": sign * expected_max(scores, n),
                                  "std": expected_max_std(scores, n)}))
    columns = ["task", "arm", "n", "expected_max", "std"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


# --- the grid each arm ran ---

def _fmt(v) -> str:
    return f"{int(v)}" if isinstance(v, (int, np.integer)) or float(v).is_integer() else f"{float(v):g}"


def _set_text(values) -> str:
    return "{" + ", ".join(map(_fmt, sorted(values))) + "}"


def _cell_text(cells) -> str:
    return "{" + ", ".join("(" + ", ".join(map(_fmt, c)) + ")" for c in sorted(cells)) + "}"


def _differences(sets: dict, label: str, text) -> dict:
    """Per arm, its lines for one axis: a value at least half the arms have is ``missing`` from the others; a value
    fewer than half have is ``extra`` where it is."""
    k = len(sets)
    union = set().union(*sets.values())
    held = {v: sum(v in s for s in sets.values()) for v in union}
    out = {}
    for arm, own in sets.items():
        lacks = {v for v in union - own if 2 * held[v] >= k}
        extra = {v for v in own if 2 * held[v] < k}
        lines = []
        if lacks:
            lines.append(f"{label} {text(lacks)} missing (other arms have them)")
        if extra:
            lines.append(f"{label} {text(extra)} extra (other arms lack them)")
        if lines:
            out[arm] = lines
    return out


def grid_check(trials: pd.DataFrame) -> list[str]:
    """Whether every arm of each task ran the same grid of learning rates, seeds and (where given) epochs.

    A cell counts when it has a trial of any outcome (failed included). Per task, each axis' set of values is
    compared across arms: a value at least half the task's arms have is reported ``missing`` for an arm without
    it, a value fewer than half have is reported ``extra`` for an arm with it. Where the axes agree, the
    (learning rate, seed[, epochs]) cells are compared the same way. An arm that some task has and another task
    lacks entirely is reported for that task.

    Returns:
        One line per difference (``"sst2/gmoe: learning rates {3e-05} missing (other arms have them)"``), or, with
        none, ``"every arm had the same grid: N learning rate(s) x M seed(s), E epoch(s)"`` (one such line per task,
        prefixed by it, when the tasks' grids differ).
    """
    missing = [c for c in GRID_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"trials lacks column(s) {missing}; needs {', '.join(GRID_COLUMNS)} (and optionally epochs)")
    axes = [("learning rates", "learning_rate"), ("seeds", "seed")]
    if "epochs" in trials.columns and trials["epochs"].notna().any():
        axes.append(("epochs", "epochs"))
    keys = [column for _, column in axes]
    df = trials.dropna(subset=keys)
    all_arms = list(dict.fromkeys(df["arm"]))
    lines, grids = [], {}
    for task, group in df.groupby("task", sort=False):
        arms = list(dict.fromkeys(group["arm"]))
        lines += [f"{task}/{arm}: no trials (other tasks have this arm)" for arm in all_arms if arm not in arms]
        by_arm = {arm: group[group["arm"] == arm] for arm in arms}
        found = {}
        for label, column in axes:
            for arm, text in _differences({a: set(g[column]) for a, g in by_arm.items()}, label, _set_text).items():
                found.setdefault(arm, []).extend(text)
        if not found:
            cells = {a: set(map(tuple, g[keys].itertuples(index=False))) for a, g in by_arm.items()}
            found = _differences(cells, f"cells ({', '.join(c.replace('_', ' ') for c in keys)})", _cell_text)
        lines += [f"{task}/{arm}: {line}" for arm in arms for line in found.get(arm, [])]
        sets = tuple(tuple(sorted(set(group[c]))) for c in keys)
        grids[task] = (sets, len(set(map(tuple, group[keys].itertuples(index=False)))))
    if lines:
        return lines

    def describe(grid) -> str:
        sets, cells = grid
        text = f"{len(sets[0])} learning rate(s) x {len(sets[1])} seed(s)"
        text += f", {len(sets[2])} epoch(s)" if len(sets) > 2 else ""
        full = math.prod(len(s) for s in sets)
        return text + (f" ({cells} of the {full} cells run)" if cells < full else "")

    if len(set(grids.values())) <= 1:
        return [f"every arm had the same grid: {describe(next(iter(grids.values())))}"] if grids else \
            ["no trials: no grid to compare"]
    return [f"{task}: every arm had the same grid: {describe(grid)}" for task, grid in grids.items()]


# --- figures: each returns a matplotlib Figure ---

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(arms, colours: dict | None) -> dict:
    from emoe.analysis.report import arm_colours

    base = arm_colours(arms)
    return {arm: (colours or {}).get(arm, base[arm]) for arm in arms}


def rank_interval_figure(ranks_df: pd.DataFrame, colours: dict | None = None):
    """Each arm's mean rank with its interval (``rank_intervals``), best at the top, ``P(first)`` beside it."""
    plt = _pyplot()
    arms = list(ranks_df["arm"])
    colours = _colours(arms, colours)
    t = ranks_df.sort_values("mean_rank", kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(t) + 1.4), dpi=150, layout="constrained")
    y = np.arange(len(t))[::-1]
    for yi, r in zip(y, t.itertuples(index=False)):
        ax.errorbar(r.mean_rank, yi, xerr=[[r.mean_rank - r.low], [r.high - r.mean_rank]], fmt="o",
                    color=colours[r.arm], capsize=3, lw=1.5)
        ax.annotate(f"P(first) {r.p_first:.2f}", (r.high, yi), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(y, [str(a) for a in t["arm"]], fontsize=8)
    ax.set_xlim(0.8, len(arms) + 0.9)  # room for the annotation right of the worst possible rank
    ax.set_xlabel("mean rank (1 = best)", fontsize=9)
    unit = ranks_df.attrs.get("blocks_are", "blocks")
    blocks = int(t["blocks"].iloc[0]) if len(t) else 0
    ax.set_title(f"Mean rank over {blocks} {unit}, with bootstrap intervals", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def budget_figure(curves_df: pd.DataFrame, colours: dict | None = None):
    """Per task, each arm's expected best score against the number of configurations (``budget_curves``), a band
    of ± one std of the max."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    tasks = list(dict.fromkeys(curves_df["task"]))
    arms = list(dict.fromkeys(curves_df["arm"]))
    colours = _colours(arms, colours)
    cols = max(1, min(3, len(tasks)))
    rows = max(1, math.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.5, 3.2 * rows), dpi=150, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        for arm, g in curves_df[curves_df["task"] == task].groupby("arm", sort=False):
            n, m, s = g["n"].to_numpy(), g["expected_max"].to_numpy(float), g["std"].to_numpy(float)
            ax.plot(n, m, color=colours[arm], lw=1.5, label=str(arm))
            ax.fill_between(n, m - s, m + s, color=colours[arm], alpha=0.15, lw=0)
        ax.set_title(str(task), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # configurations are counted
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.supxlabel("configurations tried (n)", fontsize=9)
    fig.supylabel("expected best score (± std)", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="arm", title_fontsize=8)
    return fig


def profile_figure(profile_df: pd.DataFrame, colours: dict | None = None):
    """Each arm's performance profile (``performance_profile``): the fraction of tasks within tau of the best."""
    plt = _pyplot()
    arms = list(dict.fromkeys(profile_df["arm"]))
    colours = _colours(arms, colours)
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=150, layout="constrained")
    for arm, g in profile_df.groupby("arm", sort=False):
        ax.step(g["tau"].to_numpy(float), g["fraction"].to_numpy(float), where="post", color=colours[arm], lw=1.5,
                label=str(arm))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: gap to the best arm of the task", fontsize=9)
    ax.set_ylabel("fraction of tasks within tau", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, title="arm", title_fontsize=8)
    return fig
