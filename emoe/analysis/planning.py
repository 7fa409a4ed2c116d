"""Planning a sweep before it runs: the power of its primary analysis, and the blocks or seeds it needs.

The primary analysis is the report's (``emoe.analysis.stats``, module docstring points 3 and 6): each arm against the
dense baseline on paired differences over blocks (with several tasks each task, seeds averaged; with one task each
seed), Wilcoxon signed-rank with zeros split between the signs and an exact p (``stats.wilcoxon_p``), Holm over the
family of ``comparisons`` arms (``stats.holm``) at ``alpha / looks`` (alpha spent equally over the planned looks), an
arm significant when its Holm-adjusted p is below that level. Power here is the probability that this family flags
one arm whose block differences are drawn normal with mean ``effect`` and SD ``sd`` while the other
``comparisons - 1`` arms are null (normal differences, same SD, drawn independently of it: a shared baseline
correlates them, which Holm's error bound does not need), by seeded Monte Carlo of the test itself (two-sided: a
rejection counts whichever way it goes, as the report's "significant" does). Normal differences have no ties and
no zeros, so the zero-splitting rule never comes into play here; scores on a finite test set do tie, which costs a
little power this does not show.

With several tasks and ``seeds`` seeds each, a block's difference (its task's mean over seeds) has SD
``sqrt(between_sd^2 + within_sd^2 / seeds)``: ``within_sd`` the seed-to-seed SD of the paired difference within a
task, ``between_sd`` the SD of the tasks' true differences (``pilot_variances`` estimates both from a pilot sweep).
More seeds shrink only the second term: when the first dominates, only more tasks help.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

from emoe.analysis import selection
from emoe.analysis import stats
from emoe.analysis.selection import DECIMALS
from emoe.tracking import schema as tracking

TESTS = ("wilcoxon", "t")
MAX_BLOCKS = 200  # blocks_needed's default cap: beyond it, None
MAX_SEEDS = 50  # seeds_needed's default cap: beyond it, None
POINT = 0.01  # one point on a 0..1 score: the default difference to detect


def _check(sd: float, blocks: int, comparisons: int, alpha: float, looks: int, test: str) -> None:
    """``ValueError`` (one line) for a design no power can be computed for."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid choices: {', '.join(TESTS)}")
    if not (isinstance(sd, (int, float, np.floating, np.integer)) and sd > 0 and math.isfinite(sd)):
        raise ValueError(f"sd {sd!r}: the SD of a block's paired difference must be a positive number")
    if int(blocks) != blocks or blocks < 1:
        raise ValueError(f"blocks {blocks!r}: a whole number of blocks, 1 or more")
    if int(comparisons) != comparisons or comparisons < 1:
        raise ValueError(f"comparisons {comparisons!r}: a whole number of arms compared with the baseline, 1 or more")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha!r}: a significance level is between 0 and 1 (e.g. 0.05)")
    if int(looks) != looks or looks < 1:
        raise ValueError(f"looks {looks!r}: a whole number of planned looks, 1 or more")


def _check_target(target: float) -> None:
    if not 0 < target < 1:
        raise ValueError(f"target {target!r}: a power is between 0 and 1 (e.g. 0.8)")


def smallest_blocks(comparisons: int = 1, alpha: float = 0.05, looks: int = 1) -> int:
    """The fewest blocks with which the family can flag anything: Holm multiplies the smallest p by
    ``comparisons``, and the smallest p of an exact Wilcoxon test over n blocks is 2 / 2^n
    (``stats.smallest_wilcoxon_p``), so n is the first with ``comparisons * 2 / 2^n < alpha / looks``."""
    n = 1
    while comparisons * stats.smallest_wilcoxon_p(n) >= alpha / looks:
        n += 1
    return n


def _normals(seed: int, blocks: int, draws: int, comparisons: int) -> np.ndarray:
    """Standard normal draws ``[blocks, draws, comparisons]``.
    NOTE: blocks lead, so the first n blocks of a longer draw with the same seed are exactly the draw for n blocks
    (numpy's Generator fills in order): ``blocks_needed`` reuses one draw and its answer is ``power``'s."""
    return np.random.default_rng(seed).standard_normal((blocks, draws, comparisons))


@functools.lru_cache(maxsize=512)
def _signed_rank_p(n: int) -> np.ndarray:
    """The exact two-sided p of every signed-rank sum W+ = 0..n(n+1)/2 over n untied, non-zero differences:
    P(|W+' - n(n+1)/4| >= |W+ - n(n+1)/4|) over the 2^n equally likely sign assignments (``stats.subset_sum_counts``),
    as ``stats.wilcoxon_p`` gives it for continuous differences (no ties and no zeros, almost surely)."""
    counts = stats.subset_sum_counts(np.arange(1, n + 1))
    total = n * (n + 1) // 2
    deviation = np.abs(2 * np.arange(total + 1) - total)  # integers: 4 |W+ - n(n+1)/4|
    mass = np.bincount(deviation, weights=counts)
    tail = np.cumsum(mass[::-1])[::-1]  # tail[c] = count of deviations >= c
    return np.minimum(1.0, tail[deviation] / counts.sum())


def _signed_ranks(delta: float, z: np.ndarray) -> np.ndarray:
    """W+ (the sum of the ranks of |d| over the positive d) of every draw and arm, the first arm shifted by
    ``delta``: ``[draws, comparisons]``. ``z``: ``[blocks, draws, comparisons]`` standard normal."""
    d = np.moveaxis(z, 0, -1).copy()  # d: [draws, comparisons, blocks]
    d[:, 0] += delta
    order = np.argsort(np.abs(d), axis=-1)
    positive = np.take_along_axis(d, order, axis=-1) > 0
    return positive.astype(np.int64) @ np.arange(1, d.shape[-1] + 1)


def _signed_rank_path(delta: float, z: np.ndarray):
    """``(n, W+)`` for n = 1, 2, ... blocks of ``z``, built block by block (W+ as ``_signed_ranks`` gives it for
    ``z[:n]``): a new block's |d| adds 1 to the rank of every larger one before it and ranks above every smaller
    one (continuous draws: no ties). NOTE: one pass over every n costs what a few sorts do, so ``blocks_needed``
    can step through every number of blocks."""
    d = np.moveaxis(z, 0, -1).copy()  # d: [draws, comparisons, blocks]
    d[:, 0] += delta
    size, positive = np.abs(d), d > 0
    w = np.zeros(d.shape[:2], dtype=np.int64)
    for k in range(d.shape[-1]):
        larger = size[..., :k] > size[..., k:k + 1]  # larger: [draws, comparisons, k]
        w += np.sum(larger & positive[..., :k], axis=-1)
        w += positive[..., k] * (1 + k - np.sum(larger, axis=-1))
        yield k + 1, w


def _holm_rate(w_plus: np.ndarray, n: int, level: float) -> float:
    """The share of draws in which the first arm is significant: the exact signed-rank p of every arm from its W+
    (``[draws, comparisons]`` over ``n`` blocks), Holm over the arms (``stats.holm``, row by row), the adjusted p
    below ``level``."""
    p = _signed_rank_p(n)[w_plus]
    m = p.shape[1]
    # stats.holm on every row at once: the i-th smallest times (m - i), running maximum, capped at 1
    rank = np.argsort(p, axis=1, kind="stable")
    steps = np.minimum(1.0, np.maximum.accumulate(np.take_along_axis(p, rank, axis=1) * (m - np.arange(m)), axis=1))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, rank, steps, axis=1)
    return float(np.mean(adjusted[:, 0] < level))


def _t_power(delta: float, blocks: int, level: float) -> float:
    if blocks < 2:
        return 0.0  # no degrees of freedom: no t-test
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().power(effect_size=delta, nobs=blocks, alpha=level, alternative="two-sided"))


def power(effect: float, sd: float, blocks: int, comparisons: int = 1, alpha: float = 0.05, looks: int = 1,
          test: str = "wilcoxon", draws: int = 4000, seed: int = 0) -> float:
    """The probability that the primary family flags an arm whose true mean paired difference from the baseline is
    ``effect`` (its block differences normal with SD ``sd``), the other ``comparisons - 1`` arms null.

    ``test="wilcoxon"``: the report's test (module docstring), by ``draws`` seeded Monte Carlo draws: exact
    signed-rank p of each arm, Holm over the ``comparisons`` arms, significant below ``alpha / looks``. 0 with fewer
    blocks than ``smallest_blocks``. It depends on ``effect / sd`` only (ranks ignore scale).
    ``test="t"``: the paired t-test's power in closed form (statsmodels' ``TTestPower``, two-sided) at the
    Bonferroni level ``alpha / comparisons / looks``: a conservative stand-in for Holm (Holm flags everything
    Bonferroni does, and more), not the report's test; ``draws`` and ``seed`` are unused; 0 with one block.

    Raises:
        ValueError: an unknown test, a non-positive ``sd``, or a design without blocks, comparisons or looks.
    """
    _check(sd, blocks, comparisons, alpha, looks, test)
    level = alpha / looks
    if test == "t":
        return _t_power(effect / sd, int(blocks), level / comparisons)
    if blocks < smallest_blocks(comparisons, alpha, looks):
        return 0.0
    return _holm_rate(_signed_ranks(effect / sd, _normals(seed, int(blocks), draws, int(comparisons))), int(blocks),
                      level)


def blocks_needed(effect: float, sd: float, target: float = 0.8, comparisons: int = 1, alpha: float = 0.05,
                  looks: int = 1, test: str = "wilcoxon", draws: int = 4000, seed: int = 0,
                  cap: int = MAX_BLOCKS) -> int | None:
    """The fewest blocks whose ``power`` reaches ``target``: searched upward from ``smallest_blocks`` (2 for the
    t-test), with the same seeded draws as ``power`` (so ``power(n) >= target > power(n - 1)`` for the n returned,
    with ``power``'s ``draws`` and ``seed``). None when even ``cap`` blocks fall short (checked first: power grows
    with the blocks), or when ``cap`` is below the smallest design that can flag anything."""
    _check(sd, cap, comparisons, alpha, looks, test)
    _check_target(target)
    level = alpha / looks
    if test == "t":
        for n in range(2, int(cap) + 1):
            if _t_power(effect / sd, n, level / comparisons) >= target:
                return n
        return None
    start = smallest_blocks(comparisons, alpha, looks)
    if start > cap:
        return None
    z = _normals(seed, int(cap), draws, int(comparisons))
    if _holm_rate(_signed_ranks(effect / sd, z), int(cap), level) < target:
        return None
    for n, w_plus in _signed_rank_path(effect / sd, z):
        if n >= start and _holm_rate(w_plus, n, level) >= target:
            return n
    return None  # unreachable: the cap itself reaches the target


def block_sd(within_sd: float, between_sd: float, seeds: int) -> float:
    """The SD of a block's difference with tasks as blocks, each the mean over ``seeds`` seeds:
    ``sqrt(between_sd^2 + within_sd^2 / seeds)``."""
    return math.sqrt(between_sd ** 2 + within_sd ** 2 / seeds)


def seeds_needed(effect: float, within_sd: float, between_sd: float, tasks: int, target: float = 0.8,
                 comparisons: int = 1, alpha: float = 0.05, looks: int = 1, test: str = "wilcoxon",
                 draws: int = 4000, seed: int = 0, max_seeds: int = MAX_SEEDS) -> int | None:
    """The fewest seeds per task with which ``tasks`` tasks (blocks = tasks, seeds averaged; SD ``block_sd``)
    reach ``target`` power. With one task the blocks are its seeds (SD ``within_sd``): ``blocks_needed`` capped at
    ``max_seeds``. None when even ``max_seeds`` seeds fall short (checked first): with too few tasks to flag anything
    (``smallest_blocks``), or a between-task SD that dominates (more tasks would help: ``blocks_needed`` with the
    ``block_sd`` of the seeds planned says how many).

    Raises:
        ValueError: a negative SD, a zero within-task SD, or fewer than one task.
    """
    if not within_sd > 0 or not between_sd >= 0:
        raise ValueError(f"within_sd {within_sd!r}, between_sd {between_sd!r}: the within-task SD must be positive "
                         "and the between-task SD 0 or more")
    if int(tasks) != tasks or tasks < 1:
        raise ValueError(f"tasks {tasks!r}: a whole number of tasks, 1 or more")
    if int(max_seeds) != max_seeds or max_seeds < 1:
        raise ValueError(f"max_seeds {max_seeds!r}: a whole number of seeds, 1 or more")
    _check_target(target)
    if tasks == 1:
        if test == "wilcoxon" and smallest_blocks(comparisons, alpha, looks) > max_seeds:
            return None
        return blocks_needed(effect, within_sd, target, comparisons, alpha, looks, test, draws, seed, max_seeds)
    _check(within_sd, tasks, comparisons, alpha, looks, test)
    level = alpha / looks
    if test == "t":
        rate = lambda s: _t_power(effect / block_sd(within_sd, between_sd, s), int(tasks),  # noqa: E731
                                  level / comparisons)
    else:
        if tasks < smallest_blocks(comparisons, alpha, looks):
            return None
        z = _normals(seed, int(tasks), draws, int(comparisons))  # power()'s draws: the same at every seed count
        rate = lambda s: _holm_rate(_signed_ranks(effect / block_sd(within_sd, between_sd, s), z),  # noqa: E731
                                    int(tasks), level)
    if rate(int(max_seeds)) < target:
        return None
    return next((s for s in range(1, int(max_seeds) + 1) if rate(s) >= target), None)


def friedman_power(arm_means, sd: float, blocks: int, alpha: float = 0.05, draws: int = 2000, seed: int = 0) -> float:
    """The power of the Friedman test over ``blocks`` blocks for arms whose true means are ``arm_means``, each cell
    the arm's mean plus normal noise of SD ``sd`` (a block effect shared by its arms would not change the ranks):
    ``draws`` seeded Monte Carlo draws of scipy's ``friedmanchisquare`` (asymptotic chi-square p, significant below
    ``alpha``). NOTE: the report decides the Friedman test by its permutation p (exact for small designs), which is
    not this asymptotic one with few blocks; the Friedman test is exploratory there.

    Raises:
        ValueError: fewer than 3 arms (Friedman needs 3), fewer than 2 blocks, or a non-positive ``sd``.
    """
    means = np.asarray(arm_means, float)
    if means.ndim != 1 or len(means) < 3:
        raise ValueError(f"arm_means {np.ravel(means).tolist()}: the Friedman test needs the means of 3 or more arms")
    _check(sd, blocks, 1, alpha, 1, "wilcoxon")
    if blocks < 2:
        raise ValueError(f"blocks {blocks}: the Friedman test needs 2 or more blocks")
    x = means[:, None, None] + sd * np.random.default_rng(seed).standard_normal((len(means), draws, int(blocks)))
    return float(np.mean(sps.friedmanchisquare(*x, axis=-1).pvalue < alpha))


def expected_width(sd: float, blocks: int, comparisons: int = 1, level: float = 0.95, looks: int = 1) -> float:
    """The expected full width of one of ``comparisons`` simultaneous (Bonferroni) t-intervals for a mean difference
    over ``blocks`` blocks: each at level ``1 - (1 - level) / (comparisons * looks)`` (the report's: simultaneous over
    the family at its alpha spent over the looks), width ``2 t_{n-1} s / sqrt(n)``, and E[s] = c4(n) sd with
    ``c4(n) = sqrt(2 / (n - 1)) Gamma(n / 2) / Gamma((n - 1) / 2)`` for normal differences. inf with one block."""
    if blocks < 2:
        return math.inf
    q = 1 - (1 - level) / (comparisons * looks) / 2
    c4 = math.sqrt(2 / (blocks - 1)) * math.exp(special.gammaln(blocks / 2) - special.gammaln((blocks - 1) / 2))
    return float(2 * sps.t.ppf(q, blocks - 1) * c4 * sd / math.sqrt(blocks))


def width_needed(sd: float, width: float, comparisons: int = 1, level: float = 0.95, looks: int = 1) -> int:
    """The fewest blocks (2 or more) whose simultaneous t-interval has ``expected_width`` at most ``width``: with
    tasks as blocks, the interval for a new task like them (over task means, T - 1 degrees of freedom); with one
    task, seeds as blocks. The expected width falls with the blocks, so the search starts at the normal
    approximation's n and steps to the boundary.

    Raises:
        ValueError: a non-positive ``sd`` or ``width``, or a level outside (0, 1).
    """
    if not sd > 0 or not width > 0:
        raise ValueError(f"sd {sd!r}, width {width!r}: both must be positive (in the metric's units)")
    if not 0 < level < 1:
        raise ValueError(f"level {level!r}: a confidence level is between 0 and 1 (e.g. 0.95)")
    z = sps.norm.ppf(1 - (1 - level) / (comparisons * looks) / 2)
    n = max(2, math.ceil((2 * z * sd / width) ** 2))
    while expected_width(sd, n, comparisons, level, looks) > width:
        n += 1
    while n > 2 and expected_width(sd, n - 1, comparisons, level, looks) <= width:
        n -= 1
    return n


def pilot_variances(trials: pd.DataFrame, baseline: str | None = None, metric: str = "value",
                    higher: bool = True, warnings: list[str] | None = None) -> pd.DataFrame:
    """Per arm, the spread of its paired difference from the baseline in a pilot sweep, for planning the real one.

    The difference is arm - baseline per (task, seed) (positive = better in the metric's direction ``higher``),
    each cell the mean of its rows, rounded to ``DECIMALS`` as the report rounds; a seed without a value on either
    side is left out (with a warning).

    Args:
        trials: the pilot's chosen trials, one row per (task, arm, seed) with ``task, seed, arm`` and ``metric``; or
            its raw trials (with ``outcome``, ``learning_rate`` and ``id_score``), chosen here by
            ``selection.select`` (the report's rule).
        baseline: the baseline arm (None: the dense arm, ``stats.find_baseline``).
        metric: the column of values (e.g. ``ood_score`` for the primary metric).

    Returns:
        One row per arm other than the baseline: ``arm, vs, tasks, seeds`` (mean paired seeds per task),
        ``mean_diff`` (the mean over tasks of each task's mean difference), ``within_sd`` (the pooled within-task SD
        across seeds: ``sqrt(sum_t sum_s (d_ts - d_t)^2 / sum_t (n_t - 1))``; NaN with one seed per task),
        ``task_mean_sd`` (the SD of the task-mean differences, ddof 1, at the pilot's seeds; NaN with one task) and
        ``between_sd`` (the tasks' own SD, seed noise removed by the method of moments:
        ``sqrt(max(0, task_mean_sd^2 - within_sd^2 * mean_t(1 / n_t)))``; NaN when either is).

    Raises:
        ValueError: a missing column, or no baseline arm.
    """
    warnings = [] if warnings is None else warnings
    df = trials
    if {"outcome", "learning_rate", tracking.ID_SCORE} <= set(df.columns):
        df = selection.select(df, warnings)
    lacking = [c for c in ("task", "seed", "arm", metric) if c not in df.columns]
    if lacking:
        raise ValueError(f"pilot trials lack column(s) {', '.join(lacking)}; need task, seed, arm and {metric!r} "
                         "(pass metric= to name the values' column)")
    base = stats.find_baseline(df, baseline)
    if base is None:
        raise ValueError(f"no baseline arm among {', '.join(map(str, dict.fromkeys(df['arm'])))}: pass baseline=")
    sign = 1.0 if higher else -1.0
    cells = df.groupby(["task", "seed", "arm"], sort=False)[metric].mean().unstack("arm")
    columns = ["arm", "vs", "tasks", "seeds", "mean_diff", "within_sd", "task_mean_sd", "between_sd"]
    rows = []
    for arm in [a for a in dict.fromkeys(df["arm"]) if a != base]:
        d = (sign * (cells[arm] - cells[base])).round(DECIMALS)
        if d.isna().any():
            warnings.append(f"{arm} vs {base}: {int(d.isna().sum())} (task, seed) pair(s) without {metric} on one "
                            "side left out")
        d = d.dropna()
        by_task = d.groupby(level="task", sort=False)
        means, sizes = by_task.mean().to_numpy(float), by_task.size().to_numpy()
        df_within = int(np.sum(sizes - 1))
        ss = float(by_task.apply(lambda x: float(np.sum((x - x.mean()) ** 2))).sum()) if len(d) else 0.0
        within = math.sqrt(ss / df_within) if df_within else math.nan
        task_sd = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        between = (math.sqrt(max(0.0, task_sd ** 2 - within ** 2 * float(np.mean(1 / sizes))))
                   if math.isfinite(task_sd) and math.isfinite(within) else math.nan)
        rows.append({"arm": arm, "vs": base, "tasks": len(means), "seeds": float(np.mean(sizes)) if len(sizes) else 0.0,
                     "mean_diff": float(means.mean()) if len(means) else math.nan, "within_sd": within,
                     "task_mean_sd": task_sd, "between_sd": between})
    return pd.DataFrame(rows, columns=columns)


def _points(effect: float) -> str:
    return f"{effect:g} ({effect / POINT:g} point{'' if abs(effect / POINT) == 1 else 's'} on a 0..1 score)"


def plan_lines(arms, tasks: int, seeds: int, primary: stats.Primary | None = None, within_sd: float | None = None,
               between_sd: float | None = None, pilot: pd.DataFrame | None = None, effect: float = POINT,
               target: float = 0.8, draws: int = 4000, seed: int = 0) -> list[str]:
    """What a dry run prints about the power of the grid about to run.

    Args:
        arms: the sweep's arms, the baseline among them.
        tasks, seeds: the grid's tasks and seeds per task.
        primary: the declared primary analysis (its blocks, baseline, alpha and planned looks; None: the default
            ``stats.Primary()``: tasks with several tasks, seeds with one; the dense arm; 0.05; one look).
        within_sd, between_sd: stated SDs of the paired difference (within a task across seeds; between tasks'
            true differences), for every arm without a pilot row; a missing between-task SD is taken as 0 (power
            then an upper bound), said so.
        pilot: ``pilot_variances``' table: each arm's own SDs.
        effect: the difference to detect, in the metric's units (default 1 point = 0.01).
        target: the power the blocks and seeds needed are for.

    Returns:
        A header (the family, its level, its blocks; a line when no number of blocks this small can flag
        anything), then one line per arm: its block SD and where it came from, its power at ``effect`` (the
        report's Wilcoxon-Holm; the paired t-test's beside it), and the blocks, or with several tasks the seeds
        (else the tasks), needed for ``target``.

    Raises:
        ValueError: the baseline is not among ``arms``, or an invalid primary declaration.
    """
    if int(tasks) != tasks or tasks < 1 or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"tasks {tasks!r}, seeds {seeds!r}: whole numbers, 1 or more")
    primary = primary or stats.Primary()
    primary.check()
    arms = list(dict.fromkeys(arms))
    base = primary.baseline or ("dense" if "dense" in arms else None)
    if base not in arms:
        raise ValueError(f"{'no arm named dense' if base is None else f'baseline arm {base!r} not'} among the arms "
                         f"{', '.join(map(str, arms))}: declare the baseline (Primary(baseline=...))")
    blocks = primary.blocks or ("tasks" if tasks > 1 else "seeds")
    n = tasks if blocks == "tasks" else tasks * seeds
    others = [a for a in arms if a != base]
    m, alpha, looks = max(1, len(others)), primary.alpha, primary.planned_looks
    family = alpha / looks
    kw = dict(comparisons=m, alpha=alpha, looks=looks, draws=draws, seed=seed)
    lines = [f"power plan: {len(others)} arm(s) vs {base} over {n} block(s) ({stats.BLOCK_NAMES[blocks]}); "
             f"Wilcoxon signed-rank (exact p), Holm over the {m} at alpha {family:.4g}"
             + (f" ({alpha:g} spent over {looks} planned looks)" if looks > 1 else "")
             + f"; each arm's block differences normal with the SD below, the other arms null ({draws} seeded "
             f"draws of the test); target power {target:.0%} for a difference of {_points(effect)}"]
    least = smallest_blocks(m, alpha, looks)
    if n < least:
        lines.append(f"with {n} block(s) nothing can be significant: the smallest p is "
                     f"{stats.smallest_wilcoxon_p(n):.4g} and Holm multiplies it by {m} (>= {family:.4g}); that "
                     f"needs at least {least} blocks")
    table = pilot.set_index("arm") if pilot is not None and len(pilot) else None
    sds: list[float] = []
    for arm in others:
        within, between, source = within_sd, between_sd, "stated"
        if table is not None and arm in table.index:
            row = table.loc[arm]
            within, between = row["within_sd"], row["between_sd"]
            source = f"pilot: {int(row['tasks'])} task(s), {row['seeds']:.3g} seed(s) each"
        within = None if within is None or not math.isfinite(within) else float(within)
        between = None if between is None or not math.isfinite(between) else float(between)
        if within is None or within <= 0:
            lines.append(f"{arm} vs {base}: no within-task SD of the difference (state one, or give a pilot with 2+ "
                         "seeds per task): power not computed")
            continue
        note = ""
        if between is None:
            between = 0.0
            if tasks > 1:
                note = "; between-task SD unknown, taken as 0: power an upper bound"
        sd = block_sd(within, between, seeds) if blocks == "tasks" else (
            math.sqrt(between ** 2 + within ** 2) if tasks > 1 else within)
        p = power(effect, sd, n, test="wilcoxon", **kw)
        pt = power(effect, sd, n, test="t", **kw)
        need = blocks_needed(effect, sd, target, test="wilcoxon", **kw)
        unit = f"tasks at {seeds} seed(s) each" if blocks == "tasks" else (
            "seeds" if tasks == 1 else "task x seed blocks")
        text = (f"{arm} vs {base}: SD of a block's difference {sd:.4g} ({source}; within {within:.4g}, between "
                f"{between:.4g}{note}); power {p:.0%} (paired t, Bonferroni: {pt:.0%}); {target:.0%} needs "
                + (f"{need} {unit}" if need is not None else f"more than {MAX_BLOCKS} {unit}"))
        if blocks == "tasks" and tasks > 1:
            s = seeds_needed(effect, within, between, tasks, target, test="wilcoxon", **kw)
            why = (f"too few tasks to flag anything (at least {least})" if tasks < least else
                   f"the between-task SD {between:.4g} stays in every block's SD however many seeds")
            text += (f", or {s} seed(s) per task with these {tasks} tasks" if s is not None else
                     f"; no number of seeds up to {MAX_SEEDS} reaches it with these {tasks} tasks ({why})")
        lines.append(text)
        sds.append(sd)
    if sds and len(arms) >= 3 and n >= 2:
        sd = float(np.median(sds))
        means = [effect] + [0.0] * (len(arms) - 1)
        fp = friedman_power(means, sd, n, alpha, draws=2000, seed=seed)
        need = next((b for b in range(max(n, 2), MAX_BLOCKS + 1)
                     if friedman_power(means, sd, b, alpha, draws=1000, seed=seed) >= target), None)
        lines.append(f"Friedman over the {n} block(s) (exploratory): power {fp:.0%} to flag one arm {_points(effect)} "
                     f"from {len(arms) - 1} equal others (cells normal with the median block SD, {sd:.4g}; "
                     f"asymptotic p, alpha {alpha:g}); {target:.0%} needs "
                     + (f"{need} blocks" if need is not None else f"more than {MAX_BLOCKS} blocks"))
    return lines
