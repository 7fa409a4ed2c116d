"""Statistics over a DataFrame of trials: model selection on ID, seed means, ranks per block, Friedman and friends.

Pure functions of a DataFrame (no MLflow). The method, stated in every report:
1. Trials: completed and early-stopped ones are used; failed ones count against their learning rate (a rate where
   any seed failed cannot be chosen while another rate has no failure). Duplicate cells (the same task, arm, seed and
   learning rate twice) are averaged into one, never counted as seeds.
2. Model selection uses ID only (``emoe.analysis.selection``); OOD metrics never select anything. The ID score of
   the chosen rate is the selection criterion itself: the report states how much choosing inflates it (each seed
   scored at the rate chosen on the other seeds).
3. Blocks are independent replicates, never a task's OOD sets (the same models score every set): with several tasks
   each task (seeds averaged; GLUE-X's rank), with one task each seed (``seeds``; its OOD sets averaged into its
   ``ood_score``). Values are rounded to 10 decimals (float noise must not break ties), then ranked within each
   block, 1 = best, ties averaged.
4. A failed cell (no value because every trial of it failed) ranks last in its block and is never dropped; the arm
   is reported as failed on that task and left out of every average and interval. A cell missing for another reason
   (never run, NaN metric) drops its block, with a warning; a NaN value of one seed drops that seed only.
5. Friedman chi-square, tie-corrected (scipy's), with its asymptotic and exact permutation p and the Iman-Davenport
   F; Wilcoxon signed-rank between every pair of arms (Holm over the pairs: no third arm moves a pair, unlike
   Nemenyi's mean ranks, also shown) and against the dense baseline (zeros split between the signs, exact p, Holm),
   with the rank-biserial correlation under the same zero rule and the smallest difference each test could detect at
   80% power; t-intervals for the mean difference, each for a named estimand (these tasks: pooled within-task seed
   variance; a new task like them: over task means, T - 1 degrees of freedom), none where it cannot be estimated; a
   Bayesian signed-rank test (baycomp) from 5 blocks.
6. One primary analysis (metric, blocks, baseline, alpha), declared when the sweep is launched: its family (every
   arm against the baseline) is Holm-corrected, its intervals simultaneous (Bonferroni), its alpha spent over the
   planned looks; every other line of the report is exploratory.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

from emoe.analysis import selection
from emoe.analysis.selection import DECIMALS, collapse_duplicates  # one rounding, one rule
from emoe.tracking import schema as tracking

BLOCKINGS = ("tasks", "seeds")
BLOCK_NAMES = {"tasks": "each task (seeds averaged; a task's OOD sets averaged into its ood_score: GLUE-X's rank)",
               "seeds": "each task x seed (one fine-tuned model per arm; its OOD sets averaged into its ood_score)"}
# Refused blockings: a task's OOD sets are scored by the same models, so they are not independent blocks (with one
# task and six identical arms, sets as blocks rejected 58-99% of the time at alpha 0.05).
REFUSED_BLOCKINGS = {"sets": "a task's OOD sets are scored by the same models: not independent blocks",
                     "sets-seeds": "a task's OOD sets are scored by the same models: not independent blocks"}
BAYES_MIN_BLOCKS = 5  # below this, baycomp's signed-rank posterior is mostly its prior pseudo-observation
EXACT_LIMIT = 2_000_000  # at most this many rank-sum states for the exact Friedman p; else Monte Carlo
PERMUTATIONS = 50_000  # Monte Carlo permutations (seeded) when exact enumeration is too large


@dataclasses.dataclass
class Primary:
    """The one primary analysis of a sweep, declared when it is launched (``emoe.sweep``'s ``--primary-*`` flags)
    and stored with it: the report leads with it and labels every other analysis exploratory. Its family (each arm
    against the baseline) is Holm-corrected at ``alpha / planned_looks`` at each of up to ``planned_looks`` looks
    at the results (alpha spent equally over the looks: by the union bound, the chance of any false positive over
    every look stays under ``alpha`` whenever the sweep is stopped); a later look is exploratory."""

    metric: str = tracking.OOD_SCORE
    blocks: str | None = None  # None: tasks with several tasks, seeds with one
    baseline: str | None = None  # None: the arm named dense (or the one pre-trained dense arm)
    alpha: float = 0.05
    planned_looks: int = 1

    def check(self, higher: bool | None = None, flags: bool = False) -> None:
        """``ValueError`` (one line, naming the valid choices) for a declaration no report could follow; ``flags``:
        name the sweep's flags (``--primary-blocks``) rather than the analysis' words."""
        try:
            higher_is_better(self.metric, higher)  # a direction must be known
        except ValueError:
            if not flags:
                raise
            raise ValueError(f"--primary-metric {self.metric!r}: not a metric whose direction is known; valid: "
                             f"{tracking.ID_SCORE}, id.<metric>, {tracking.OOD_SCORE}, {tracking.OOD_SCORE}.<set>, "
                             f"ood.<set>.<metric>, {tracking.TRAIN_LOSS}") from None
        name = (lambda f: f"--{f.replace('_', '-')}") if flags else (lambda f: f.replace("_", " "))  # noqa: E731
        if self.blocks is not None and self.blocks not in BLOCKINGS:
            why = f" ({REFUSED_BLOCKINGS[self.blocks]})" if self.blocks in REFUSED_BLOCKINGS else ""
            raise ValueError(f"{'--primary-blocks' if flags else 'unknown blocks'} {self.blocks!r}{why}; valid "
                             f"choices: {', '.join(BLOCKINGS)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"{name('alpha')} {self.alpha:g}: a significance level is between 0 and 1 (e.g. 0.05)")
        if int(self.planned_looks) != self.planned_looks or self.planned_looks < 1:
            raise ValueError(f"{name('planned_looks')} {self.planned_looks}: a whole number of looks, 1 or more")


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
    blocks: str = "tasks"
    higher_is_better: bool = True
    comparisons: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # per arm vs the baseline
    chosen: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # the selected trials (one row each)
    status: dict = dataclasses.field(default_factory=dict)  # primary or exploratory, why, looks, family alpha
    selection: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # per (task, arm): ID inflation
    arms: list = dataclasses.field(default_factory=list)  # the sweep's declared arm order, then any other arm seen
    missing: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # (task, arm) cells without a value: why
    rule: str = "oracle"  # the selection rule (emoe.analysis.selection.RULES) the tables and tests use
    rules: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # both rules side by side, and their gap
    trials: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # every trial analysed (repeats averaged)
    # beyond the tests (emoe.analysis.ranks): rank intervals and P(first), IQM and P(improvement) with intervals, the
    # performance profile, Dodge's budget curves, the grid check; and the sources of variance (emoe.analysis.variance)
    beyond: dict = dataclasses.field(default_factory=dict)


def higher_is_better(metric: str, higher: bool | None = None) -> bool:
    """The metric's direction: ``higher`` when given, else the one the schema declares with the metric
    (``emoe.tracking.schema.DIRECTIONS``); ``ValueError`` for a metric it does not declare."""
    if higher is not None:
        return higher
    way = tracking.direction(metric)
    if way is not None:
        return way == "max"
    raise ValueError(f"the direction of metric {metric!r} is unknown: pass --higher-is-better or "
                     "--lower-is-better")


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


def failed_cells(df: pd.DataFrame, chosen: pd.DataFrame, blocks: str) -> set[tuple]:
    """The cells (``(task, arm)``, or ``(task, seed, arm)`` with ``seeds`` blocks) without a value because their
    trials failed: a failed trial and no used one for the cell (at the chosen learning rate, where the arm has one)."""
    keys = ["task"] + (["seed"] if blocks == "seeds" else [])
    failed = df[df["outcome"] == "failed"]
    if failed.empty:
        return set()
    rate = {(t, a): lr for (t, a), lr in chosen.groupby(["task", "arm"], sort=False)["learning_rate"].first().items()}
    have = set(map(tuple, chosen[keys + ["arm"]].itertuples(index=False)))
    out = set()
    for row in failed.itertuples(index=False):
        row = row._asdict()
        lr = rate.get((row["task"], row["arm"]))
        if lr is not None and row["learning_rate"] != lr and blocks == "seeds":
            continue  # a failure at a rate that was not chosen
        cell = (*(row[k] for k in keys), row["arm"])
        if cell not in have:
            out.add(cell)
    return out


def block_matrix(chosen: pd.DataFrame, metric: str, blocks: str, warnings: list[str],
                 failed: set[tuple] = frozenset(), arms: list | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Blocks x arms of seed-averaged (``tasks``) or per-seed (``seeds``) values of ``metric``, rounded to
    ``DECIMALS``, and the mask of failed cells (``failed``: from ``failed_cells``; their value is NaN, and they rank
    last). A block missing an arm's value for another reason is dropped with a warning; a block no arm has (an OOD
    set of another task) never existed. A seed whose value is NaN is left out of its cell's mean, with a warning."""
    if blocks not in BLOCKINGS:
        why = f" ({REFUSED_BLOCKINGS[blocks]})" if blocks in REFUSED_BLOCKINGS else ""
        raise ValueError(f"unknown blocks {blocks!r}{why}; valid choices: {', '.join(BLOCKINGS)}")
    arms = list(dict.fromkeys(chosen["arm"])) if arms is None else list(arms)  # an arm that always failed too
    empty = pd.DataFrame(columns=arms, dtype=float)
    if metric not in chosen:
        return empty, empty.astype(bool)
    keys = ["task"] + (["seed"] if blocks == "seeds" else [])
    nan = chosen[chosen[metric].isna()]
    if len(nan) and blocks == "tasks":
        cells = sorted({f"{t}/{a}" for t, a in zip(nan["task"], nan["arm"])})
        warnings.append(f"{len(nan)} chosen trial(s) without {metric} (a NaN score) left out of their cell's mean: "
                        f"{', '.join(cells)}")
    table = chosen.groupby(keys + ["arm"], sort=False)[metric].mean().unstack("arm").reindex(columns=arms)
    table = table.dropna(how="all").astype(float).round(DECIMALS)  # no arm has it: never a block (imdb of rte)
    table.index = pd.MultiIndex.from_tuples([i if isinstance(i, tuple) else (i,) for i in table.index], names=keys)
    mask = pd.DataFrame([[(*idx, arm) in failed for arm in arms] for idx in table.index], index=table.index,
                        columns=arms, dtype=bool)
    missing = table.isna() & ~mask
    for idx in table.index[missing.any(axis=1)]:
        lacking = [a for a in arms if missing.loc[idx, a]]
        warnings.append(f"block {'/'.join(map(str, idx))}: no {metric} for arm(s) {lacking} (not a failure: never "
                        "run, or a NaN score); block dropped")
    keep = ~missing.any(axis=1)
    return table[keep], mask[keep]


def oriented(matrix: pd.DataFrame, failed: pd.DataFrame, higher: bool = True) -> pd.DataFrame:
    """The block matrix with higher = better and every failed cell at -inf (it ranks last; two failed cells tie)."""
    out = (matrix if higher else -matrix).astype(float).copy()
    if failed is not None and len(failed):
        out[failed.reindex_like(out).fillna(False).to_numpy(bool)] = -np.inf
    return out


def paired_differences(x: pd.Series | np.ndarray, y: pd.Series | np.ndarray) -> np.ndarray:
    """``x - y`` per block on an oriented matrix (higher = better, failed = -inf), rounded: a failed cell loses to
    any value (-inf, or +inf against a failed baseline) and two failed cells tie (0, not NaN)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    with np.errstate(invalid="ignore"):
        d = x - y
    d[np.isinf(x) & np.isinf(y) & (x == y)] = 0.0
    finite = np.isfinite(d)
    d[finite] = np.round(d[finite], DECIMALS)
    return d


def rank_blocks(matrix: pd.DataFrame, higher: bool = True) -> pd.DataFrame:
    """Within each block, 1 = best (highest value, or lowest when ``higher`` is False); ties share the average
    rank."""
    sign = -1.0 if higher else 1.0
    return matrix.apply(lambda row: pd.Series(stats.rankdata(sign * row.to_numpy(float), method="average"),
                                              index=row.index), axis=1)


def friedman_statistic(ranks: np.ndarray) -> float:
    """Demšar (2006), eq. (1): ``12 N / (k (k + 1)) * (sum_j R_j^2 - k (k + 1)^2 / 4)`` with R_j the mean ranks."""
    n, k = ranks.shape
    mean = ranks.mean(axis=0)
    return float(12 * n / (k * (k + 1)) * (np.sum(mean ** 2) - k * (k + 1) ** 2 / 4))


def tie_correction(ranks: np.ndarray) -> float:
    """The Friedman statistic's tie correction, ``1 - sum(t^3 - t) / (N k (k^2 - 1))`` over every group of t tied
    ranks in every block (scipy's ``friedmanchisquare``; Conover): divide the untied statistic by it. 1 without
    ties."""
    n, k = ranks.shape
    ties = sum(float(np.sum(c ** 3 - c)) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
    return 1.0 - ties / (n * k * (k * k - 1))


def friedman_permutation_p(ranks: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """The permutation p of the Friedman statistic: under the null every block's ranks are exchangeable, so the
    statistic's distribution is that of every within-block permutation of each block's observed ranks (ties kept).
    Exact (the rank-sum distribution built block by block) while it has at most ``EXACT_LIMIT`` states, else Monte
    Carlo with ``PERMUTATIONS`` seeded permutations. Returns ``(p, "exact" | "monte carlo")``. Permuting within a
    block keeps its ties, so the tie correction is one constant factor and the untied statistic orders the
    permutations alike."""
    n, k = ranks.shape
    observed = friedman_statistic(ranks)
    tolerance = 1e-9 * max(1.0, abs(observed))
    # Exact: the distribution of the rank-sum vector, block by block (the first block fixed by symmetry: permuting
    # every block alike permutes the sums, which leaves the statistic unchanged). Ranks are doubled to integers.
    keys, counts = np.round(ranks[:1] * 2).astype(np.int64), np.ones(1, dtype=np.float64)
    exact = _exact_fits(ranks)
    for row in ranks[1:] if exact else []:
        perms = np.unique(np.array(list(itertools.permutations(np.round(row * 2).astype(np.int64)))), axis=0)
        if len(keys) * len(perms) > EXACT_LIMIT:
            exact = False
            break
        combined = (keys[:, None, :] + perms[None, :, :]).reshape(-1, k)
        keys, inverse = np.unique(combined, axis=0, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=np.repeat(counts, len(perms)))
    if exact:
        mean = keys / 2 / n
        values = 12 * n / (k * (k + 1)) * (np.sum(mean ** 2, axis=1) - k * (k + 1) ** 2 / 4)
        return float(counts[values >= observed - tolerance].sum() / counts.sum()), "exact"
    rng = np.random.default_rng(seed)
    sums = np.zeros((PERMUTATIONS, k))
    for row in ranks:
        idx = np.argsort(rng.random((PERMUTATIONS, k)), axis=1)
        sums += row[idx]
    mean = sums / n
    values = 12 * n / (k * (k + 1)) * (np.sum(mean ** 2, axis=1) - k * (k + 1) ** 2 / 4)
    return (1 + int(np.sum(values >= observed - tolerance))) / (PERMUTATIONS + 1), "monte carlo"


def _exact_fits(ranks: np.ndarray) -> bool:
    """Whether the exact enumeration stays within ``EXACT_LIMIT`` at every block, by an upper bound on its states
    (at most every product of the blocks' distinct permutations, and at most every rank-sum vector the blocks can
    reach), so that a design too large for it goes to Monte Carlo at once instead of after the costliest steps."""
    n, k = ranks.shape
    ties = bool(np.any(ranks != np.round(ranks)))
    states = 1.0
    for b, row in enumerate(ranks[1:], start=1):
        _, c = np.unique(row, return_counts=True)
        perms = math.factorial(k) / math.prod(math.factorial(int(x)) for x in c)
        if states * perms > EXACT_LIMIT:
            return False
        reach = (b * (k - 1) * (2 if ties else 1) + 1) ** (k - 1)  # each rank sum (doubled) in a range; one fixed
        states = min(states * perms, float(reach))
    return True


def nemenyi_cd(k: int, n: int, alpha: float) -> float:
    """Demšar (2006): ``q_alpha * sqrt(k (k + 1) / (6 N))``, q from the studentized range (infinite df) / sqrt 2."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def smallest_wilcoxon_p(n: int, zeros: int = 0) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test over ``n`` pairs, ``zeros`` of them zero
    differences, can give: 2 / 2^(n - zeros) (a zero difference has no sign to flip)."""
    return min(1.0, 2.0 / 2 ** (n - zeros))


def subset_sum_counts(ranks: np.ndarray) -> np.ndarray:
    """How many subsets of the (integer) ``ranks`` sum to each total 0..sum(ranks): the signed-rank sum's null
    distribution, every sign assignment being one subset of the ranks counted positive."""
    counts = np.zeros(int(np.sum(ranks)) + 1)
    counts[0] = 1.0
    for r in ranks:
        counts[r:] = counts[r:] + counts[:-r].copy()
    return counts


def wilcoxon_p(diff: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of ``diff`` with zero differences split between the signs (Demšar 2006):
    ``(W, p)``, W = min(R+, R-). p is exact for any number of pairs, ties and zeros included: the distribution of
    R+ over every sign assignment, as subset sums of the doubled ranks (a zero difference has no sign to flip).
    Never the normal approximation, which scipy uses, uncorrected, with ties or zeros; and, unlike scipy's
    ``PermutationMethod`` (seconds at 16 pairs), instant: a report runs it for every pair of arms.
    NOTE: hand-written because scipy offers no exact p with ties; the tests check it against brute force."""
    d = np.asarray(diff, float)
    ranks2 = np.round(2 * stats.rankdata(np.abs(d))).astype(np.int64)  # ties give half ranks: doubled, integers
    r_plus = (ranks2[d > 0].sum() + ranks2[d == 0].sum() / 2) / 2
    w = float(min(r_plus, ranks2.sum() / 2 - r_plus))
    signed = ranks2[d != 0]
    if not len(signed):
        return w, 1.0
    counts = subset_sum_counts(signed)  # every sign assignment of the non-zero ranks, each equally likely
    total = signed.sum()
    deviation = np.abs(2 * np.arange(len(counts)) - total)
    observed = abs(2 * ranks2[d > 0].sum() - total)
    return w, float(min(1.0, counts[deviation >= observed].sum() / counts.sum()))


def signed_rank_critical(n: int, alpha: float) -> float | None:
    """The smallest deviation ``c`` of the signed-rank sum W+ from its null mean n(n+1)/4 with exact two-sided
    P(|W+ - n(n+1)/4| >= c) <= ``alpha`` (no ties); None when no deviation reaches alpha (too few blocks)."""
    counts = subset_sum_counts(np.arange(1, n + 1))
    deviation = np.abs(np.arange(len(counts)) - n * (n + 1) / 4)
    probs = counts / counts.sum()
    for c in np.unique(deviation):
        if probs[deviation >= c - 1e-9].sum() <= alpha + 1e-12:
            return float(c)
    return None


def detectable_effect(n: int, comparisons: int, alpha: float, sd: float, power: float = 0.8) -> float:
    """The smallest mean difference (in the metric's units) that the Wilcoxon signed-rank test over ``n`` blocks
    detects with probability ``power`` at Holm's hardest threshold ``alpha / comparisons``, for differences drawn
    normal with the observed standard deviation ``sd``. ``inf`` when no difference can be significant with ``n``
    blocks; NaN without a spread to scale by. The effect scales with ``sd`` (ranks do not change when every
    difference is scaled), so it is computed once per design, for sd 1."""
    if n < 1 or not sd > 0:
        return math.nan
    return sd * _detectable_unit(n, max(1, comparisons), alpha, power)


@functools.lru_cache(maxsize=256)
def _detectable_unit(n: int, comparisons: int, alpha: float, power: float, draws: int = 4000,
                     seed: int = 0) -> float:
    """``detectable_effect`` for sd 1: seeded Monte Carlo power of the exact critical value, bisection to 1e-4."""
    critical = signed_rank_critical(n, alpha / comparisons)
    if critical is None:
        return math.inf
    z = np.random.default_rng(seed).standard_normal((draws, n))
    centre = n * (n + 1) / 4

    def power_at(delta: float) -> float:
        d = delta + z
        ranks = stats.rankdata(np.abs(d), axis=1)
        return float(np.mean(np.abs((ranks * (d > 0)).sum(axis=1) - centre) >= critical - 1e-9))

    low, high = 0.0, 1.0
    while power_at(high) < power:
        low, high = high, 2 * high
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if power_at(mid) < power else (low, mid)
    return float(high)


ESTIMANDS = {"these": "these tasks (their mean difference; seeds are the replicates: pooled within-task variance)",
             "new": "a new task like them (the mean difference over tasks; T - 1 degrees of freedom)"}


def difference_intervals(diffs: dict[str, np.ndarray], level: float = 0.95) -> dict:
    """The mean difference over tasks (each task's mean over its seeds' paired differences) and a t-interval for each
    estimand (``ESTIMANDS``), or the reason there is none.

    ``these``: the mean over these tasks of their true differences; its only noise is seed to seed, so its standard
    error is ``sqrt(sum_t s_p^2 / n_t) / T`` with ``s_p^2`` the pooled within-task variance (``sum_t (n_t - 1)``
    degrees of freedom): none with one seed per task. ``new``: the mean difference over the population of tasks;
    the task means are its replicates (``sd / sqrt(T)``, ``T - 1`` degrees of freedom): none with one task. Both
    covered 0.94-0.96 at 95% in simulation for 1, 4 and 8 tasks and 1 to 5 seeds (``tests/test_statistics.py``);
    the two-level bootstrap they replace covered 0.50 (one task, two seeds) to 0.87.

    Returns:
        ``{"diff": point, "these": (low, high) | None, "new": (low, high) | None, "why_not": {estimand: reason}}``.
    """
    values = {t: np.asarray(d, float) for t, d in diffs.items() if len(d)}
    out: dict = {"diff": math.nan, "these": None, "new": None, "why_not": {}}
    if not values:
        out["why_not"] = {e: "no paired seeds" for e in ESTIMANDS}
        return out
    means = np.array([d.mean() for d in values.values()])
    sizes = np.array([len(d) for d in values.values()])
    tasks = len(values)
    out["diff"] = float(means.mean())
    q = 1 - (1 - level) / 2
    df_within = int(np.sum(sizes - 1))
    pooled = sum(float(np.sum((d - d.mean()) ** 2)) for d in values.values()) / df_within if df_within else 0.0
    if df_within > 0 and pooled > 0:
        se = math.sqrt(pooled * np.sum(1 / sizes)) / tasks
        half = stats.t.ppf(q, df_within) * se
        out["these"] = (out["diff"] - half, out["diff"] + half)
    elif df_within > 0:
        out["why_not"]["these"] = "the differences are identical across seeds: an interval would have zero width"
    else:
        out["why_not"]["these"] = "one seed per task: the seed-to-seed spread is unknown"
    if tasks >= 2:
        half = stats.t.ppf(q, tasks - 1) * float(np.std(means, ddof=1)) / math.sqrt(tasks)
        out["new"] = (out["diff"] - half, out["diff"] + half)
    else:
        out["why_not"]["new"] = "one task: nothing measures how tasks differ"
    return out


def bayes_signed_rank(x: np.ndarray, y: np.ndarray, rope: float, seed: int = 0,
                      samples: int = 50_000) -> tuple[float, float, float]:
    """Benavoli et al.'s Bayesian signed-rank test (baycomp): ``(P(x better), P(practically equivalent),
    P(y better))`` over the blocks, with a region of practical equivalence of half-width ``rope``."""
    from baycomp import SignedRankTest

    probs = SignedRankTest.probs(np.asarray(x, float), np.asarray(y, float), rope=rope, nsamples=samples,
                                 random_state=seed)
    if len(probs) == 2:  # rope 0: baycomp returns only P(x better), P(y better)
        return float(probs[0]), 0.0, float(probs[1])
    p_x, p_rope, p_y = probs
    return float(p_x), float(p_rope), float(p_y)


def rank_biserial(diff: np.ndarray) -> float:
    """The matched-pairs rank-biserial correlation of the differences (Kerby 2014): (R+ - R-) / (R+ + R-), with
    the test's zero rule: zero differences ranked with the others and their ranks split between R+ and R- (so seven
    ties and one small win give 0.22, not 1); +1 when every difference favours the arm."""
    d = np.asarray(diff, float)
    if not len(d) or not np.any(d):
        return 0.0
    r = stats.rankdata(np.abs(d))
    plus = r[d > 0].sum() + r[d == 0].sum() / 2
    minus = r[d < 0].sum() + r[d == 0].sum() / 2
    return float((plus - minus) / r.sum())


def pairwise_wilcoxon(matrix: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Every pair of arms compared on its own blocks (Wilcoxon signed-rank, zeros split, exact sign-flip p), Holm
    over all k(k-1)/2 pairs: unlike the Nemenyi test on mean ranks, no third arm can change whether two arms differ
    (Benavoli et al. 2016). ``matrix``: oriented blocks x arms (``oriented``: higher is better, failed -inf);
    ``diff`` positive when ``a`` is better (infinite when a failed cell is among the blocks)."""
    rows = []
    for a, b in itertools.combinations(matrix.columns, 2):
        diff = paired_differences(matrix[a], matrix[b])
        w, p = wilcoxon_p(diff) if np.any(diff) else (math.nan, 1.0)
        rows.append({"a": a, "b": b, "n": len(diff), "zeros": int(np.sum(diff == 0)), "W": w, "p": p,
                     "diff": mean_difference(diff), "rank_biserial": rank_biserial(diff)})
    out = pd.DataFrame(rows, columns=["a", "b", "n", "zeros", "W", "p", "diff", "rank_biserial"])
    if len(out):
        out["p_holm"] = holm(out["p"].to_numpy())
        out["significant"] = out["p_holm"] < alpha
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest times (m - i), running maximum, capped at 1.
    NOTE: statsmodels' ``multipletests(method="holm")`` gives the same (the tests check it) but runs a full
    ``gc.collect()`` on every call (0.14 s in a report's process; the simulation tests call it thousands of times)."""
    p = np.asarray(p, float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def mean_difference(diff: np.ndarray) -> float:
    """The mean of paired differences; NaN (not +-inf) when a failed cell is among them: it has no size."""
    d = np.asarray(diff, float)
    return float(d.mean()) if len(d) and np.all(np.isfinite(d)) else math.nan


def friedman_tests(matrix: pd.DataFrame, baseline: str | None, alpha: float, warnings: list[str],
                   family_alpha: float | None = None) -> dict:
    """The rank tests on an oriented block matrix (``oriented``: higher is better, failed cells -inf). ``alpha``:
    the exploratory tests' level; ``family_alpha``: the level of the primary family (every arm against
    ``baseline``, Holm-corrected; the declared alpha spent over the planned looks), ``alpha`` when None."""
    import scikit_posthocs as sp

    family_alpha = alpha if family_alpha is None else family_alpha
    n, k = matrix.shape
    out: dict = {"blocks": n, "arms": k, "alpha": alpha, "family_alpha": family_alpha}
    ranks = rank_blocks(matrix).to_numpy(float)
    if k >= 3 and n >= 2:
        # tie-corrected (scipy's friedmanchisquare): ties are the rule with accuracies on a few hundred examples
        correction = tie_correction(ranks)
        chi2 = friedman_statistic(ranks) / correction if correction > 0 else 0.0
        denom = n * (k - 1) - chi2
        f = (n - 1) * chi2 / denom if denom > 0 else math.inf
        p_perm, how = friedman_permutation_p(ranks)
        out["friedman"] = {"chi2": chi2, "df": k - 1, "p": float(stats.chi2.sf(chi2, k - 1)),
                           "p_permutation": p_perm, "permutation": how, "significant": p_perm < alpha}
        out["iman_davenport"] = {"F": float(f), "df1": k - 1, "df2": (k - 1) * (n - 1),  # F infinite: undefined
                                 "p": float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if math.isfinite(f) else math.nan}
        out["nemenyi_cd"] = nemenyi_cd(k, n, alpha)
        out["max_rank_difference"] = float(k - 1)
        if out["nemenyi_cd"] > k - 1:
            warnings.append(f"Nemenyi critical difference {out['nemenyi_cd']:.4f} exceeds the largest possible rank "
                            f"difference {k - 1} over {n} blocks: no pair of arms can differ significantly")
        out["nemenyi_p"] = sp.posthoc_nemenyi_friedman(-rank_blocks(matrix).to_numpy(float))
        out["nemenyi_p"].index = out["nemenyi_p"].columns = list(matrix.columns)
    elif k >= 3:
        warnings.append(f"Friedman test needs at least 2 complete blocks, got {n}: not computed")
    if k >= 2 and n >= 1:
        out["pairwise"] = pairwise_wilcoxon(matrix, alpha)
    if baseline is None or baseline not in matrix.columns:
        warnings.append("no dense baseline arm: Wilcoxon tests against it not computed")
        return out
    rows = []
    for arm in [c for c in matrix.columns if c != baseline]:
        diff = paired_differences(matrix[arm], matrix[baseline])  # positive: the arm is better
        zeros = int(np.sum(diff == 0))
        if n < 1 or zeros == n:
            rows.append({"arm": arm, "vs": baseline, "n": n, "zeros": zeros, "W": math.nan, "p": 1.0,
                         "rank_biserial": 0.0})
            continue
        w, p = wilcoxon_p(diff)
        rows.append({"arm": arm, "vs": baseline, "n": n, "zeros": zeros, "W": w, "p": p,
                     "rank_biserial": rank_biserial(diff)})
    wil = pd.DataFrame(rows, columns=["arm", "vs", "n", "zeros", "W", "p", "rank_biserial"])
    if len(wil):
        m = len(wil)
        wil["p_holm"] = holm(wil["p"].to_numpy())
        wil["significant"] = wil["p_holm"] < family_alpha
        # Holm multiplies the smallest p by m: nothing can be significant when even the comparison with the fewest
        # zero differences cannot reach alpha / m
        zeros = int(wil["zeros"].min())
        floor = smallest_wilcoxon_p(n, zeros)
        if m * floor >= family_alpha:
            need = next(b for b in range(n, 64 + n) if m * smallest_wilcoxon_p(b, zeros) < family_alpha)
            ties = f" ({zeros} of them zero differences in every comparison)" if zeros else ""
            warnings.append(f"Wilcoxon over {n} blocks{ties}: the smallest two-sided p it can give is {floor:.4g}, "
                            f"and Holm over {m} comparison(s) multiplies the smallest by {m} ({m * floor:.4g} >= "
                            f"alpha {family_alpha:.4g}): nothing can be significant; that needs at least {need} "
                            "blocks")
        if wil["zeros"].sum():
            warnings.append(f"{int(wil['zeros'].sum())} zero difference(s) from the baseline: split between the "
                            "signs (Demšar 2006); each arm's count is its \"zero differences\" in the family's tests")
    out["wilcoxon"] = wil
    return out


def compare_to_baseline(chosen: pd.DataFrame, matrix: pd.DataFrame, metric: str, baseline: str, higher: bool,
                        rope: float, warnings: list[str], level: float = 0.95, family_alpha: float = 0.05,
                        bayes_samples: int = 50_000) -> pd.DataFrame:
    """Per arm against the baseline, on the blocks the rank tests used (``matrix``: oriented, failed cells -inf):
    the mean difference (arm - baseline, in the metric's units; positive = better in its direction) over tasks, with
    a ``level`` t-interval for each estimand (``difference_intervals``; paired by seed), the Bayesian signed-rank
    probabilities (from ``BAYES_MIN_BLOCKS`` blocks), and the power of the Wilcoxon-Holm test at ``family_alpha``.
    An arm with a failed cell has no mean difference and no interval (a failed run has no size), only its ranks."""
    sign = 1.0 if higher else -1.0
    rows = []
    tasks = list(dict.fromkeys(matrix.index.get_level_values("task")))
    seeds = (set(zip(matrix.index.get_level_values("task"), matrix.index.get_level_values("seed")))
             if "seed" in matrix.index.names else None)
    per_seed = chosen.groupby(["task", "arm", "seed"])[metric].mean() if metric in chosen else pd.Series(dtype=float)
    for arm in [a for a in matrix.columns if a != baseline]:
        row = {"arm": arm, "vs": baseline}
        x, y = matrix[arm].to_numpy(float), matrix[baseline].to_numpy(float)
        dead = sorted({t for t, v, w in zip(matrix.index.get_level_values("task"), x, y) if np.isinf(v) or np.isinf(w)})
        if dead:
            row["why_not"] = f"a failed cell on {', '.join(map(str, dead))} (a failed run has no size; ranked last)"
            row["diff"] = math.nan
        else:
            diffs, dropped = {}, 0
            for task in tasks:
                try:
                    a, b = per_seed.loc[(task, arm)], per_seed.loc[(task, baseline)]
                except KeyError:
                    continue
                common = [s for s in a.index.intersection(b.index) if seeds is None or (task, s) in seeds]
                d = sign * (a[common] - b[common]).round(DECIMALS).to_numpy(float)
                dropped += int(np.isnan(d).sum())
                diffs[task] = d[~np.isnan(d)]
            if dropped:
                warnings.append(f"{arm} vs {baseline}: {dropped} seed(s) without a {metric} on one side left out of "
                                "the mean difference (a NaN score)")
            ci = difference_intervals(diffs, level)
            row.update(diff=ci["diff"], tasks=len([d for d in diffs.values() if len(d)]),
                       seeds=int(np.mean([len(d) for d in diffs.values()])) if diffs else 0)
            for est in ESTIMANDS:
                lo, hi = ci[est] if ci[est] is not None else (math.nan, math.nan)
                row[f"{est}_low"], row[f"{est}_high"] = lo, hi
            row["why_not"] = "; ".join(f"{ESTIMANDS[k].split(' (')[0]}: {v}" for k, v in ci["why_not"].items())
            if len(x) >= BAYES_MIN_BLOCKS and bayes_samples:
                row["p_better"], row["p_rope"], row["p_worse"] = bayes_signed_rank(x, y, rope, samples=bayes_samples)
        # power: what this design could have detected, from the spread of the differences it saw
        d = paired_differences(x, y)
        d = d[np.isfinite(d)]
        spread = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
        row["sd_blocks"] = spread
        row["detectable"] = detectable_effect(len(x), len(matrix.columns) - 1, family_alpha, spread)
        rows.append(row)
    if rows and len(matrix) < BAYES_MIN_BLOCKS:
        warnings.append(f"Bayesian signed-rank not run: {len(matrix)} block(s), fewer than {BAYES_MIN_BLOCKS}; its "
                        "posterior would be mostly the prior's pseudo-observation (one task and one seed gave "
                        "P(better) = 0.998)")
    return pd.DataFrame(rows)


def primary_status(primary: Primary | None, used: Primary, looks: int, why_not: str | None = None) -> dict:
    """Whether an analysis is the sweep's declared primary one, and the level its family is tested at.

    Returns:
        ``{"primary": bool, "why": [reasons it is exploratory], "looks": looks, "planned_looks": K,
        "family_alpha": alpha / K for the primary analysis (alpha spent over the planned looks), else alpha}``.
    """
    why = [why_not] if why_not else []
    if primary is None and not why_not:
        why.append("no primary analysis was declared when the sweep was launched")
    else:
        for name in ("metric", "blocks", "baseline", "alpha"):
            declared, now = getattr(primary, name), getattr(used, name)
            if declared is not None and declared != now:
                why.append(f"{name} {now} is not the declared {declared}")
        if looks > primary.planned_looks:
            why.append(f"look {looks} at the results, {primary.planned_looks} planned: stopping or adding seeds after "
                       "seeing results inflates the false-positive rate (0.138 instead of 0.05 when seeds are added "
                       "until a test passes); declare --planned-looks at launch to keep later looks confirmatory")
    planned = primary.planned_looks if primary is not None else 1
    ok = not why
    return {"primary": ok, "why": why, "looks": looks, "planned_looks": planned,
            "family_alpha": used.alpha / planned if ok else used.alpha}


def per_task_table(df: pd.DataFrame, chosen: pd.DataFrame, counts: pd.DataFrame, ranks: pd.DataFrame,
                   id_ranks: pd.DataFrame, arms: list) -> pd.DataFrame:
    """One row per (task, arm): the chosen rate and seeds, each metric's mean and std over seeds, the task's own
    ranks, the failed and early-stopped trial counts; an arm with no usable trial still shows its failures."""
    rows = []
    metric_cols = [tracking.ID_SCORE] + [tracking.ood_score_metric(s) for s in ood_sets(chosen)] \
        + [tracking.OOD_SCORE]
    for (task, arm), group in chosen.groupby(["task", "arm"], sort=False):
        row = {"task": task, "arm": arm, "learning_rate": group["learning_rate"].iloc[0],
               "seeds": ",".join(str(int(s)) for s in sorted(group["seed"]))}
        for col in metric_cols:
            if col in group:
                row[f"{col}_mean"] = group[col].mean()
                row[f"{col}_std"] = group[col].std(ddof=1) if group[col].count() > 1 else math.nan
        rows.append(row)
    for (task, arm) in counts.index:  # arms with no usable trial still show their failures
        if not any(r["task"] == task and r["arm"] == arm for r in rows):
            rows.append({"task": task, "arm": arm})
    for row in rows:
        task, arm = row["task"], row["arm"]
        # this task's blocks only (the rank over tasks is the paper table's)
        mine = ranks[ranks.index.get_level_values("task") == task] if not ranks.empty else ranks
        row["rank"] = mine[arm].mean() if arm in mine and len(mine) else math.nan
        mine = id_ranks[id_ranks.index.get_level_values("task") == task] if not id_ranks.empty else id_ranks
        row["id_rank"] = mine[arm].mean() if arm in mine and len(mine) else math.nan
        c = counts.loc[(task, arm)] if (task, arm) in counts.index else {}
        row["failed"] = int(c.get("failed", 0))
        row["early_stopped"] = int(c.get("early_stopped", 0))
    task_order = {t: i for i, t in enumerate(dict.fromkeys(df["task"]))}
    arm_order = {a: i for i, a in enumerate(arms)}
    rows.sort(key=lambda r: (task_order.get(r["task"], 0), arm_order.get(r["arm"], 0)))
    table = pd.DataFrame(rows)
    return table


def selection_line(rule: str) -> str:
    """The selection rule, as the method states it."""
    if rule == "oracle":
        return f"selection: {selection.RULE}"
    if rule == "training_domain":
        return (f"selection (DomainBed's training-domain validation): {selection.RULE}; {tracking.ID_SCORE} is the "
                "mean over the training domains of their held-out 20 % split's accuracy, and keep_best took the best "
                "such evaluation, as DomainBed's IIDAccuracySelectionMethod")
    if rule == "leave_one_domain_out":
        return ("selection (DomainBed's leave-one-domain-out cross-validation): per trial, the evaluation with the best "
                f"mean {tracking.LOO_SCORE} of its pair runs (trained without the held-out domain and one other, "
                "scored on that other domain), the earliest among equals; then "
                + selection.RULE.replace(tracking.ID_SCORE, tracking.LOO_SCORE, 1))
    if rule == "test_domain":
        held_out = "(the held-out domain's own 20 % split, never the one reported;"
        return ("selection (DomainBed's test-domain validation, its oracle): each trial's last evaluation; "
                + selection.RULE.replace(tracking.ID_SCORE, tracking.ORACLE_SCORE, 1).replace("(ID only;", held_out, 1))
    clean = "(on the development split carved from the training set, never trained on; the epoch too, with keep_best;"
    return (f"selection (clean rule): {selection.RULE.replace(tracking.ID_SCORE, tracking.DEV_SCORE, 1)}"
            .replace("(ID only;", clean, 1) + "; the ID validation set is reported as a test set")


def method_lines(blocks: str, metric: str, up: bool, base: str | None, arms: int, alpha: float, status: dict,
                 level: float, rope: float, rule: str = "oracle") -> list[str]:
    """The method, as every report states it."""
    family_alpha = status["family_alpha"]
    family = (f"{arms - 1} arm(s) vs {base}" if base is not None else "none (no baseline)")
    method = [
        "trials: completed and early-stopped used; failed ones count against their learning rate; duplicate cells "
        "averaged, never counted as seeds",
        selection_line(rule),
        f"ranking: seeds averaged first, values rounded to {DECIMALS} decimals; blocks = {BLOCK_NAMES[blocks]} on "
        f"{metric} ({'higher' if up else 'lower'} is better); 1 = best, ties averaged; a failed cell ranks last in "
        "its block and its arm is left out of every average and interval; ID ranks over tasks separately",
        f"primary family: {family}, Wilcoxon signed-rank (zeros split between the signs, exact p), Holm over the "
        f"family at alpha {family_alpha:.4g}"
        + (f" (alpha {alpha:.4g} spent over {status['planned_looks']} planned looks)" if status["planned_looks"] > 1
           and status["primary"] else "")
        + f", each with the smallest difference it could detect at 80% power; {100 * level:.4g}% t-intervals "
        f"(simultaneous {100 * (1 - family_alpha):.4g}% over the family, Bonferroni) for two named estimands: "
        f"{ESTIMANDS['these']} and {ESTIMANDS['new']}",
        f"exploratory: Friedman chi2 (Demšar 2006, tie-corrected as scipy's) with its asymptotic and permutation p "
        f"(the permutation p decides), Iman-Davenport F, Nemenyi CD (alpha={alpha:.4g}; it depends on every other "
        f"arm); pairwise Wilcoxon signed-rank between every pair of arms, Holm over the pairs; rank-biserial "
        f"correlation (the test's zero rule); Bayesian signed-rank (baycomp; from {BAYES_MIN_BLOCKS} blocks) with a "
        f"region of practical equivalence of +-{rope:g}",
    ]
    return method


def analyse(df: pd.DataFrame, metric: str | None = None, blocks: str | None = None,
            baseline: str | None = None, alpha: float | None = None, higher: bool | None = None,
            rope: float = 0.01, primary: Primary | None = None, looks: int = 1,
            bayes_samples: int = 50_000, curves: pd.DataFrame | None = None,
            exploratory: str | None = None, arms: list | None = None, rule: str | None = None,
            loo_curves: pd.DataFrame | None = None) -> Analysis:
    """The whole method (module docstring) on a trials DataFrame (``emoe.analysis.results.load_trials``).

    Args:
        metric, blocks, baseline, alpha: the analysis; each None takes the declared ``primary``'s (else ood_score,
            tasks with several tasks and seeds with one, the dense arm, 0.05).
        higher: the metric's direction (None: known from its name, else ``ValueError``).
        rope: half-width of the region of practical equivalence of the Bayesian test, in the metric's units.
        primary: the sweep's declared primary analysis (None: none was declared; every result is exploratory).
        looks: how many times the sweep's results have been looked at (``emoe.tracking`` records each).
        bayes_samples: posterior samples of the Bayesian signed-rank test (0: not run).
        curves: every used trial's raw ID curve (``run_id, step, value``): the selection's inflation then undoes
            the best-evaluation choice too (``emoe.analysis.selection.inflation``).
        exploratory: a reason this analysis cannot be the primary one (e.g. several sweeps pooled).
        arms: the sweep's declared arms, in order (None: the trials' order): the order of the figures' colours, and
            the arms a missing cell can be of (an arm with no trial yet is listed in ``missing``, not tested).
        rule: the selection rule (None: ``training_domain`` for image tasks, else ``oracle``): ``oracle`` (learning
            rate and epoch chosen on the ID validation set it reports,
            the official code's) or ``clean`` (chosen on the development split's ``dev_score``; the validation set
            is then a test set). Both rules' scores and their gap are in ``rules`` whenever a dev_score exists.
            Image sweeps: ``training_domain``, ``test_domain`` or ``leave_one_domain_out`` (DomainBed's).
        loo_curves: the leave-one-domain-out rule's ``run_id, step, metric, value`` (each run's ``ood_score`` and
            ``loo_score`` per evaluation; ``emoe.analysis.selection.loo_view``).

    Raises:
        ValueError: no trial, or no finished trial with an ID score (one line: nothing to analyse).
    """
    warnings: list[str] = []
    check_finished(df)
    from emoe.config import check_choice

    rule = rule or selection.default_rule(df)  # DomainBed's training-domain rule for image tasks, else oracle
    check_choice("selection rule", rule, selection.RULES)
    selection.check_rule(df, rule)
    df, pairs = selection.support_runs(df)
    if not len(df):
        raise ValueError("only leave-one-domain-out pair runs (dataset:test+validation): nothing to analyse")
    if len(pairs):
        warnings.append(f"{len(pairs)} pair run(s) (two held-out domains) serve the leave-one-domain-out selection "
                        "only: not blocks, not arms' scores")
    rules = selection.compare_rules(df)
    if rule == "clean":
        df = selection.clean_view(df)
    elif rule == "test_domain":
        df = selection.last_view(df)
    elif rule == "leave_one_domain_out":
        df = selection.loo_view(df, pairs, loo_curves if loo_curves is not None else
                                pd.DataFrame(columns=["run_id", "step", "metric", "value"]), warnings)
    declared_arms = list(arms or [])
    declared = primary or Primary()
    metric = metric or declared.metric
    alpha = declared.alpha if alpha is None else alpha
    Primary(metric, blocks, None, alpha).check(higher)
    up = higher_is_better(metric, higher)
    df = df.copy()
    df["task"] = df["task"].fillna("?") if "task" in df else "?"
    counts = df.groupby(["task", "arm"], sort=False)["outcome"].value_counts().unstack(fill_value=0)
    failed = int((df["outcome"] == "failed").sum())
    if failed:
        warnings.append(f"{failed} failed trial(s) left out of the means; each counts against its learning rate "
                        "(counted per arm in the table)")
    df = collapse_duplicates(df, warnings)
    chosen = selection.select(df, warnings, selection.criterion(rule))
    base = find_baseline(df, baseline or declared.baseline)
    blocks = blocks or declared.blocks or ("tasks" if df["task"].nunique() > 1 else "seeds")
    if blocks == "seeds" and df["task"].nunique() > 1:
        warnings.append("blocks are task x seed: the tests speak for these tasks only; over tasks (--blocks tasks, "
                        "the default with several) they speak for tasks like them")
    status = primary_status(primary, Primary(metric, blocks, base, alpha), looks, exploratory)
    family_alpha = status["family_alpha"]
    dead = failed_cells(df, chosen, blocks)
    arms = list(dict.fromkeys(df["arm"]))
    values, mask = block_matrix(chosen, metric, blocks, warnings, dead, arms)
    matrix = oriented(values, mask, up)
    ranks = rank_blocks(matrix) if not matrix.empty else pd.DataFrame()
    quiet: list[str] = []  # the paper table's matrices repeat the ranking's warnings
    id_values, id_mask = block_matrix(chosen, tracking.ID_SCORE, "tasks", quiet, failed_cells(df, chosen, "tasks"),
                                      arms)
    id_ranks = rank_blocks(oriented(id_values, id_mask)) if not id_values.empty else pd.DataFrame()
    tests = friedman_tests(matrix, base, alpha, warnings, family_alpha) if not matrix.empty else {"blocks": 0}
    tests["family_alpha"] = family_alpha
    m = max(1, len(matrix.columns) - 1)
    level = 1 - family_alpha / m  # simultaneous over the family (Bonferroni)
    tests["level"] = level
    comparisons = compare_to_baseline(chosen, matrix, metric, base, up, rope, warnings, level, family_alpha,
                                      bayes_samples) \
        if base is not None and not matrix.empty and base in matrix.columns else pd.DataFrame()
    for arm in [c for c in mask.columns if mask[c].any()]:
        cells = sorted({"/".join(map(str, idx)) for idx in mask.index[mask[arm]]})
        warnings.append(f"{arm} failed on {', '.join(cells)}: ranked last there, left out of every average and "
                        "interval")
    table = per_task_table(df, chosen, counts, ranks, id_ranks, arms)
    # the clean rule chooses on data it does not report: no inflation to undo
    inflation = selection.inflation(df, chosen, curves) if rule in ("oracle", "training_domain") else pd.DataFrame()
    method = method_lines(blocks, metric, up, base, len(matrix.columns), alpha, status, level, rope, rule)
    arms = list(dict.fromkeys([*declared_arms, *arms]))
    missing = missing_cells(df, chosen, arms, warnings)
    beyond = beyond_tests(df, chosen, metric, up, base, warnings)
    return Analysis(table, ranks, id_ranks, tests, warnings, method, metric, base,
                    paper_table(chosen, df, warnings), blocks, up, comparisons, chosen, status, inflation, arms,
                    missing, rule, rules, df, beyond)


def beyond_tests(df: pd.DataFrame, chosen: pd.DataFrame, metric: str, up: bool, base: str | None,
                 warnings: list[str]) -> dict:
    """The exploratory summaries beside the tests (``emoe.analysis.ranks``, ``emoe.analysis.variance``), each
    over the chosen trials' ``metric`` unless said: ``rank_intervals`` (Friedman mean rank, two-level bootstrap
    interval, P(first)), ``improvement`` (IQM and, against ``base``, P(improvement), stratified bootstrap),
    ``profile`` (the performance profile over tasks, several tasks only), ``budget`` (Dodge's expected best ID score
    after n configurations, over every trial), ``grid`` (did every arm run the same grid), ``variance`` (the
    sources of variance, where the trials cross two or more of seed, data order, clustering seed and rate). A
    summary that cannot be computed is left out with a warning line; none stops the report."""
    from emoe.analysis import ranks, variance

    out: dict = {"grid": ranks.grid_check(df)}
    notes: list[str] = []
    values = chosen[["task", "seed", "arm", metric]].rename(columns={metric: "value"}).dropna() \
        if metric in chosen and len(chosen) else pd.DataFrame()
    if len(values) and values["arm"].nunique() > 1:
        out["rank_intervals"] = ranks.rank_intervals(values, up, warnings=notes)
        try:
            out["improvement"] = ranks.improvement(values, up, baseline=base, warnings=notes)
        except ValueError as e:
            notes.append(f"IQM and probability of improvement not computed: {e}")
        if values["task"].nunique() > 1:
            out["profile"] = ranks.performance_profile(values, up, warnings=notes)
    if tracking.ID_SCORE in df:
        out["budget"] = ranks.budget_curves(df, tracking.ID_SCORE, warnings=notes)
    quiet: list[str] = []
    out["variance"] = variance.sources_of_variance(df, metric, quiet)
    notes += [q for q in quiet if "cross fewer than two" not in q]  # most sweeps cross only seeds and rates
    warnings.extend(f"beyond the tests: {n}" for n in dict.fromkeys(notes))
    return out


def check_finished(df: pd.DataFrame, source: str | None = None) -> None:
    """``ValueError`` (one line, naming ``source``: "experiment emoe-x") when ``df`` holds no finished (completed or
    early-stopped) trial with an ID score: nothing to analyse. One is enough: a partial sweep reports what it has."""
    has = f"{source} has " if source else ""
    if df.empty:
        raise ValueError(f"{has or 'there are '}no trial runs; nothing to analyse")
    used = df[df["outcome"].isin(selection.USED_OUTCOMES)]
    if used.empty:
        outcome = df["outcome"].fillna("not ended")
        if "status" in df:  # an MLflow run still RUNNING without an outcome: running, or its driver was killed
            outcome = outcome.mask((outcome == "failed") & (df["status"] == "RUNNING").to_numpy(), "not ended")
        seen = ", ".join(f"{n} {o}" for o, n in outcome.value_counts().items())
        raise ValueError(f"{has}{len(df)} trial run(s) ({seen}) and none finished; nothing to analyse")
    if tracking.ID_SCORE not in used or used[tracking.ID_SCORE].isna().all():
        raise ValueError(f"{has}{len(used)} finished trial run(s) and none logged {tracking.ID_SCORE}; nothing to "
                         "analyse")


def missing_cells(df: pd.DataFrame, chosen: pd.DataFrame, arms: list, warnings: list[str]) -> pd.DataFrame:
    """The (task, arm) cells of ``arms`` x the trials' tasks that a partial sweep has no value for yet (``task, arm,
    why``): not run (no trial), not ended (its trials still RUNNING in MLflow: running, or their driver was killed;
    such a trial reads as failed, ``emoe.analysis.results``, so the cell also ranks last until it ends), or finished
    without an ID score; one warning lists them, first. A cell whose trials all failed is no missing cell: it ranks
    last in its blocks (``failed_cells``), with its own warning."""
    have = set(zip(chosen["task"], chosen["arm"]))
    running = df["status"].eq("RUNNING") if "status" in df else pd.Series(False, index=df.index)
    used = df["outcome"].isin(selection.USED_OUTCOMES)
    rows = []
    for task in dict.fromkeys(df["task"]):
        for arm in arms:
            cell = (df["task"] == task) & (df["arm"] == arm)
            why = ("not run" if not cell.any() else f"no {tracking.ID_SCORE}" if (cell & used).any() else
                   "not ended: counted as failed until it ends" if (cell & running).any() else None)
            if (task, arm) not in have and why:
                rows.append({"task": task, "arm": arm, "why": why})
    if rows:
        warnings.insert(0, f"{len(rows)} (task, arm) cell(s) without a finished trial yet (a partial sweep: the "
                        "tables and tests use the cells that have one): "
                        + ", ".join(f"{r['task']}/{r['arm']} ({r['why']})" for r in rows))
    return pd.DataFrame(rows, columns=["task", "arm", "why"])


def paper_table(chosen: pd.DataFrame, trials: pd.DataFrame, warnings: list[str] | None = None) -> pd.DataFrame:
    """The paper's table, one row per arm: the average ID score over tasks, the average OOD score over tasks, and
    the GLUE-X Friedman rank over tasks (each task's OOD sets averaged into its ``ood_score``, seeds averaged, arms
    ranked within each task, 1 = best), beside the ID rank over tasks. Every average and rank is over the same tasks
    (those where every arm has both scores or failed), and ``tasks`` says how many. An arm that failed on one of
    them ranks last there and has no average (``failed``: the tasks it failed on); the others keep every task."""
    warnings = [] if warnings is None else warnings
    if chosen.empty or tracking.ID_SCORE not in chosen:
        return pd.DataFrame()
    quiet: list[str] = []
    dead = failed_cells(trials, chosen, "tasks")
    arms = list(dict.fromkeys(trials["arm"]))
    ids, id_dead = block_matrix(chosen, tracking.ID_SCORE, "tasks", quiet, dead, arms)
    ood, ood_dead = (block_matrix(chosen, tracking.OOD_SCORE, "tasks", quiet, dead, arms)
                     if tracking.OOD_SCORE in chosen else (pd.DataFrame(), pd.DataFrame()))
    common = [t for t in ids.index if ood.empty or t in ood.index]
    skipped = sorted(set(ids.index) ^ set(ood.index)) if not ood.empty else []
    if skipped:
        warnings.append(f"the paper's table leaves out task(s) {', '.join(t[0] for t in skipped)}: an arm lacks its "
                        "ID or OOD score there (not a failure)")
    ids, id_dead = ids.loc[common], id_dead.loc[common]
    id_ranks = rank_blocks(oriented(ids, id_dead)) if len(common) else pd.DataFrame()
    if not ood.empty:
        ood, ood_dead = ood.loc[common], ood_dead.loc[common]
        ood_ranks = rank_blocks(oriented(ood, ood_dead)) if len(common) else pd.DataFrame()
    rows = []
    for arm in arms:
        lost = [t[0] for t in common if id_dead.loc[t, arm]]
        row = {"arm": arm, "tasks": len(common), "failed": ", ".join(map(str, lost)),
               "id_score": math.nan, "ood_score": math.nan, "ood_rank": math.nan, "id_rank": math.nan}
        if len(common):
            row["id_rank"] = float(id_ranks[arm].mean())
            row["ood_rank"] = float(ood_ranks[arm].mean()) if not ood.empty else math.nan
            if not lost:
                row["id_score"] = float(ids[arm].mean())
                row["ood_score"] = float(ood[arm].mean()) if not ood.empty else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
