"""Planning a sweep's power (``emoe.analysis.planning``) against independent computations: brute simulations with
scipy's exact Wilcoxon and t tests, exact enumeration of the signed-rank null, statsmodels' own sample-size solver,
and pandas for the pilot's variances. Monte Carlo comparisons allow 3 standard errors of both simulations; every
draw is seeded."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emoe.analysis import planning as P
from emoe.analysis.stats import Primary


def holm_rejects_first(p: np.ndarray, level: float) -> np.ndarray:
    """Holm's step-down procedure written out, per row of ``p`` (draws x arms): walk the sorted p-values, reject
    while p_(i) < level / (m - i + 1); whether the first arm was rejected."""
    out = np.zeros(len(p), dtype=bool)
    m = p.shape[1]
    for row, ps in enumerate(p):
        for step, arm in enumerate(np.argsort(ps, kind="stable")):
            if not ps[arm] * (m - step) < level:
                break
            if arm == 0:
                out[row] = True
                break
    return out


def brute_power(effect, sd, n, m, alpha, looks, draws, seed, test="wilcoxon"):
    """The family's rejection rate for the first arm by direct simulation: normal differences, scipy's exact
    Wilcoxon (or one-sample t) p of each arm, Holm over the arms."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, sd, size=(m, draws, n))
    d[0] += effect
    if test == "t":
        return float(np.mean(stats.ttest_1samp(d[0], 0.0, axis=1).pvalue < alpha / looks / m))
    p = np.stack([stats.wilcoxon(d[j], axis=1, method="exact").pvalue for j in range(m)], axis=1)
    return float(np.mean(holm_rejects_first(p, alpha / looks)))


def within(a, b, draws_a, draws_b, z=3.0):
    p = (a + b) / 2
    se = math.sqrt(max(p * (1 - p), 1e-4) * (1 / draws_a + 1 / draws_b))
    return abs(a - b) <= z * se


@pytest.mark.parametrize("effect, sd, n, m, looks", [(0.5, 1.0, 10, 1, 1), (0.02, 0.02, 10, 3, 1),
                                                     (0.01, 0.01, 12, 2, 2)])
def test_wilcoxon_power_is_the_families_rejection_rate(effect, sd, n, m, looks):
    mine = P.power(effect, sd, n, comparisons=m, looks=looks, draws=4000, seed=0)
    brute = brute_power(effect, sd, n, m, 0.05, looks, 3000, seed=11)
    assert 0.1 < brute < 0.9  # a design where power is informative, not saturated
    assert within(mine, brute, 4000, 3000), (mine, brute)


def test_same_draws_same_decisions_as_scipys_exact_wilcoxon_and_holm():
    """On the very draws ``power`` uses (documented in ``planning._normals``: standard normal, [blocks, draws,
    arms]), scipy's exact p and Holm written out flag the first arm in exactly the same share of draws; Bonferroni
    would flag fewer (Holm's step-down matters in this design, so the check tells them apart)."""
    effect, n, m, draws = 1.0, 10, 3, 3000
    z = np.random.default_rng(0).standard_normal((n, draws, m))
    d = np.moveaxis(z, 0, -1).copy()
    d[:, 0] += effect
    p = np.stack([stats.wilcoxon(d[:, j], axis=1, method="exact").pvalue for j in range(m)], axis=1)
    holm = float(np.mean(holm_rejects_first(p, 0.05)))
    assert P.power(effect, 1.0, n, comparisons=m, draws=draws, seed=0) == holm
    assert float(np.mean(p[:, 0] * m < 0.05)) < holm


@pytest.mark.parametrize("effect, sd, n, m, looks", [(0.5, 1.0, 10, 1, 1), (0.02, 0.02, 10, 3, 2)])
def test_t_power_is_the_paired_t_tests_rejection_rate_at_bonferroni(effect, sd, n, m, looks):
    mine = P.power(effect, sd, n, comparisons=m, looks=looks, test="t")
    brute = brute_power(effect, sd, n, m, 0.05, looks, 40_000, seed=12, test="t")
    assert within(mine, brute, 10 ** 9, 40_000), (mine, brute)


def exact_size(n: int, alpha: float) -> float:
    """P(exact two-sided signed-rank p < alpha) under the null, by enumerating all 2^n sign patterns of ranks 1..n."""
    centre = n * (n + 1) / 4
    w = np.array([sum(r for r, s in zip(range(1, n + 1), signs) if s)
                  for signs in itertools.product((0, 1), repeat=n)])
    dev = np.abs(w - centre)
    p = np.array([np.mean(dev >= x - 1e-9) for x in dev])
    return float(np.mean(p < alpha))


def test_power_at_no_effect_is_the_tests_size_at_most_alpha():
    size = exact_size(10, 0.05)
    assert size <= 0.05
    assert within(P.power(0.0, 1.0, 10, draws=4000), size, 4000, 10 ** 9)
    assert P.power(0.0, 0.01, 12, comparisons=3, draws=4000) <= 0.05  # Holm keeps the family's error under alpha
    assert P.power(0.0, 0.01, 12, comparisons=1, looks=2, draws=4000) <= 0.05 / 2 + 3 * math.sqrt(0.025 * 0.975 / 4000)


def test_smallest_blocks_is_the_first_design_whose_best_p_passes_holm():
    """With every difference positive scipy's exact p is the smallest there is (2 / 2^n)."""
    for m, alpha, looks in [(1, 0.05, 1), (3, 0.05, 1), (5, 0.05, 2), (2, 0.01, 1)]:
        n = P.smallest_blocks(m, alpha, looks)
        best = lambda k: stats.wilcoxon(np.arange(1.0, k + 1), method="exact").pvalue  # noqa: E731
        assert m * best(n) < alpha / looks <= m * best(n - 1)
        assert P.power(100.0, 1.0, n - 1, comparisons=m, alpha=alpha, looks=looks) == 0.0


@pytest.mark.parametrize("effect, m, looks", [(0.6, 1, 1), (0.9, 3, 2)])
def test_blocks_needed_is_the_fewest_that_reach_the_target(effect, m, looks):
    n = P.blocks_needed(effect, 1.0, 0.8, comparisons=m, looks=looks)
    assert n is not None and n > P.smallest_blocks(m, 0.05, looks)
    assert P.power(effect, 1.0, n, comparisons=m, looks=looks) >= 0.8 > P.power(effect, 1.0, n - 1, comparisons=m,
                                                                                  looks=looks)
    # a difference large enough for any design: the smallest that can flag anything
    assert P.blocks_needed(50.0, 1.0, comparisons=m, looks=looks) == P.smallest_blocks(m, 0.05, looks)
    assert P.blocks_needed(0.01, 1.0, cap=40) is None


def test_blocks_needed_for_the_t_test_is_statsmodels_sample_size():
    from statsmodels.stats.power import TTestPower

    for effect, m in [(0.5, 1), (0.3, 4)]:
        solved = TTestPower().solve_power(effect_size=effect, alpha=0.05 / m, power=0.8, alternative="two-sided")
        assert P.blocks_needed(effect, 1.0, comparisons=m, test="t") == math.ceil(solved)


def test_seeds_needed_reproduces_the_block_sd_formula():
    effect, within_sd, between_sd, tasks = 0.01, 0.02, 0.004, 10
    s = P.seeds_needed(effect, within_sd, between_sd, tasks)
    assert s is not None and s > 1
    sd = lambda k: math.sqrt(between_sd ** 2 + within_sd ** 2 / k)  # noqa: E731
    assert P.power(effect, sd(s), tasks) >= 0.8 > P.power(effect, sd(s - 1), tasks)
    # one task: the blocks are its seeds
    assert P.seeds_needed(effect, within_sd, between_sd, 1) == P.blocks_needed(effect, within_sd, cap=50)
    # a between-task SD larger than the difference: no number of seeds helps 8 tasks; more tasks would
    assert P.seeds_needed(0.01, 0.01, 0.05, 8) is None
    assert P.seeds_needed(0.01, 0.01, 0.001, 4) is None  # 4 tasks cannot flag anything (6 needed)


def test_friedman_power_is_alpha_at_equal_means_and_matches_a_hand_written_friedman():
    size = P.friedman_power([0.3, 0.3, 0.3, 0.3], 1.0, 20, draws=4000)
    assert size == pytest.approx(0.05, abs=0.015)  # the chi-square approximation is close at 20 blocks
    means, n, draws = np.array([0.0, 0.4, 0.8]), 10, 2000
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(draws):
        r = stats.rankdata(means + rng.standard_normal((n, 3)), axis=1)
        chi2 = 12 * n / (3 * 4) * (np.sum(r.mean(axis=0) ** 2) - 3 * 16 / 4)  # Demšar (2006), eq. (1)
        hits += stats.chi2.sf(chi2, 2) < 0.05
    mine = P.friedman_power(means, 1.0, n, draws=draws)
    assert within(mine, hits / draws, draws, draws), (mine, hits / draws)


@pytest.mark.parametrize("sd, width, m, level", [(1.0, 0.8, 3, 0.95), (0.02, 0.02, 1, 0.9)])
def test_width_needed_gives_a_mean_width_within_the_target_and_one_block_fewer_does_not(sd, width, m, level):
    n = P.width_needed(sd, width, comparisons=m, level=level)
    rng = np.random.default_rng(7)
    q = 1 - (1 - level) / m / 2

    def simulated(k):
        s = rng.normal(0.0, sd, size=(100_000, k)).std(axis=1, ddof=1)
        w = 2 * stats.t.ppf(q, k - 1) * s / math.sqrt(k)
        return w.mean(), w.std() / math.sqrt(len(w))

    mean_n, se_n = simulated(n)
    mean_less, se_less = simulated(n - 1)
    assert mean_n + 3 * se_n <= width < mean_less - 3 * se_less
    assert P.expected_width(sd, n, m, level) == pytest.approx(mean_n, abs=4 * se_n)


def pilot_trials(seed=3, tasks=5, seeds=4):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        task_effect = {"dense": 0.0, "a": rng.normal(0.01, 0.01), "b": rng.normal(-0.005, 0.02)}
        for s in range(seeds):
            for arm in ("dense", "a", "b"):
                rows.append({"task": f"t{t}", "seed": s, "arm": arm,
                             "value": 0.7 + 0.05 * t + task_effect[arm] + rng.normal(0, 0.015)})
    df = pd.DataFrame(rows)
    # b lost one seed on task t1: a NaN score
    df.loc[(df["task"] == "t1") & (df["seed"] == 2) & (df["arm"] == "b"), "value"] = np.nan
    return df


def test_pilot_variances_match_a_direct_computation():
    df = pilot_trials()
    warnings = []
    out = P.pilot_variances(df, warnings=warnings).set_index("arm")
    assert list(out.index) == ["a", "b"] and set(out["vs"]) == {"dense"}
    assert any("b vs dense: 1 (task, seed) pair(s)" in w for w in warnings)
    wide = df.pivot_table(index=["task", "seed"], columns="arm", values="value")
    for arm in ("a", "b"):
        d = (wide[arm] - wide["dense"]).dropna()
        g = d.groupby(level="task")
        pooled = math.sqrt((g.var(ddof=1) * (g.size() - 1)).sum() / (g.size() - 1).sum())
        task_sd = g.mean().std(ddof=1)
        between = math.sqrt(max(0.0, task_sd ** 2 - pooled ** 2 * (1 / g.size()).mean()))
        row = out.loc[arm]
        assert row["within_sd"] == pytest.approx(pooled, rel=1e-9)
        assert row["task_mean_sd"] == pytest.approx(task_sd, rel=1e-9)
        assert row["between_sd"] == pytest.approx(between, rel=1e-9, abs=1e-12)
        assert row["mean_diff"] == pytest.approx(g.mean().mean(), rel=1e-9)
        assert row["tasks"] == 5 and row["seeds"] == pytest.approx(g.size().mean())
    lower = P.pilot_variances(df, metric="value", higher=False).set_index("arm")
    assert lower.loc["a", "mean_diff"] == pytest.approx(-out.loc["a", "mean_diff"])
    assert lower.loc["a", "within_sd"] == pytest.approx(out.loc["a", "within_sd"])


def test_pilot_variances_choose_the_learning_rate_from_raw_trials():
    """Raw trials (two rates, the worse one far off) give what their chosen trials give."""
    from emoe.analysis.selection import select

    chosen = pilot_trials().dropna()
    worse = chosen.assign(value=chosen["value"] - 0.3, learning_rate=1e-3)
    raw = pd.concat([chosen.assign(learning_rate=1e-4), worse], ignore_index=True)
    raw = raw.assign(outcome="completed", id_score=raw["value"])
    pd.testing.assert_frame_equal(P.pilot_variances(raw), P.pilot_variances(select(raw)))
    assert P.pilot_variances(raw)["mean_diff"].to_numpy() == pytest.approx(
        P.pilot_variances(chosen)["mean_diff"].to_numpy())


def test_plan_lines_state_the_family_and_each_arms_power_and_needs():
    lines = P.plan_lines(["dense", "a", "b"], tasks=8, seeds=3, primary=Primary(alpha=0.05, planned_looks=2),
                         within_sd=0.01, between_sd=0.004)
    assert "2 arm(s) vs dense over 8 block(s)" in lines[0] and "alpha 0.025" in lines[0]
    sd = math.sqrt(0.004 ** 2 + 0.01 ** 2 / 3)
    p = P.power(0.01, sd, 8, comparisons=2, looks=2)
    need = P.blocks_needed(0.01, sd, comparisons=2, looks=2)
    seeds = P.seeds_needed(0.01, 0.01, 0.004, 8, comparisons=2, looks=2)
    a = next(line for line in lines if line.startswith("a vs dense"))
    assert f"power {p:.0%}" in a and f"needs {need} tasks at 3 seed(s)" in a and f"or {seeds} seed(s) per task" in a
    # too few blocks: said so; a pilot's SDs are used; a dominating between-task SD is named
    pilot = pd.DataFrame([{"arm": "a", "tasks": 4, "seeds": 3.0, "within_sd": 0.01, "between_sd": 0.05}])
    lines = P.plan_lines(["dense", "a"], tasks=8, seeds=3, pilot=pilot)
    assert "pilot: 4 task(s)" in lines[-1] and "between-task SD 0.05 stays" in lines[-1]
    lines = P.plan_lines(["dense", "a"], tasks=1, seeds=5, within_sd=0.01)
    assert any("nothing can be significant" in line and "at least 6 blocks" in line for line in lines)
    with pytest.raises(ValueError, match="no arm named dense among the arms a, b"):
        P.plan_lines(["a", "b"], tasks=2, seeds=2, within_sd=0.01)
    with pytest.raises(ValueError, match="baseline arm 'c' not among the arms a, b"):
        P.plan_lines(["a", "b"], tasks=2, seeds=2, primary=Primary(baseline="c"), within_sd=0.01)


def test_invalid_designs_are_one_line_errors_naming_the_choices():
    with pytest.raises(ValueError, match="unknown test 'z'; valid choices: wilcoxon, t"):
        P.power(0.1, 1.0, 10, test="z")
    with pytest.raises(ValueError, match="sd 0"):
        P.power(0.1, 0, 10)
    with pytest.raises(ValueError, match="3 or more arms"):
        P.friedman_power([0.0, 1.0], 1.0, 10)
