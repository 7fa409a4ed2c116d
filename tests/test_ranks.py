"""Ranks with intervals, IQM and probability of improvement, performance profiles, budget curves and the grid check,
each against an independent computation: brute-force enumeration, closed forms, scipy, a direct count, a coverage
simulation from a known model, and rliable's own interval estimates."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emoe.analysis import ranks as R


def long_values(x: np.ndarray, arms=None) -> pd.DataFrame:
    """``x``: ``[tasks, seeds, arms]`` -> the long ``task, seed, arm, value`` frame."""
    t, s, a = np.meshgrid(*map(np.arange, x.shape), indexing="ij")
    arms = np.array(arms if arms is not None else [f"arm{i}" for i in range(x.shape[2])], dtype=object)
    return pd.DataFrame({"task": [f"task{i}" for i in t.ravel()], "seed": s.ravel(), "arm": arms[a.ravel()],
                         "value": x.ravel()})


# --- expected_max (Dodge et al. 2019) ---

def brute_force_max(scores, n):
    """Mean and std of the max over every one of the N^n equally likely draws with replacement."""
    maxes = np.array([max(draw) for draw in itertools.product(scores, repeat=n)])
    return maxes.mean(), maxes.std()


@pytest.mark.parametrize("scores", [[0.3, 0.1, 0.7, 0.3], [2.0, -1.0, 5.5, 0.25], [0.5]])
def test_expected_max_and_std_equal_brute_force_enumeration(scores):
    for n in (1, 2, 3):
        mean, std = brute_force_max(scores, n)
        assert R.expected_max(scores, n) == pytest.approx(mean, abs=1e-12)
        assert R.expected_max_std(scores, n) == pytest.approx(std, abs=1e-12)
    np.testing.assert_allclose(R.expected_max(scores, np.array([1, 2, 3])),
                               [brute_force_max(scores, n)[0] for n in (1, 2, 3)], atol=1e-12)


def test_expected_max_limits_and_uniform_closed_form():
    u = np.random.default_rng(0).random(20_000)
    n = np.array([1, 2, 5, 10, 30])
    # the max of n U(0, 1) draws has mean n / (n + 1) and variance n / ((n + 1)^2 (n + 2))
    np.testing.assert_allclose(R.expected_max(u, n), n / (n + 1), atol=0.01)
    np.testing.assert_allclose(R.expected_max_std(u, n), np.sqrt(n / ((n + 1) ** 2 * (n + 2))), atol=0.01)
    x = np.random.default_rng(1).normal(size=50)
    assert R.expected_max(x, 1) == pytest.approx(x.mean(), abs=1e-12)  # one draw: the mean
    assert R.expected_max(x, 100_000) == pytest.approx(x.max(), abs=1e-12)  # many: the max
    assert R.expected_max_std(x, 100_000) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(R.expected_max(x, np.arange(1, 60))) >= 0)  # more configurations never hurt
    for bad in (0, 1.5, -2):
        with pytest.raises(ValueError, match="n must be whole numbers"):
            R.expected_max(x, bad)
    with pytest.raises(ValueError, match="empty"):
        R.expected_max([], 1)


def test_budget_curves_per_task_and_arm():
    trials = pd.DataFrame({
        "task": ["sst2"] * 7, "arm": ["dense"] * 4 + ["gmoe"] * 3, "seed": [0, 1, 0, 1, 0, 1, 0],
        "learning_rate": [1e-5, 1e-5, 3e-5, 3e-5, 1e-5, 1e-5, 3e-5],
        "outcome": ["completed"] * 6 + ["failed"], "id_score": [0.8, 0.9, 0.7, 0.6, 0.5, 0.95, np.nan]})
    warnings = []
    curves = R.budget_curves(trials, warnings=warnings)
    dense = curves[curves["arm"] == "dense"]
    assert list(dense["n"]) == [1, 2, 3, 4]  # default max_n: the arm's trials
    assert dense["expected_max"].iloc[0] == pytest.approx(0.75)
    brute = [brute_force_max([0.8, 0.9, 0.7, 0.6], n) for n in (1, 2, 3, 4)]
    np.testing.assert_allclose(dense["expected_max"], [m for m, _ in brute])
    np.testing.assert_allclose(dense["std"], [s for _, s in brute])
    assert list(curves[curves["arm"] == "gmoe"]["n"]) == [1, 2]  # the failed trial is not a configuration
    assert any("failed" in w for w in warnings)
    # a lower-is-better metric: the expected minimum
    loss = R.budget_curves(trials.assign(train_loss=trials["id_score"]), metric="train_loss", max_n=3)
    np.testing.assert_allclose(loss[loss["arm"] == "dense"]["expected_max"],
                               [-brute_force_max([-0.8, -0.9, -0.7, -0.6], n)[0] for n in (1, 2, 3)])


# --- rank_intervals ---

def test_mean_ranks_equal_rankdata_per_task():
    x = np.random.default_rng(2).normal(size=(6, 3, 4)).round(1)  # rounded: ties between seed means happen
    x[0, :, 1] = x[0, :, 2]  # and one certain tie
    for higher in (True, False):
        out = R.rank_intervals(long_values(x), higher=higher, n_boot=200)
        means = x.mean(axis=1)
        expected = np.mean([stats.rankdata(-m if higher else m) for m in means], axis=0)
        np.testing.assert_allclose(out["mean_rank"], expected, atol=1e-12)
        assert (out["blocks"] == 6).all() and out.attrs["blocks_are"] == "tasks"
        assert out["p_first"].sum() == pytest.approx(1.0)
        assert ((out["low"] <= out["mean_rank"]) & (out["mean_rank"] <= out["high"])).all()


def test_one_task_ranks_each_seed():
    x = np.random.default_rng(3).normal(size=(1, 7, 3))
    out = R.rank_intervals(long_values(x), n_boot=300)
    expected = np.mean([stats.rankdata(-row) for row in x[0]], axis=0)
    np.testing.assert_allclose(out["mean_rank"], expected, atol=1e-12)
    assert (out["blocks"] == 7).all() and out.attrs["blocks_are"] == "seeds"
    assert out["p_first"].sum() == pytest.approx(1.0)


def test_p_first_and_reproducibility():
    x = np.random.default_rng(4).normal(size=(8, 3, 4))
    x[..., 2] += 10  # arm2 best in every task and seed
    out = R.rank_intervals(long_values(x), n_boot=500, seed=7)
    np.testing.assert_allclose(out["p_first"], [0, 0, 1, 0])
    assert out.loc[2, "low"] == out.loc[2, "high"] == 1.0
    pd.testing.assert_frame_equal(out, R.rank_intervals(long_values(x), n_boot=500, seed=7))
    tied = R.rank_intervals(long_values(np.zeros((5, 2, 4))), n_boot=50)  # every arm tied everywhere
    np.testing.assert_allclose(tied["p_first"], 0.25)
    np.testing.assert_allclose(tied["mean_rank"], 2.5)


def test_seeds_are_resampled_within_tasks():
    """Every task an exact copy: resampling tasks alone would give zero width; the seeds drawn within each task
    must move the ranks."""
    x = np.tile(np.random.default_rng(5).normal(size=(1, 4, 3)), (6, 1, 1))
    out = R.rank_intervals(long_values(x), n_boot=500)
    assert (out["high"] - out["low"] > 0).all()


def test_missing_values_drop_with_a_warning():
    x = np.random.default_rng(6).normal(size=(5, 3, 3))
    values = long_values(x)
    values = values.drop(values[(values["task"] == "task1") & (values["arm"] == "arm0")].index)  # arm0 lacks task1
    values.loc[(values["task"] == "task2") & (values["seed"] == 1) & (values["arm"] == "arm2"), "value"] = np.nan
    warnings = []
    out = R.rank_intervals(values, n_boot=100, warnings=warnings)
    assert (out["blocks"] == 4).all()
    assert any("task1" in w and "task dropped" in w for w in warnings)
    assert any("task2/seed 1" in w and "left out" in w for w in warnings)
    # task2 compared on seeds 0 and 2 for every arm
    kept = [t for t in range(5) if t != 1]
    means = [x[t, [0, 2]].mean(axis=0) if t == 2 else x[t].mean(axis=0) for t in kept]
    np.testing.assert_allclose(out["mean_rank"], np.mean([stats.rankdata(-m) for m in means], axis=0))
    assert out.attrs["warnings"] == warnings
    with pytest.raises(ValueError, match="2 or more arms"):
        R.rank_intervals(values[values["arm"] == "arm1"])


# Coverage: arms with fixed offsets, a task x arm interaction drawn from a population, seed noise.
OFFSETS = np.array([0.0, 0.25, 0.45, 0.5])
SD_TASK_ARM, SD_SEED, SEEDS = 0.5, 0.6, 3


def simulate(rng, tasks):
    task = rng.normal(0, 1, (tasks, 1, 1))  # moves every arm alike: no effect on ranks
    return task + OFFSETS + rng.normal(0, SD_TASK_ARM, (tasks, 1, 4)) + rng.normal(0, SD_SEED, (tasks, SEEDS, 4))


def test_rank_interval_coverage():
    """The population's expected mean rank (a new task, 3 seeds) by a large Monte Carlo; the 90% interval from
    12 tasks x 3 seeds covers it in 80-97% of 150 simulated studies. Resampling the seeds alone covers ~65%."""
    rng = np.random.default_rng(11)
    truth = stats.rankdata(-simulate(rng, 300_000).mean(axis=1), axis=1).mean(axis=0)
    covered = []
    for study in range(150):
        out = R.rank_intervals(long_values(simulate(rng, 12)), n_boot=400, level=0.90, seed=study)
        covered.append(((out["low"] <= truth) & (truth <= out["high"])).to_numpy())
    covered = np.array(covered)
    assert 0.80 <= covered.mean() <= 0.97, covered.mean(axis=0)
    assert (covered.mean(axis=0) >= 0.75).all(), covered.mean(axis=0)


# --- improvement (rliable) ---

def test_iqm_and_probability_of_improvement_against_direct_computation():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 5, 3)).round(1)  # [tasks, seeds, arms]: rounded, so some runs tie across arms
    x[:, :, 1] += 0.3
    values = long_values(x, arms=["dense", "gmoe", "emoe"])
    out = R.improvement(values, baseline="dense", n_boot=300).set_index("arm")
    for i, arm in enumerate(["dense", "gmoe", "emoe"]):
        assert out.loc[arm, "iqm"] == pytest.approx(stats.trim_mean(x[:, :, i].ravel(), 0.25), abs=1e-12)
        assert out.loc[arm, "iqm_low"] <= out.loc[arm, "iqm"] <= out.loc[arm, "iqm_high"]

    def direct(a, b):  # per task: P(A > B) + P(A = B) / 2 over every pair of runs, averaged over tasks
        return np.mean([np.mean([(u > v) + 0.5 * (u == v) for u in a[t] for v in b[t]]) for t in range(len(a))])

    for i, arm in [(1, "gmoe"), (2, "emoe")]:
        assert out.loc[arm, "p_improve"] == pytest.approx(direct(x[:, :, i], x[:, :, 0]), abs=1e-12)
        assert out.loc[arm, "p_low"] <= out.loc[arm, "p_improve"] <= out.loc[arm, "p_high"]
    assert np.isnan(out.loc["dense", ["p_improve", "p_low", "p_high"]].astype(float)).all()
    # lower is better: the IQM is the same number, improvement means a lower value
    low = R.improvement(values, higher=False, baseline="dense", n_boot=300).set_index("arm")
    np.testing.assert_allclose(low["iqm"], out["iqm"], atol=1e-12)
    assert (low["iqm_low"] <= low["iqm"]).all() and (low["iqm"] <= low["iqm_high"]).all()
    assert low.loc["gmoe", "p_improve"] == pytest.approx(direct(-x[:, :, 1], -x[:, :, 0]), abs=1e-12)
    with pytest.raises(ValueError, match="baseline arm 'moe' not found"):
        R.improvement(values, baseline="moe")


def test_batched_improvement_probability_equals_rliable():
    from rliable import metrics

    rng = np.random.default_rng(9)
    for shape_x, shape_y in [((5, 3), (5, 3)), ((3, 4), (6, 4))]:
        x, y = rng.integers(0, 4, shape_x).astype(float), rng.integers(0, 4, shape_y).astype(float)
        assert R._improvement_probability(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    same = rng.normal(size=(4, 3))
    assert R._improvement_probability(same, same) == pytest.approx(0.5)


def test_improvement_intervals_match_rliable_library():
    """Golden: rliable's own ``get_interval_estimates`` (40000 resamples) on this data, run where rliable.library
    imports (pandas < 3, arch 7.2):
    ``np.random.seed(0); get_interval_estimates({"x": x}, lambda s: np.array([metrics.aggregate_iqm(s)]),
    reps=40000)`` and ``np.random.seed(1); get_interval_estimates({"xy": [x, y]}, lambda a, b:
    np.array([metrics.probability_of_improvement(a, b)]), reps=40000)``. Equal up to resampling noise."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.5, 1, (5, 4)).round(1), rng.normal(0, 1, (6, 4)).round(1)  # [runs, tasks]
    rows = [(f"t{t}", s, "x", x[s, t]) for s in range(5) for t in range(4)] + \
           [(f"t{t}", s, "y", y[s, t]) for s in range(6) for t in range(4)]
    values = pd.DataFrame(rows, columns=["task", "seed", "arm", "value"])
    out = R.improvement(values, baseline="y", n_boot=40_000).set_index("arm")
    assert out.loc["x", "iqm"] == pytest.approx(0.22)
    np.testing.assert_allclose(out.loc["x", ["iqm_low", "iqm_high"]].astype(float), [-0.06, 0.58], atol=0.025)
    assert out.loc["x", "p_improve"] == pytest.approx(0.5708333333333333)
    np.testing.assert_allclose(out.loc["x", ["p_low", "p_high"]].astype(float), [0.4, 0.7416666666666667],
                               atol=0.025)


def test_improvement_drops_unequal_seeds_with_a_warning():
    x = np.random.default_rng(10).normal(size=(3, 4, 2))
    values = long_values(x, arms=["dense", "gmoe"])
    values = values.drop(values[(values["task"] == "task1") & (values["seed"] == 3) & (values["arm"] == "gmoe")].index)
    warnings = []
    out = R.improvement(values, baseline="dense", n_boot=100, warnings=warnings).set_index("arm")
    assert out.attrs["runs"] == {"dense": 4, "gmoe": 3}
    assert any(w.startswith("gmoe: seed(s) [3]") for w in warnings)
    assert out.loc["gmoe", "iqm"] == pytest.approx(stats.trim_mean(x[:, :3, 1].ravel(), 0.25))


# --- performance_profile ---

def test_performance_profile_hand_made():
    # seed means: task  a    b    c        gaps to the best:  a    b    c
    #             t1   0.9  0.8  0.7                          0    0.1  0.2
    #             t2   0.5  0.6  0.6                          0.1  0    0
    #             t3   0.3  0.1  0.0                          0    0.2  0.3
    means = {("t1", "a"): 0.9, ("t1", "b"): 0.8, ("t1", "c"): 0.7, ("t2", "a"): 0.5, ("t2", "b"): 0.6,
             ("t2", "c"): 0.6, ("t3", "a"): 0.3, ("t3", "b"): 0.1, ("t3", "c"): 0.0}
    rows = [(t, s, arm, m + d) for (t, arm), m in means.items() for s, d in ((0, -0.05), (1, 0.05))]
    values = pd.DataFrame(rows, columns=["task", "seed", "arm", "value"])
    taus = [0.0, 0.1, 0.2, 0.3]
    expected = {"a": [2 / 3, 1, 1, 1], "b": [1 / 3, 2 / 3, 1, 1], "c": [1 / 3, 1 / 3, 2 / 3, 1]}
    for higher, data in [(True, values), (False, values.assign(value=-values["value"]))]:
        out = R.performance_profile(data, higher=higher, taus=taus)
        for arm, fractions in expected.items():
            np.testing.assert_allclose(out[out["arm"] == arm]["fraction"], fractions, err_msg=f"{arm} {higher}")
    default = R.performance_profile(values)
    assert len(default) == 3 * 50 and default["tau"].max() == pytest.approx(0.3)


# --- grid_check ---

def grid(arms=("dense", "gmoe", "emoe"), rates=(1e-5, 3e-5), seeds=(0, 1, 2), epochs=(3,)):
    rows = [("sst2", arm, s, lr, e, "completed") for arm in arms for lr in rates for s in seeds for e in epochs]
    return pd.DataFrame(rows, columns=["task", "arm", "seed", "learning_rate", "epochs", "outcome"])


def test_grid_check_equal_grids():
    trials = grid()
    trials.loc[0, "outcome"] = "failed"  # a failed trial still counts as run
    assert R.grid_check(trials) == ["every arm had the same grid: 2 learning rate(s) x 3 seed(s), 1 epoch(s)"]


def test_grid_check_missing_learning_rate():
    trials = grid()
    trials = trials[~((trials["arm"] == "gmoe") & (trials["learning_rate"] == 3e-5))]
    assert R.grid_check(trials) == ["sst2/gmoe: learning rates {3e-05} missing (other arms have them)"]


def test_grid_check_extra_seed_and_missing_cell():
    trials = pd.concat([grid(), grid(arms=("dense",), seeds=(3,))], ignore_index=True)
    assert R.grid_check(trials) == ["sst2/dense: seeds {3} extra (other arms lack them)"]
    trials = grid()
    trials = trials.drop(trials[(trials["arm"] == "emoe") & (trials["learning_rate"] == 1e-5) &
                                (trials["seed"] == 2)].index)
    assert R.grid_check(trials) == [("sst2/emoe: cells (learning rate, seed, epochs) {(1e-05, 2, 3)} missing "
                                     "(other arms have them)")]


# --- figures ---

def test_figures_draw():
    x = np.random.default_rng(12).normal(size=(3, 3, 3))
    values = long_values(x)
    trials = values.rename(columns={"value": "id_score"})
    figures = [R.rank_interval_figure(R.rank_intervals(values, n_boot=50)),
               R.budget_figure(R.budget_curves(trials)),
               R.profile_figure(R.performance_profile(values), colours={"arm0": "black"})]
    import matplotlib.pyplot as plt

    for fig in figures:
        assert fig.axes
        fig.canvas.draw()
        plt.close(fig)
