"""Issue 20: statistics that cannot mislead, checked by simulation through the report's own path.

Every simulation is seeded, so each test either always passes or always fails. Each test names the finding of
issue 20 it answers, and would fail on the code before it (OOD sets as blocks, a bootstrap over tasks then seeds,
failed cells dropped with their block, no primary analysis, no record of looks).
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from emoe.analysis import report
from emoe.analysis import selection
from emoe.analysis import stats as S

ARMS = ("dense", "a", "b", "c", "d", "e")


def null_sweep(rng, tasks, seeds, arms=ARMS, sets=4, model=0.01, set_noise=0.01, task_sd=0.05, lrs=(1e-4,)):
    """Trials of identical arms: each (task, arm, seed, rate) model draws one model effect (the seed-to-seed
    variation), each of its OOD sets adds its own noise; ``ood_score`` is the mean of the sets, as a trial logs it."""
    rows = []
    for t in range(tasks):
        level = rng.normal(0.7, task_sd)
        for arm in arms:
            for seed in range(seeds):
                for lr in lrs:
                    m = rng.normal(0, model)
                    row = {"task": f"t{t}", "arm": arm, "seed": seed, "learning_rate": lr, "outcome": "completed",
                           "method": "dense" if arm == "dense" else "emoe", "id_score": level + 0.1 + m}
                    values = level + m + rng.normal(0, set_noise, sets)
                    row.update({f"ood_score.s{k}": v for k, v in enumerate(values)})
                    row["ood_score"] = float(values.mean())
                    rows.append(row)
    return pd.DataFrame(rows)


def rejections(reps, seed, **design):
    """Share of null sweeps whose report calls something significant: (the primary family (any arm vs dense, Holm),
    the Friedman permutation test, the Friedman test with the task's OOD sets as blocks, as the report did before)."""
    rng = np.random.default_rng(seed)
    primary = friedman = sets = 0
    for _ in range(reps):
        df = null_sweep(rng, **design)
        a = S.analyse(df, bayes_samples=0)
        primary += bool(a.tests["wilcoxon"]["significant"].any())
        friedman += bool(a.tests.get("friedman", {}).get("significant", False))
        # what OOD sets as blocks would say about the same trials: one block per (task, set), seeds averaged
        cols = [c for c in df if c.startswith("ood_score.")]
        by_set = df.groupby(["task", "arm"], sort=False)[cols].mean().stack().unstack("arm")
        old = S.friedman_tests(by_set[list(ARMS)], None, 0.05, [])
        sets += old["friedman"]["p"] < 0.05
    return primary / reps, friedman / reps, sets / reps


# --- finding 0: a task's OOD sets are not independent blocks ---

@pytest.mark.slow  # 300 reports, about 50 s
@pytest.mark.parametrize("tasks, seeds, reps", [(1, 2, 120), (1, 4, 80), (8, 2, 100)])
def test_false_positive_rate_under_the_null_is_near_alpha(tasks, seeds, reps):
    """Six identical arms, four OOD sets with model and set noise equal: with one task the blocks are its seeds,
    with eight its tasks, and the report's tests reject about alpha of the time (the exact tests at most alpha, up
    to the simulation's error); the OOD sets as blocks reject most of the time."""
    primary, friedman, sets = rejections(reps, seed=tasks * 10 + seeds, tasks=tasks, seeds=seeds)
    assert primary <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / reps)
    assert friedman <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / reps)
    if tasks > 1:
        assert friedman >= 0.01  # near alpha, not merely conservative
    else:
        assert sets > 0.4  # the old path: pseudo-replication


def test_one_task_blocks_are_its_seeds():
    a = S.analyse(null_sweep(np.random.default_rng(0), tasks=1, seeds=3), bayes_samples=0)
    assert a.blocks == "seeds" and list(a.ranks.index) == [("t0", 0), ("t0", 1), ("t0", 2)]
    with pytest.raises(ValueError, match="unknown blocks 'sets-seeds'"):
        S.analyse(null_sweep(np.random.default_rng(0), tasks=1, seeds=3), blocks="sets-seeds")


# --- finding 5: intervals that say what they cover, and cover it ---

def coverage(tasks, seeds, reps=4000, seed=0, mean=0.01, task_sd=0.02, seed_sd=0.01):
    rng = np.random.default_rng(seed)
    hits = {"these": [], "new": []}
    for _ in range(reps):
        true = rng.normal(mean, task_sd, tasks)
        diffs = {f"t{i}": rng.normal(true[i], seed_sd, seeds) for i in range(tasks)}
        ci = S.difference_intervals(diffs, 0.95)
        for est, target in (("these", true.mean()), ("new", mean)):
            if ci[est] is not None:
                hits[est].append(ci[est][0] <= target <= ci[est][1])
            else:
                assert ci["why_not"][est]
    return {k: (np.mean(v) if v else None) for k, v in hits.items()}


@pytest.mark.parametrize("tasks", [1, 4, 8])
@pytest.mark.parametrize("seeds", [1, 2, 3, 5])
def test_intervals_cover_their_estimand(tasks, seeds):
    """95% intervals for "these tasks" (seed-to-seed noise only) and "a new task like them" (task-to-task too) cover
    0.935-0.965 of the time; where one cannot be estimated (one seed: these tasks; one task: a new task) there is
    none, with the reason. The bootstrap over tasks then seeds covered 0.50 at one task and two seeds."""
    cov = coverage(tasks, seeds, seed=100 * tasks + seeds)
    assert (cov["these"] is None) == (seeds == 1) and (cov["new"] is None) == (tasks == 1)
    for est, c in cov.items():
        if c is not None:
            assert 0.935 <= c <= 0.965, (est, c)


def test_no_interval_is_printed_where_none_can_be_and_the_report_says_why():
    a = S.analyse(null_sweep(np.random.default_rng(1), tasks=1, seeds=1), bayes_samples=0)
    c = a.comparisons.set_index("arm")
    assert c[["these_low", "new_low"]].isna().all().all()
    text = report.console(a)
    assert "these tasks: no interval (one seed per task: the seed-to-seed spread is unknown)" in text
    assert "a new task: no interval (one task: nothing measures how tasks differ)" in text


def test_a_nan_set_does_not_spread_over_its_task():
    """One arm's ood_score is NaN on one seed (one of its sets could not be scored): that seed leaves the mean
    difference, the task's other seeds and every other task stay."""
    df = null_sweep(np.random.default_rng(2), tasks=4, seeds=3, arms=("dense", "a", "b"))
    df.loc[(df["task"] == "t0") & (df["arm"] == "a") & (df["seed"] == 1), "ood_score"] = float("nan")
    a = S.analyse(df, bayes_samples=0)
    c = a.comparisons.set_index("arm")
    assert np.isfinite(c.loc["a", ["diff", "these_low", "these_high", "new_low", "new_high"]].astype(float)).all()
    assert a.tests["blocks"] == 4 and c.loc["a", "tasks"] == 4
    assert any("a vs dense: 1 seed(s) without a ood_score on one side left out" in w for w in a.warnings)
    assert any("1 chosen trial(s) without ood_score (a NaN score) left out of their cell's mean: t0/a" in w
               for w in a.warnings)


def test_metric_of_one_ood_set_over_several_tasks_compares_on_the_tasks_that_have_it():
    df = null_sweep(np.random.default_rng(3), tasks=3, seeds=2, arms=("dense", "a", "b"))
    df.loc[df["task"] != "t0", "ood_score.s1"] = float("nan")  # only t0 has set s1
    a = S.analyse(df, metric="ood_score.s1", bayes_samples=0)
    c = a.comparisons.set_index("arm")
    assert a.tests["blocks"] == 1 and np.isfinite(c.loc["a", "diff"]) and c.loc["a", "tasks"] == 1
    assert not any("dropped" in w for w in a.warnings)


# --- finding 2: a failed cell is never silently removed ---

def test_a_failed_cell_ranks_last_and_its_arm_has_no_average():
    """Arm a is best where it ran but failed on t2: before, t2 was dropped for every arm and a came out first; now a
    ranks last on t2, keeps its rank tests, and has no mean difference or average (a failed run has no size)."""
    rows = []
    for t, (a_score, b_score, d_score) in enumerate([(0.9, 0.8, 0.7), (0.9, 0.8, 0.7), (None, 0.8, 0.7)]):
        for arm, score in (("a", a_score), ("b", b_score), ("dense", d_score)):
            for seed in (0, 1):
                rows.append({"task": f"t{t}", "arm": arm, "seed": seed, "learning_rate": 1e-4,
                             "outcome": "failed" if score is None else "completed", "method": "emoe",
                             "id_score": score, "ood_score": None if score is None else score - 0.1 + seed / 1000})
    a = S.analyse(pd.DataFrame(rows), bayes_samples=0)
    assert a.tests["blocks"] == 3 and a.ranks.loc[("t2",), "a"] == 3.0
    assert a.ranks.mean().to_dict() == pytest.approx({"a": 5 / 3, "b": 5 / 3, "dense": 8 / 3})
    c = a.comparisons.set_index("arm")
    assert math.isnan(c.loc["a", "diff"]) and "a failed cell on t2" in c.loc["a", "why_not"]
    s = a.summary.set_index("arm")
    assert s.loc["a", "failed"] == "t2" and math.isnan(s.loc["a", "ood_score"]) and (s["tasks"] == 3).all()
    assert s.loc["b", "ood_score"] == pytest.approx(0.7 + 0.0005)
    text = report.console(a)
    assert "failed cell ranks last" in text and "no mean difference: a failed cell on t2" in text
    assert "| failed" not in text and "failed on" in text


def test_failed_seed_ranks_last_in_its_seed_block():
    df = null_sweep(np.random.default_rng(4), tasks=1, seeds=3, arms=("dense", "a", "b"))
    df.loc[(df["arm"] == "a") & (df["seed"] == 2), ["outcome", "id_score", "ood_score"]] = ["failed", None, None]
    a = S.analyse(df, bayes_samples=0)
    assert a.tests["blocks"] == 3 and a.ranks.loc[("t0", 2), "a"] == 3.0


# --- finding 3: the ID score is the selection criterion; say by how much it is inflated ---

def test_selection_inflation_is_measured_on_held_out_seeds():
    """Identical arms and rates: the selected rate's ID score is biased upwards (it was chosen for being high); the
    score of each seed at the rate chosen on the other seeds is not."""
    rng = np.random.default_rng(5)
    selected, held = [], []
    for _ in range(40):
        df = null_sweep(rng, tasks=1, seeds=4, arms=("dense",), task_sd=0.0, model=0.01, lrs=(1e-5, 1e-4, 1e-3))
        inf = selection.inflation(df)
        selected.append(inf["selected"].item() - 0.8)
        held.append(inf["held_out"].item() - 0.8)
    assert np.mean(selected) > 0.004  # about +0.5 sd of a 4-seed mean per rate, from choosing the best of three
    assert abs(np.mean(held)) < 0.002 and np.mean(selected) - np.mean(held) > 0.003
    a = S.analyse(df, bayes_samples=0)
    text = report.console(a)
    assert "the ID score is the selection criterion" in text and "Choosing the rate inflates it by" in text


def test_the_best_evaluation_choice_is_undone_with_the_curves():
    """keep_best reports each trial's best evaluation: under the null (every evaluation of every trial the same
    truth plus noise) that is biased upwards even with one rate; read at the step the other seeds' mean curve peaks
    at, each seed's held-out score is not."""
    rng = np.random.default_rng(14)
    selected, held, lr_only = [], [], []
    for _ in range(30):
        rows, curves = [], []
        for seed in range(4):
            for lr in (1e-4, 1e-3):
                run = f"r{seed}-{lr}"
                values = 0.8 + rng.normal(0, 0.01, 6)  # six evaluations
                curves += [{"run_id": run, "step": 10 * (i + 1), "value": v} for i, v in enumerate(values)]
                rows.append({"task": "t", "arm": "dense", "seed": seed, "learning_rate": lr, "run_id": run,
                             "outcome": "completed", "keep_best": "True", "id_score": values.max()})
        df, curves = pd.DataFrame(rows), pd.DataFrame(curves)
        inf = selection.inflation(df, curves=curves)
        assert inf["epochs"].item()
        selected.append(inf["selected"].item() - 0.8)
        held.append(inf["held_out"].item() - 0.8)
        lr_only.append(selection.inflation(df)["held_out"].item() - 0.8)
    assert np.mean(selected) > 0.012  # the best of six evaluations, then the better of two rates
    assert abs(np.mean(held)) < 0.003
    assert np.mean(lr_only) > 0.01  # without the curves the best-evaluation part stays in
    text = report.console(S.analyse(df, bayes_samples=0, curves=curves))
    assert "Choosing the rate and the best evaluation inflates it by" in text


def test_one_rate_inflates_nothing():
    df = null_sweep(np.random.default_rng(6), tasks=2, seeds=2, arms=("dense", "a"))
    inf = selection.inflation(df)
    assert (inf["inflation"] == 0).all() and (inf["held_out"] == inf["selected"]).all()
    assert "one learning rate per arm, so none was chosen on ID" in report.console(S.analyse(df, bayes_samples=0))


# --- finding 6: the diagram draws comparisons no other arm can move ---

def test_cd_diagram_draws_the_pairwise_wilcoxon_holm_cliques(monkeypatch, tmp_path):
    import scikit_posthocs as sp

    seen = {}

    def fake(ranks, sig_matrix, **kwargs):
        seen["sig"], seen["kwargs"] = sig_matrix, kwargs

    monkeypatch.setattr(sp, "critical_difference_diagram", fake)
    a = S.analyse(null_sweep(np.random.default_rng(7), tasks=6, seeds=2), bayes_samples=0)
    assert report.cd_diagram(a, tmp_path / "cd.png") is not None
    pw = a.tests["pairwise"]
    for _, r in pw.iterrows():
        assert seen["sig"].loc[r["a"], r["b"]] == r["p_holm"] == seen["sig"].loc[r["b"], r["a"]]
    assert "cd" not in seen["kwargs"]  # no Nemenyi critical difference drawn


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(8)
    for m in (1, 2, 5, 15):
        p = rng.random(m) ** 3
        np.testing.assert_allclose(S.holm(p), multipletests(p, method="holm")[1])
    np.testing.assert_allclose(S.holm(np.array([0.01, 0.01, 0.04])), [0.03, 0.03, 0.04])


# --- finding 7: one primary analysis, declared at launch; looks counted ---

def test_the_declared_primary_analysis_leads_and_the_rest_is_exploratory():
    df = null_sweep(np.random.default_rng(9), tasks=8, seeds=2, arms=("dense", "a", "b"))
    declared = S.Primary("ood_score", None, "dense", 0.05, 1)
    a = S.analyse(df, primary=declared, bayes_samples=0)
    assert a.status["primary"] and a.status["family_alpha"] == 0.05
    text = report.console(a).split("\n")
    lead = next(i for i, l in enumerate(text) if l.startswith(("PRIMARY", "EXPLORATORY")))
    assert text[lead].startswith("PRIMARY ANALYSIS (declared when the sweep was launched): ood_score over blocks = "
                                 "tasks, every arm against dense, alpha 0.05")
    assert any(l.startswith("Exploratory (not part of the primary family") for l in text[lead:])
    other = S.analyse(df, metric="id_score", primary=declared, bayes_samples=0)
    assert not other.status["primary"] and "metric id_score is not the declared ood_score" in other.status["why"]
    assert report.console(other).count("EXPLORATORY ANALYSIS") == 1
    assert not S.analyse(df, bayes_samples=0).status["primary"]  # nothing declared: exploratory


def test_looks_beyond_the_plan_are_exploratory_and_planned_looks_spend_alpha():
    df = null_sweep(np.random.default_rng(10), tasks=8, seeds=2, arms=("dense", "a", "b"))
    a = S.analyse(df, primary=S.Primary(planned_looks=1), looks=2, bayes_samples=0)
    assert not a.status["primary"] and any("look 2 at the results, 1 planned" in w for w in a.status["why"])
    b = S.analyse(df, primary=S.Primary(planned_looks=3), looks=2, bayes_samples=0)
    assert b.status["primary"] and b.status["family_alpha"] == pytest.approx(0.05 / 3)
    assert "look 2 of 3 planned: the family is tested at alpha / 3 = 0.01667" in report.console(b)


def test_adding_seeds_until_a_test_passes_keeps_its_alpha_when_spent_over_the_looks():
    """Optional stopping under the null: one arm against the baseline, blocks added in three looks (6, 9, 12) and
    stopped at the first look whose Wilcoxon p passes. At alpha each look the false-positive rate exceeds alpha;
    at alpha / 3 each look (the primary family's spending) it stays under alpha."""
    rng = np.random.default_rng(11)
    naive = spent = 0
    reps = 3000
    for _ in range(reps):
        d = rng.normal(0, 1, 12)
        ps = [S.wilcoxon_p(d[:n])[1] for n in (6, 9, 12)]
        naive += any(p < 0.05 for p in ps)
        spent += any(p < 0.05 / 3 for p in ps)
    assert naive / reps > 0.06 and spent / reps <= 0.05


def test_record_look_counts_new_data_only(tmp_path):
    from emoe import tracking

    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-looks")
    run = client.create_run(exp, tags={tracking.ROLE: "sweep"}).info.run_id
    assert tracking.record_look(client, run, 4) == 1
    assert tracking.record_look(client, run, 4) == 1  # the same results again: the same look
    assert tracking.record_look(client, run, 8, write=False) == 2
    assert client.get_run(run).data.tags[tracking.LOOKS] == "4"
    assert tracking.record_look(client, run, 8) == 2 and client.get_run(run).data.tags[tracking.LOOKS] == "4,8"


# --- finding 8: power in score points ---

def test_power_is_stated_in_score_points():
    a = S.analyse(null_sweep(np.random.default_rng(12), tasks=8, seeds=2, arms=("dense", "a", "b")),
                  bayes_samples=0)
    c = a.comparisons.set_index("arm")
    d = c.loc["a", "detectable"]
    assert np.isfinite(d) and f"{d:.4f} ({100 * d:.2f} points; SD of the differences" in report.console(a)
    # the effect scales with the spread: computed once per design
    assert S.detectable_effect(8, 2, 0.05, 2.0) == pytest.approx(2 * S.detectable_effect(8, 2, 0.05, 1.0))
    # and it is right: the exact test at alpha / 2 detects that mean difference 80% of the time
    rng = np.random.default_rng(13)
    unit = S.detectable_effect(8, 2, 0.05, 1.0)
    hits = np.mean([sps.wilcoxon(unit + rng.standard_normal(8), method="exact").pvalue < 0.025
                    for _ in range(2000)])
    assert 0.77 <= hits <= 0.83
