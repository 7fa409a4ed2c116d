"""Statistics over a DataFrame of trials: model selection on ID, seed means, ranks per block, Friedman and friends.

Pure functions of a DataFrame (no MLflow). The method, stated in every report:
1. Trials: completed and early-stopped ones are used; failed ones count against their learning rate (a rate where
   any seed failed cannot be chosen while another rate has no failure). Duplicate cells (the same task, arm, seed and
   learning rate twice) are averaged into one, never counted as seeds.
2. Model selection uses ID only: for each arm and task, the learning rate with the best mean ``id_score`` over seeds;
   that learning rate's seeds are reported. OOD metrics never select anything.
3. Seeds are averaged first, values rounded to 10 decimals (float noise of equal means must not break ties), then
   ranked: within each block arms are ranked, 1 = best in the metric's direction, ties get the average rank; an
   arm's Friedman rank is its mean rank. Blocks: with several tasks, each task (GLUE-X's rank: a task's OOD sets
   averaged into its ``ood_score``); with one task, each of its OOD sets (within-task evidence: the same models
   score every set); ``sets-seeds`` adds seeds as blocks (pseudo-replication, labelled so).
4. Friedman chi-square as Demšar (2006) writes it, from the mean ranks, with the Iman-Davenport F; beside the
   asymptotic p, an exact permutation p (every within-block permutation of the ranks; Monte Carlo when there are
   too many); the Nemenyi critical difference (q from scipy's studentized range) beside the largest possible rank
   difference; Wilcoxon signed-rank tests of each arm against the dense baseline, zero differences split between
   the signs as Demšar recommends (their number reported), Holm-corrected, with power warnings that account for
   Holm; effect sizes (mean difference with a bootstrap interval over tasks and seeds, the matched-pairs rank-biserial
   correlation) and a Bayesian signed-rank test with a region of practical equivalence (baycomp).
5. Incomplete data is never ranked silently: a block missing an arm (or holding NaN) is dropped with a warning, and
   an arm missing seeds is averaged over the seeds it has, with a warning.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

from emoe.analysis import selection
from emoe.analysis.selection import DECIMALS, collapse_duplicates  # one rounding, one rule
from emoe.tracking import schema as tracking

BLOCKINGS = ("tasks", "sets", "sets-seeds")
BLOCK_NAMES = {"tasks": "each task (its OOD sets averaged: GLUE-X's rank)",
               "sets": "each task x OOD set (within-task evidence: the same models score every set)",
               "sets-seeds": "each task x OOD set x seed (pseudo-replication: seeds are not independent blocks)"}
# Metrics whose direction is known: higher is better unless listed as lower.
HIGHER = (tracking.ID_SCORE, "id.", tracking.OOD_SCORE, "ood.", tracking.CURRENT_ID_SCORE, tracking.LOAD_ENTROPY)
LOWER = (tracking.TRAIN_LOSS,)
BAYES_MIN_BLOCKS = 5  # below this, baycomp's signed-rank posterior is mostly its prior pseudo-observation
EXACT_LIMIT = 2_000_000  # at most this many rank-sum states for the exact Friedman p; else Monte Carlo
PERMUTATIONS = 50_000  # Monte Carlo permutations (seeded) when exact enumeration is too large


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
    higher_is_better: bool = True
    comparisons: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # per arm vs the baseline
    chosen: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # the selected trials (one row each)


def higher_is_better(metric: str, higher: bool | None = None) -> bool:
    """The metric's direction: ``higher`` when given, else known from its name; ``ValueError`` if unknown."""
    if higher is not None:
        return higher
    if metric.startswith(LOWER):
        return False
    if metric.startswith(HIGHER):
        return True
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


def block_matrix(chosen: pd.DataFrame, metric: str, blocks: str, warnings: list[str]) -> pd.DataFrame:
    """Blocks x arms of seed-averaged (``tasks``, ``sets``) or per-seed (``sets-seeds``) values, rounded to
    ``DECIMALS``; incomplete blocks dropped with a warning (a block no arm has, such as an OOD set of another task,
    never existed: left out)."""
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
    matrix = pd.DataFrame(values).T.astype(float).round(DECIMALS)
    matrix.index.names = ["task", "set"] + (["seed"] if blocks == "sets-seeds" else [])
    arms = list(dict.fromkeys(chosen["arm"]))
    matrix = matrix.reindex(columns=arms)
    incomplete = matrix.isna().any(axis=1)
    for idx in matrix.index[incomplete]:
        lacking = [a for a in arms if pd.isna(matrix.loc[idx, a])]
        warnings.append(f"block {'/'.join(map(str, idx))}: no {metric} for arm(s) {lacking}; block dropped")
    return matrix[~incomplete]


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
    exact = True
    for row in ranks[1:]:
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


def detectable_effect(n: int, comparisons: int, alpha: float, sd: float, power: float = 0.8, draws: int = 4000,
                      seed: int = 0) -> float:
    """The smallest mean difference (in the metric's units) that the Wilcoxon signed-rank test over ``n`` blocks
    detects with probability ``power`` at Holm's hardest threshold ``alpha / comparisons``, for differences drawn
    normal with the observed standard deviation ``sd`` (seeded Monte Carlo, bisection). ``inf`` when no difference
    can be significant with ``n`` blocks; NaN without a spread to scale by."""
    if n < 1 or not sd > 0:
        return math.nan
    critical = signed_rank_critical(n, alpha / max(1, comparisons))
    if critical is None:
        return math.inf
    z = np.random.default_rng(seed).standard_normal((draws, n))
    centre = n * (n + 1) / 4

    def power_at(delta: float) -> float:
        d = delta + sd * z
        ranks = stats.rankdata(np.abs(d), axis=1)
        return float(np.mean(np.abs((ranks * (d > 0)).sum(axis=1) - centre) >= critical - 1e-9))

    low, high = 0.0, sd
    while power_at(high) < power:
        low, high = high, 2 * high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if power_at(mid) < power else (low, mid)
    return float(high)


def bootstrap_difference(diffs: dict[str, np.ndarray], samples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """Mean over tasks of each task's mean over seeds of ``diffs`` (arm minus baseline per seed), with a percentile
    interval from a two-level bootstrap: tasks resampled, then seeds within each task."""
    rng = np.random.default_rng(seed)
    tasks = list(diffs)
    point = float(np.mean([np.mean(diffs[t]) for t in tasks]))
    draws = np.empty(samples)
    for b in range(samples):
        picked = rng.integers(0, len(tasks), len(tasks))
        draws[b] = np.mean([np.mean(rng.choice(diffs[tasks[i]], len(diffs[tasks[i]]))) for i in picked])
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point, float(lo), float(hi)


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
    (Benavoli et al. 2016). ``matrix``: blocks x arms, higher is better; ``diff`` positive when ``a`` is better."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    for a, b in itertools.combinations(matrix.columns, 2):
        diff = (matrix[a] - matrix[b]).round(DECIMALS).to_numpy(float)
        w, p = wilcoxon_p(diff) if np.any(diff) else (math.nan, 1.0)
        rows.append({"a": a, "b": b, "n": len(diff), "zeros": int(np.sum(diff == 0)), "W": w, "p": p,
                     "diff": float(np.mean(diff)), "rank_biserial": rank_biserial(diff)})
    out = pd.DataFrame(rows, columns=["a", "b", "n", "zeros", "W", "p", "diff", "rank_biserial"])
    if len(out):
        out["p_holm"] = multipletests(out["p"].to_numpy(), method="holm")[1]
        out["significant"] = out["p_holm"] < alpha
    return out


def friedman_tests(matrix: pd.DataFrame, baseline: str | None, alpha: float, warnings: list[str],
                   higher: bool = True) -> dict:
    import scikit_posthocs as sp
    from statsmodels.stats.multitest import multipletests

    n, k = matrix.shape
    out: dict = {"blocks": n, "arms": k, "alpha": alpha}
    ranks = rank_blocks(matrix, higher).to_numpy(float)
    if k >= 3 and n >= 2:
        # tie-corrected (scipy's friedmanchisquare): ties are the rule with accuracies on a few hundred examples
        chi2 = friedman_statistic(ranks) / tie_correction(ranks)
        denom = n * (k - 1) - chi2
        f = (n - 1) * chi2 / denom if denom > 0 else math.inf
        p_perm, how = friedman_permutation_p(ranks)
        out["friedman"] = {"chi2": chi2, "df": k - 1, "p": float(stats.chi2.sf(chi2, k - 1)),
                           "p_permutation": p_perm, "permutation": how}
        out["iman_davenport"] = {"F": float(f), "df1": k - 1, "df2": (k - 1) * (n - 1),
                                 "p": float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if math.isfinite(f) else 0.0}
        out["nemenyi_cd"] = nemenyi_cd(k, n, alpha)
        out["max_rank_difference"] = float(k - 1)
        if out["nemenyi_cd"] > k - 1:
            warnings.append(f"Nemenyi critical difference {out['nemenyi_cd']:.2f} exceeds the largest possible rank "
                            f"difference {k - 1} over {n} blocks: no pair of arms can differ significantly")
        signed = matrix if higher else -matrix
        out["nemenyi_p"] = sp.posthoc_nemenyi_friedman(signed.to_numpy(float))
        out["nemenyi_p"].index = out["nemenyi_p"].columns = list(matrix.columns)
    elif k >= 3:
        warnings.append(f"Friedman test needs at least 2 complete blocks, got {n}: not computed")
    if k >= 2 and n >= 1:
        out["pairwise"] = pairwise_wilcoxon(matrix if higher else -matrix, alpha)
    if baseline is None or baseline not in matrix.columns:
        warnings.append("no dense baseline arm: Wilcoxon tests against it not computed")
        return out
    rows = []
    for arm in [c for c in matrix.columns if c != baseline]:
        diff = (matrix[arm] - matrix[baseline]).round(DECIMALS).to_numpy(float)
        if not higher:
            diff = -diff  # positive: the arm is better
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
        wil["p_holm"] = multipletests(wil["p"].to_numpy(), method="holm")[1]
        wil["significant"] = wil["p_holm"] < alpha
        # Holm multiplies the smallest p by m: nothing can be significant when even the comparison with the fewest
        # zero differences cannot reach alpha / m
        zeros = int(wil["zeros"].min())
        floor = smallest_wilcoxon_p(n, zeros)
        if m * floor >= alpha:
            need = next(b for b in range(n, 64 + n) if m * smallest_wilcoxon_p(b, zeros) < alpha)
            ties = f" ({zeros} of them zero differences in every comparison)" if zeros else ""
            warnings.append(f"Wilcoxon over {n} blocks{ties}: the smallest two-sided p it can give is {floor:.3g}, "
                            f"and Holm over {m} comparison(s) multiplies the smallest by {m} ({m * floor:.3g} >= "
                            f"alpha {alpha}): nothing can be significant; that needs at least {need} blocks (tasks)")
        if wil["zeros"].sum():
            warnings.append(f"{int(wil['zeros'].sum())} zero difference(s) from the baseline: split between the "
                            "signs (Demšar 2006), counted in the zeros column")
    out["wilcoxon"] = wil
    return out


def compare_to_baseline(chosen: pd.DataFrame, matrix: pd.DataFrame, metric: str, baseline: str, higher: bool,
                        rope: float, warnings: list[str], samples: int = 2000, alpha: float = 0.05) -> pd.DataFrame:
    """Per arm against the baseline: the mean difference (arm - baseline, in the metric's units; positive = better
    in its direction) over tasks, with a bootstrap interval (tasks resampled, then seeds within tasks, paired by
    seed), and the Bayesian signed-rank probabilities over the same blocks as the ranking."""
    sign = 1.0 if higher else -1.0
    rows = []
    per_seed = chosen.groupby(["task", "arm", "seed"])[metric].mean() if metric in chosen else pd.Series(dtype=float)
    for arm in [a for a in matrix.columns if a != baseline]:
        diffs = {}
        for task in dict.fromkeys(chosen["task"]):
            try:
                a, b = per_seed.loc[(task, arm)], per_seed.loc[(task, baseline)]
            except KeyError:
                continue
            common = a.index.intersection(b.index)
            if len(common):
                diffs[task] = sign * (a[common] - b[common]).round(DECIMALS).to_numpy(float)
        row = {"arm": arm, "vs": baseline}
        if diffs:
            mean, lo, hi = bootstrap_difference(diffs, samples, level=1 - alpha)
            row.update(diff=mean, ci_low=lo, ci_high=hi, tasks=len(diffs),
                       seeds=int(np.mean([len(d) for d in diffs.values()])))
        if len(matrix) >= 1:
            x, y = sign * matrix[arm].to_numpy(float), sign * matrix[baseline].to_numpy(float)
            if len(x) >= BAYES_MIN_BLOCKS:
                row["p_better"], row["p_rope"], row["p_worse"] = bayes_signed_rank(x, y, rope)
            # power: what this design could have detected, from the spread of the differences it saw
            spread = float(np.std(x - y, ddof=1)) if len(x) > 1 else math.nan
            row["sd_blocks"] = spread
            row["detectable"] = detectable_effect(len(x), len(matrix.columns) - 1, alpha, spread)
        rows.append(row)
    if rows and len(matrix) < BAYES_MIN_BLOCKS:
        warnings.append(f"Bayesian signed-rank not run: {len(matrix)} block(s), fewer than {BAYES_MIN_BLOCKS}; its "
                        "posterior would be mostly the prior's pseudo-observation (one task and one seed gave "
                        "P(better) = 0.998)")
    return pd.DataFrame(rows)


def analyse(df: pd.DataFrame, metric: str = tracking.OOD_SCORE, blocks: str | None = None,
            baseline: str | None = None, alpha: float = 0.05, higher: bool | None = None,
            rope: float = 0.01, bootstrap: int = 2000) -> Analysis:
    """The whole method (module docstring) on a trials DataFrame (``emoe.analysis.results.load_trials``).

    Args:
        higher: the metric's direction (None: known from its name, else ``ValueError``).
        rope: half-width of the region of practical equivalence of the Bayesian test, in the metric's units.
        bootstrap: resamples of the bootstrap intervals.
    """
    warnings: list[str] = []
    if df.empty:
        raise ValueError("no trial runs to analyse")
    up = higher_is_better(metric, higher)
    df = df.copy()
    df["task"] = df["task"].fillna("?") if "task" in df else "?"
    counts = df.groupby(["task", "arm"], sort=False)["outcome"].value_counts().unstack(fill_value=0)
    failed = int((df["outcome"] == "failed").sum())
    if failed:
        warnings.append(f"{failed} failed trial(s) left out of the means; each counts against its learning rate "
                        "(counted per arm in the table)")
    df = collapse_duplicates(df, warnings)
    chosen = selection.select(df, warnings)
    base = find_baseline(df, baseline)
    if blocks is None:  # GLUE-X's rank over tasks once there are several; else within-task evidence
        blocks = "tasks" if chosen["task"].nunique() > 1 else "sets"
    matrix = block_matrix(chosen, metric, blocks, warnings)
    ranks = rank_blocks(matrix, up) if not matrix.empty else pd.DataFrame()
    id_matrix = block_matrix(chosen, tracking.ID_SCORE, "tasks", warnings)
    id_ranks = rank_blocks(id_matrix) if not id_matrix.empty else pd.DataFrame()
    tests = friedman_tests(matrix, base, alpha, warnings, up) if not matrix.empty else {"blocks": 0}
    comparisons = compare_to_baseline(chosen, matrix, metric, base, up, rope, warnings, bootstrap, alpha) \
        if base is not None and not matrix.empty and base in matrix.columns else pd.DataFrame()

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
        "trials: completed and early-stopped used; failed ones count against their learning rate; duplicate cells "
        "averaged, never counted as seeds",
        f"selection: {selection.RULE}",
        f"ranking: seeds averaged first, values rounded to {DECIMALS} decimals; blocks = {BLOCK_NAMES[blocks]} on "
        f"{metric} ({'higher' if up else 'lower'} is better); 1 = best, ties averaged; ID ranks over tasks "
        "separately",
        f"tests: Friedman chi2 (Demšar 2006, tie-corrected as scipy's) with its asymptotic and permutation p, "
        f"Iman-Davenport F, Nemenyi CD (alpha={alpha}); pairwise Wilcoxon signed-rank between every pair of arms, Holm "
        f"over the pairs; Wilcoxon signed-rank vs {base or 'n/a'} (zeros split between the signs, exact p), Holm "
        f"correction, with the smallest difference it could detect at 80% power; mean difference with a {100 * (1 - alpha):g}% bootstrap interval (tasks, then seeds within "
        f"tasks), rank-biserial correlation, Bayesian signed-rank (baycomp; from {BAYES_MIN_BLOCKS} blocks) with a "
        f"region of practical equivalence of +-{rope:g}",
    ]
    return Analysis(table, ranks, id_ranks, tests, warnings, method, metric, base,
                    paper_table(table, id_ranks, chosen), blocks, up, comparisons, chosen)


def paper_table(table: pd.DataFrame, id_ranks: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """The paper's table, one row per arm: the average ID score over tasks, the average OOD score over tasks, and
    the GLUE-X Friedman rank over tasks (each task's OOD sets averaged into its ``ood_score``, seeds averaged, arms
    ranked within each task, 1 = best), beside the ID rank over tasks. Every average and rank is over the same tasks,
    those where every arm with a value has both an ID and an OOD score, and ``tasks`` says how many. An arm without
    a single value (every trial failed) is listed with no score and no rank (``failed``), not ranked among the rest,
    and does not empty the others' tasks. ``id_ranks`` is kept for callers; the ranks are computed here, on the
    common tasks."""
    id_col, ood_col = f"{tracking.ID_SCORE}_mean", f"{tracking.OOD_SCORE}_mean"
    if table.empty or id_col not in table:
        return pd.DataFrame()
    wide = {c: table.pivot_table(index="task", columns="arm", values=c, sort=False, dropna=False).round(DECIMALS)
            for c in (id_col, ood_col) if c in table}
    arms = list(dict.fromkeys(table["arm"]))
    ids = wide[id_col].reindex(columns=arms)
    scored = [a for a in arms if ids[a].notna().any()]
    ids = ids[scored].dropna()
    ood = wide[ood_col].reindex(columns=scored).dropna() if ood_col in wide else pd.DataFrame()
    common = [t for t in ids.index if ood.empty or t in ood.index]
    ids = ids.loc[common]
    ood = ood.loc[common] if not ood.empty else ood
    ood_ranks = rank_blocks(ood) if not ood.empty else pd.DataFrame()
    ranks_id = rank_blocks(ids) if not ids.empty else pd.DataFrame()
    rows = []
    for arm in arms:
        ok = arm in scored and len(common) > 0
        rows.append({"arm": arm, "tasks": len(common) if arm in scored else 0, "failed": arm not in scored,
                     "id_score": ids[arm].mean() if ok else math.nan,
                     "ood_score": ood[arm].mean() if ok and arm in ood else math.nan,
                     "ood_rank": ood_ranks[arm].mean() if ok and arm in ood_ranks else math.nan,
                     "id_rank": ranks_id[arm].mean() if ok else math.nan})
    return pd.DataFrame(rows)
