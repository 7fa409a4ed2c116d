"""Statistics a reviewer accepts: published reference values (Demšar 2006), baycomp, and one test per defect of the
audit (pooling, ties under float noise, direction, small N, Holm-aware power, selection with failures)."""

import math

import numpy as np
import pandas as pd
import pytest

from emoe import tracking
from emoe.analysis import report, results
from emoe.analysis import stats as S

# Demšar (2006), Table 6: four C4.5 variants on 14 data sets. The table prints three decimals; "voting" ties
# C4.5+cf and C4.5+m+cf at 0.975 there, but the paper's ranks (and so its chi2_F) come from unrounded values in
# which C4.5+cf is ahead (ranks 2 and 3): that order is kept here.
DEMSAR = np.array([
    [0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
    [0.628, 0.661, 0.654, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
    [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
    [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
    [0.972, 0.981, 0.9751, 0.9749], [0.957, 0.978, 0.946, 0.970]])


def test_demsar_worked_example():
    m = pd.DataFrame(DEMSAR, columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"])
    np.testing.assert_allclose(S.rank_blocks(m).mean().to_numpy(), [3.143, 2.000, 2.893, 1.964], atol=1e-3)
    out = S.friedman_tests(m, None, 0.05, [])
    # Demšar's chi2_F and F_F are the untied statistic (his table has ties: data sets 8 and 10) ...
    untied = S.friedman_statistic(S.rank_blocks(m).to_numpy(float))
    assert untied == pytest.approx(9.28, abs=0.005)
    assert 13 * untied / (14 * 3 - untied) == pytest.approx(3.69, abs=0.005)
    # ... the report's is tie-corrected, scipy's on the same matrix
    from scipy import stats

    assert out["friedman"]["chi2"] == pytest.approx(stats.friedmanchisquare(*DEMSAR.T).statistic, rel=1e-12)
    assert out["friedman"]["chi2"] > untied
    chi2 = out["friedman"]["chi2"]
    assert out["iman_davenport"]["F"] == pytest.approx(13 * chi2 / (14 * 3 - chi2))
    assert (out["iman_davenport"]["df1"], out["iman_davenport"]["df2"]) == (3, 39)
    assert out["nemenyi_cd"] == pytest.approx(1.25, abs=0.005)  # q_0.05 = 2.569 for k = 4


def test_exact_friedman_p_for_small_n():
    """k = 6 arms ranked identically by N = 3 blocks: the asymptotic p is 0.010, the exact one 1 / 720^2."""
    perfect = pd.DataFrame(np.tile(np.arange(6, 0, -1, dtype=float), (3, 1)))
    out = S.friedman_tests(perfect, None, 0.05, [])
    assert out["friedman"]["p"] == pytest.approx(0.0104, abs=1e-4)
    assert out["friedman"]["permutation"] == "exact"
    assert out["friedman"]["p_permutation"] == pytest.approx(1 / 720 ** 2)


def test_monte_carlo_friedman_p_agrees_with_the_asymptotic_one_at_large_n():
    rng = np.random.default_rng(1)
    m = pd.DataFrame(rng.normal(size=(30, 5)) + np.array([0, 0.3, 0.6, 0.0, 0.2]))
    out = S.friedman_tests(m, None, 0.05, [])
    assert out["friedman"]["permutation"] == "monte carlo"
    assert out["friedman"]["p_permutation"] == pytest.approx(out["friedman"]["p"], abs=0.01)


def dirichlet_signed_rank(x, y, rope, samples, seed):
    """Benavoli et al. (2014, 2017) written out: a Dirichlet process over the differences (a prior
    pseudo-observation at 0 of weight 0.5); each posterior draw gives the masses of the pairwise mean (z_i + z_j) / 2
    left of, inside and right of the rope, and the reported probability of a region is the share of draws in which
    it holds the largest mass."""
    z = np.concatenate([[0.0], np.asarray(y, float) - np.asarray(x, float)])
    alpha = np.ones(len(z))
    alpha[0] = 0.5
    pair = (z[:, None] + z[None, :]) / 2
    rng = np.random.default_rng(seed)
    wins = np.zeros(3)
    for w in rng.dirichlet(alpha, samples):
        ww = np.outer(w, w)
        lo = ww[pair < -rope].sum() + 0.5 * ww[pair == -rope].sum()
        hi = ww[pair > rope].sum() + 0.5 * ww[pair == rope].sum()
        wins[np.argmax([lo, 1 - lo - hi, hi])] += 1
    return tuple(wins / samples)


def test_bayesian_signed_rank_is_baycomps_and_matches_the_formula():
    from baycomp import SignedRankTest

    x = np.array([0.81, 0.84, 0.79, 0.88, 0.86, 0.80, 0.83, 0.85])
    y = np.array([0.80, 0.80, 0.80, 0.85, 0.86, 0.78, 0.80, 0.84])
    ours = S.bayes_signed_rank(x, y, rope=0.01, seed=3, samples=20000)
    direct = SignedRankTest.probs(x, y, rope=0.01, nsamples=20000, random_state=3)
    np.testing.assert_allclose(ours, direct)
    by_hand = dirichlet_signed_rank(x, y, 0.01, 20000, 5)
    np.testing.assert_allclose(ours, by_hand, atol=0.01)
    assert ours[0] > 0.9  # x is clearly better here


def _trials(rows, task="t"):
    df = pd.DataFrame(rows, columns=["arm", "seed", "learning_rate", "outcome", "id_score", "ood_score.a",
                                     "ood_score.b"])
    df["task"] = task
    df["ood_score"] = df[["ood_score.a", "ood_score.b"]].mean(axis=1)
    df["method"] = np.where(df["arm"] == "dense", "dense", "emoe")
    return df


def test_a_mathematical_tie_ranks_1_5_despite_float_noise():
    # seed means 0.15000000000000002 (0.1 + 0.2) / 2 and 0.15: equal, except in the last bit
    rows = [("x", 0, 1e-4, "completed", 0.8, 0.1, 0.3), ("x", 1, 1e-4, "completed", 0.8, 0.2, 0.3),
            ("dense", 0, 1e-4, "completed", 0.7, 0.15, 0.2), ("dense", 1, 1e-4, "completed", 0.7, 0.15, 0.2),
            ("y", 0, 1e-4, "completed", 0.6, 0.1, 0.1), ("y", 1, 1e-4, "completed", 0.6, 0.1, 0.1)]
    assert (0.1 + 0.2) / 2 != 0.15
    a = S.analyse(_trials(rows), metric="ood_score.a", blocks="tasks")
    assert a.ranks.loc[("t",), ["x", "dense"]].tolist() == [1.5, 1.5]
    assert a.tests["wilcoxon"].set_index("arm").loc["x", "zeros"] == 1


def test_train_loss_ranks_the_lowest_first_and_unknown_metrics_need_a_direction():
    df = _trials([("x", 0, 1e-4, "completed", 0.8, 0.5, 0.5), ("dense", 0, 1e-4, "completed", 0.7, 0.5, 0.5),
                  ("y", 0, 1e-4, "completed", 0.6, 0.5, 0.5)])
    df["train_loss"] = [0.1, 0.5, 0.9]
    a = S.analyse(df, metric="train_loss")
    assert a.ranks.iloc[0].to_dict() == {"x": 1.0, "dense": 2.0, "y": 3.0} and not a.higher_is_better
    df["odd"] = [0.1, 0.5, 0.9]
    with pytest.raises(ValueError, match="direction of metric 'odd' is unknown: pass --higher-is-better or "
                                         "--lower-is-better"):
        S.analyse(df, metric="odd")
    assert S.analyse(df, metric="odd", higher=False).ranks.iloc[0]["x"] == 1.0


def test_a_rate_that_diverged_on_one_seed_is_not_selected():
    rows = [("x", s, 1e-3, "completed", 0.95, 0.5, 0.5) for s in (0, 1)] + \
           [("x", 2, 1e-3, "failed", None, None, None)] + \
           [("x", s, 1e-4, "completed", 0.80, 0.5, 0.5) for s in (0, 1, 2)] + \
           [("dense", s, 1e-4, "completed", 0.7, 0.5, 0.5) for s in (0, 1, 2)]
    a = S.analyse(_trials(rows), metric="id_score")
    chosen = a.table.set_index("arm")
    assert chosen.loc["x", "learning_rate"] == 1e-4 and chosen.loc["x", "seeds"] == "0,1,2"
    assert any("learning rate(s) [0.001] had more failed (diverged) seeds than another rate (0)" in w
               for w in a.warnings)


def test_duplicate_cells_are_averaged_not_counted_as_seeds():
    rows = [("x", 0, 1e-4, "completed", 0.80, 0.5, 0.5), ("x", 0, 1e-4, "completed", 0.90, 0.5, 0.5),
            ("dense", 0, 1e-4, "completed", 0.70, 0.5, 0.5)]
    a = S.analyse(_trials(rows), metric="id_score")
    row = a.table.set_index("arm").loc["x"]
    assert row["seeds"] == "0" and row["id_score_mean"] == pytest.approx(0.85)
    assert any("repeat 1 (task, arm, seed, learning rate) cell(s)" in w for w in a.warnings)


@pytest.mark.parametrize("blocks, warned", [(7, True), (8, False)])
def test_power_warning_accounts_for_holm(blocks, warned):
    """6 arms: 5 comparisons with the baseline; Holm multiplies the smallest p (2 / 2^n) by 5, so nothing can be
    significant below 8 blocks (5 * 2 / 2^7 = 0.078)."""
    rng = np.random.default_rng(0)
    rows = []
    for task in range(blocks):
        for arm in ("a", "b", "c", "d", "e", "dense"):
            rows.append({"task": f"t{task}", "arm": arm, "seed": 0, "learning_rate": 1e-4, "outcome": "completed",
                         "id_score": rng.random(), "ood_score": rng.random(), "method": "emoe"})
    a = S.analyse(pd.DataFrame(rows))
    assert a.blocks == "tasks" and a.tests["blocks"] == blocks
    assert any("nothing can be significant" in w for w in a.warnings) == warned


def test_multi_task_report_shows_intervals_and_effect_sizes():
    rng = np.random.default_rng(0)
    rows = []
    for task in ("t1", "t2", "t3"):
        for arm, shift in (("a", 0.02), ("b", 0.0), ("dense", 0.0)):
            for seed in (0, 1, 2):
                rows.append({"task": task, "arm": arm, "seed": seed, "learning_rate": 1e-4, "outcome": "completed",
                             "id_score": 0.8 + shift + rng.normal(0, 0.001), "ood_score": 0.6 + shift + rng.normal(0, 0.001),
                             "method": "dense" if arm == "dense" else "emoe"})
    a = S.analyse(pd.DataFrame(rows))
    c = a.comparisons.set_index("arm")
    for est in ("these", "new"):  # both estimands: these three tasks, and a new task like them
        assert 0.01 < c.loc["a", f"{est}_low"] and c.loc["a", f"{est}_high"] < 0.03
        assert c.loc["b", f"{est}_low"] < 0 < c.loc["b", f"{est}_high"]
    assert c.loc["a", "diff"] == pytest.approx(0.02, abs=0.002)
    assert "p_better" not in c  # three blocks: too few for the Bayesian signed-rank (its prior would speak)
    assert any("Bayesian signed-rank not run: 3 block(s)" in w for w in a.warnings)
    assert a.tests["wilcoxon"].set_index("arm").loc["a", "rank_biserial"] == 1.0
    text = report.console(a)
    # two comparisons, Bonferroni: each interval at 97.5%, 95% simultaneously; the level follows --alpha
    assert "97.5% t-intervals (simultaneous 95% over the family)" in text and "rank-biserial" in text
    assert "95% t-intervals (simultaneous 90% over the family)" in report.console(S.analyse(pd.DataFrame(rows),
                                                                                           alpha=0.1))
    assert "these tasks: [" in text and "a new task: [" in text and "GLUE-X OOD rank" in text


def _log_sweep(client, exp, model, seeds, arms=("x", "dense")):
    parent = client.create_run(exp, tags={tracking.ROLE: "sweep", tracking.SWEEP: "s", tracking.FACTOR: "clustering"})
    for arm in arms:
        for seed in seeds:
            run = tracking.TrialRun(client, exp, f"{arm}-{seed}", parent_run_id=parent.info.run_id,
                                    tags={tracking.ARM: arm, tracking.TRIAL_ID: f"{parent.info.run_id}-{arm}-{seed}"})
            run.log_params({"task": "sst2", "seed": seed, "learning_rate": 1e-4, "model": model,
                            "method": "dense" if arm == "dense" else "emoe"})
            run.log_metrics({"id_score": 0.8, "ood_score": 0.6, "epoch": 1.0}, step=1)
            run.finish("completed")
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def test_one_sweep_by_default_and_pooling_refused_when_a_knob_differs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = tracking.client(uri)
    exp = tracking.get_or_create_experiment(client, "emoe-s")
    first = _log_sweep(client, exp, "minilm", (0, 1))
    second = _log_sweep(client, exp, "bert-base-cased", (0, 1))
    latest, sweep = results.load_trials(uri, "emoe-s")
    assert sweep["run_id"] == second and set(latest["parent_run_id"]) == {second} and len(latest) == 4
    assert set(results.load_trials(uri, "emoe-s", first)[0]["model"]) == {"minilm"}
    with pytest.raises(ValueError, match=r"cannot pool the sweeps: knob 'model' differs for arm '(x|dense)' "):
        results.load_trials(uri, "emoe-s", pool=True)
    exp2 = tracking.get_or_create_experiment(client, "emoe-t")  # same knobs, more seeds: poolable
    _log_sweep(client, exp2, "minilm", (0, 1))
    _log_sweep(client, exp2, "minilm", (2,))
    pooled, _ = results.load_trials(uri, "emoe-t", pool=True)
    a = S.analyse(pooled, metric="id_score")
    assert set(a.table["seeds"]) == {"0,1,2"} and pooled["parent_run_id"].nunique() == 2



# --- issue 20, findings 1 and 4: ties in the Friedman statistic; Wilcoxon's zeros, exact p and effect size ---

def test_friedman_is_tie_corrected_as_scipy():
    """Two-seed means of accuracies tie all the time: six arms x eight tasks with ties in every block."""
    rng = np.random.default_rng(4)
    matrix = np.round(rng.integers(150, 170, size=(8, 6)) / 200, 3)  # 200 examples: ties within blocks
    m = pd.DataFrame(matrix, columns=list("abcdef"))
    out = S.friedman_tests(m, None, 0.05, [])
    from scipy import stats

    ref = stats.friedmanchisquare(*matrix.T)
    assert out["friedman"]["chi2"] == pytest.approx(ref.statistic, rel=1e-12)
    assert out["friedman"]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert out["friedman"]["chi2"] > S.friedman_statistic(S.rank_blocks(m).to_numpy(float))


def test_rank_biserial_splits_zeros_as_the_test_does():
    """Seven zero differences and one tiny win: the test's p is 1, and r is no longer 1."""
    diff = np.array([0, 0, 0, 0, 0, 0, 0, 0.001])
    assert S.wilcoxon_p(diff)[1] == pytest.approx(1.0)
    # zeros take ranks 1-7 (4 each) split between the signs; the win rank 8: (8 + 14 - 14) / 36
    assert S.rank_biserial(diff) == pytest.approx(8 / 36)
    assert S.rank_biserial(np.array([0.1, 0.2, 0.3])) == 1.0 and S.rank_biserial(np.zeros(3)) == 0.0


def test_wilcoxon_p_is_exact_with_ties_and_zeros():
    """Fourteen blocks with ties and a zero: scipy's default falls back to the normal approximation (0.00215 here),
    the exact sign-flip p is 0.00122 (brute force over all 2^14 assignments)."""
    from conftest import exact_wilcoxon_p
    from scipy import stats

    d = np.array([0.02, 0.01, 0.03, 0.01, 0.02, 0.04, 0.05, 0.02, 0.01, 0.03, 0.02, 0.0, -0.01, 0.02])
    exact = exact_wilcoxon_p(d)
    assert S.wilcoxon_p(d)[1] == pytest.approx(exact, rel=1e-9)
    assert abs(stats.wilcoxon(d, zero_method="zsplit").pvalue - exact) > 5e-4  # what the report printed before


def test_power_warning_counts_zero_differences():
    """Eight tasks, five comparisons, one zero difference in each: the smallest p is 2 / 2^7, Holm's 5 x 0.0156 =
    0.078 > 0.05, so nothing can be significant and the report must say so."""
    rows = []
    for t in range(8):
        for arm in ("a", "b", "c", "d", "e", "dense"):
            score = 0.5 if t == 0 else 0.5 + (0.01 * (1 + "abcde".find(arm)) if arm != "dense" else 0.0)
            rows.append({"task": f"t{t}", "arm": arm, "seed": 0, "learning_rate": 1e-4, "outcome": "completed",
                         "id_score": score, "ood_score": score, "method": "emoe"})
    a = S.analyse(pd.DataFrame(rows))
    wil = a.tests["wilcoxon"]
    assert (wil["zeros"] == 1).all() and (wil["p_holm"] >= 0.05).all()
    assert any("nothing can be significant" in w and "1 of them zero differences" in w for w in a.warnings)


def test_rope_zero_works():
    assert S.bayes_signed_rank(np.array([0.3, 0.4, 0.5, 0.6]), np.array([0.2, 0.3, 0.4, 0.5]), rope=0.0)[1] == 0.0



# --- issue 20, finding 3: selection ---

def test_selection_prefers_fewer_failures_whatever_the_survivors_scored():
    """A failed seed at two rates, none at the third: the complete rate is chosen even though the survivors of an
    incomplete one score higher; when every rate lost seeds, the one that lost fewest."""
    from emoe.analysis.selection import select

    rows = [("x", s, 1e-3, "completed", 0.99, 0.5, 0.5) for s in (0, 1)] + [("x", 2, 1e-3, "failed", None, None, None)]
    rows += [("x", s, 3e-4, "completed", 0.97, 0.5, 0.5) for s in (0, 1)] + [("x", 2, 3e-4, "failed", None, None, None)]
    rows += [("x", s, 1e-4, "completed", 0.80, 0.5, 0.5) for s in (0, 1, 2)]
    assert set(select(_trials(rows))["learning_rate"]) == {1e-4}
    # every rate lost seeds: one survivor of two failures (0.99) does not beat two survivors of one (0.90)
    every_rate_failed = [("x", 0, 1e-3, "completed", 0.99, 0.5, 0.5)] + \
        [("x", s, 1e-3, "failed", None, None, None) for s in (1, 2)] + \
        [("x", s, 3e-4, "completed", 0.90, 0.5, 0.5) for s in (0, 1)] + [("x", 2, 3e-4, "failed", None, None, None)]
    assert set(select(_trials(every_rate_failed))["learning_rate"]) == {3e-4}


def test_a_rerun_cell_replaces_its_failed_attempt():
    """Under --pool a killed trial's cell was run again and completed: its rate is not barred."""
    from emoe.analysis.selection import select

    rows = [("x", s, 1e-3, "completed", 0.95, 0.5, 0.5) for s in (0, 1, 2)] + [("x", 2, 1e-3, "failed", None, None, None)]
    rows += [("x", s, 1e-4, "completed", 0.80, 0.5, 0.5) for s in (0, 1, 2)]
    warnings = []
    assert set(select(_trials(rows), warnings)["learning_rate"]) == {1e-3}
    assert not any("failed" in w for w in warnings)


def test_equal_means_tie_on_rounded_values_and_the_smaller_rate_wins():
    """0.1 + 0.2 + ... in another order: 0.15 and 0.15000000000000002 are one mean; the smaller rate is chosen."""
    from emoe.analysis.selection import select

    rows = [("x", 0, 1e-4, "completed", 0.1, 0.5, 0.5), ("x", 1, 1e-4, "completed", 0.2, 0.5, 0.5),
            ("x", 0, 1e-3, "completed", 0.2, 0.5, 0.5), ("x", 1, 1e-3, "completed", 0.1, 0.5, 0.5)]
    df = _trials(rows)
    df.loc[(df["learning_rate"] == 1e-3) & (df["seed"] == 0), "id_score"] = 0.2 + 1e-16 * 3  # noise in the last bit
    assert set(select(df)["learning_rate"]) == {1e-4}


def test_the_sweep_table_and_the_report_choose_alike_with_repeated_cells():
    """--num-samples repeats a cell: the sweep's closing table (select alone) averages it as the report does."""
    from emoe.analysis.selection import select

    rows = [("x", 0, 1e-4, "completed", 0.70, 0.5, 0.5), ("x", 0, 1e-4, "completed", 0.96, 0.5, 0.5),
            ("x", 0, 1e-3, "completed", 0.85, 0.5, 0.5), ("x", 0, 1e-3, "completed", 0.85, 0.5, 0.5)]
    df = _trials(rows)
    # cell means 0.83 (1e-4) and 0.85 (1e-3); a per-trial mean would pick the same, but a per-trial max would not:
    # the repeated cell counts once, at its mean, in both
    closing = select(df)
    report = S.analyse(df, metric="id_score").table.set_index("arm")
    assert set(closing["learning_rate"]) == {1e-3} == {report.loc["x", "learning_rate"]}
    assert len(closing) == 1  # one cell, not two seeds


# --- issue 20, finding 8: every report states its power ---

def test_signed_rank_critical_value_is_the_exact_tail():
    """n = 8 (null mean of W+ 18): the exact two-sided p of W- = 2 (deviation 16) is 6/256, of W- = 3 (15) 10/256
    = 0.039, of W- = 4 (14) 14/256 = 0.055 (scipy's exact test agrees)."""
    from scipy import stats

    assert stats.wilcoxon(np.array([-1, -2, 3, 4, 5, 6, 7, 8.0]), method="exact").pvalue == pytest.approx(10 / 256)
    assert stats.wilcoxon(np.array([1, 2, -3, -4, 5, 6, 7, 8.0]), method="exact").pvalue > 0.05  # W- = 7
    assert S.signed_rank_critical(8, 0.05) == 15.0 and S.signed_rank_critical(8, 0.03) == 16.0
    assert S.signed_rank_critical(8, 0.055) == 14.0 and S.signed_rank_critical(4, 0.05) is None


def test_detectable_effect_has_its_power():
    """At the reported effect, an independent simulation with scipy's exact Wilcoxon rejects about 80% of the time at
    alpha / m; with too few blocks nothing is detectable; the effect scales with the spread."""
    from scipy import stats

    n, m, sd = 10, 3, 0.02
    effect = S.detectable_effect(n, m, 0.05, sd)
    rng = np.random.default_rng(123)
    rejections = [stats.wilcoxon(effect + sd * rng.standard_normal(n), method="exact").pvalue < 0.05 / m
                  for _ in range(2000)]
    assert np.mean(rejections) == pytest.approx(0.8, abs=0.04)
    assert S.detectable_effect(n, m, 0.05, 2 * sd) == pytest.approx(2 * effect, rel=0.02)
    assert S.detectable_effect(4, 5, 0.05, sd) == math.inf
    assert math.isnan(S.detectable_effect(n, m, 0.05, 0.0))


def test_the_report_states_what_it_could_have_detected():
    rng = np.random.default_rng(1)
    rows = []
    for task in range(8):
        for arm in ("a", "b", "dense"):
            v = 0.7 + rng.normal(0, 0.02)
            rows.append({"task": f"t{task}", "arm": arm, "seed": 0, "learning_rate": 1e-4, "outcome": "completed",
                         "id_score": v, "ood_score": v, "method": "emoe"})
    a = S.analyse(pd.DataFrame(rows))
    c = a.comparisons.set_index("arm")
    assert np.isfinite(c.loc["a", "detectable"]) and c.loc["a", "detectable"] > 0
    text = report.console(a)
    assert "power: smallest mean difference detected 80% of the time" in text and "points; SD of the differences" in text


# --- issue 20, finding 6: comparisons that no other arm can move ---

def test_pairwise_comparison_does_not_depend_on_the_other_arms():
    """Benavoli et al. (2016): two arms' Nemenyi p moves with where three unrelated arms score (between the two, or
    above both); their pairwise Wilcoxon-Holm p does not (the Holm family is the same size in both designs)."""
    rng = np.random.default_rng(7)
    base = rng.normal(0.7, 0.02, 12)
    a = base + np.where(rng.random(12) < 0.75, 0.01, -0.01)  # a ahead of b in most blocks
    b = base
    results = []
    for where in ("between", "above"):
        others = (a + b) / 2 if where == "between" else np.maximum(a, b) + 0.1
        m = pd.DataFrame({"a": a, "b": b, **{f"o{i}": others + i * 1e-4 for i in range(3)}})
        out = S.friedman_tests(m, None, 0.05, [])
        pw = out["pairwise"].set_index(["a", "b"])
        results.append((out["nemenyi_p"].loc["a", "b"], pw.loc[("a", "b"), "p"]))
    (nemenyi_between, wil_between), (nemenyi_above, wil_above) = results
    assert wil_between == wil_above
    assert nemenyi_between < 0.05 < nemenyi_above  # "significant" or not, by where the others sit
    assert len(out["pairwise"]) == 10 and "p_holm" in out["pairwise"]


def test_wilcoxon_p_matches_brute_force_with_ties_zeros_and_one_pair():
    from conftest import exact_wilcoxon_p

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 8, 11):
        for _ in range(5):
            d = np.round(rng.normal(0.005, 0.01, n), 2)  # rounded: ties and zeros
            assert S.wilcoxon_p(d)[1] == pytest.approx(exact_wilcoxon_p(d), abs=1e-12)



def test_bayesian_test_runs_from_five_blocks_and_with_rope_zero():
    rng = np.random.default_rng(2)
    rows = [{"task": f"t{t}", "arm": arm, "seed": 0, "learning_rate": 1e-4, "outcome": "completed",
             "id_score": v, "ood_score": v, "method": "emoe"}
            for t in range(6) for arm, v in (("a", 0.72 + rng.normal(0, 0.002)), ("dense", 0.70))]
    c = S.analyse(pd.DataFrame(rows), rope=0.0).comparisons.set_index("arm")
    assert c.loc["a", "p_better"] > 0.9 and c.loc["a", "p_rope"] == 0.0
