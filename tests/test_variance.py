"""Sources of variance (``emoe.analysis.variance``): planted components are recovered, a balanced design's REML
estimates are its ANOVA (expected mean squares) estimates computed here by hand, a factor with no variance is
estimated near 0, and a fit that cannot be made is a warning and a NaN row, never an exception."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from emoe.analysis import variance as V

TRUE_SD = {"seed": 1.0, "data_seed": 0.0, "cluster_seed": 2.0, "learning_rate": 0.5}
RESIDUAL_SD = 0.3
LEVELS = {"seed": list(range(8)), "data_seed": [0, 1], "cluster_seed": list(range(100, 108)),
          "learning_rate": [1e-5, 3e-5, 1e-4, 3e-4]}


def planted(seed: int, sds: dict = TRUE_SD, arm: str = "a", scale: float = 1.0) -> pd.DataFrame:
    """A fully crossed 8 x 2 x 8 x 4 design (512 trials) whose factor effects have exactly the SDs ``sds`` (each
    factor's level effects drawn normal, then centred and scaled to that SD, ddof 1), plus normal residual noise."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(V.crossed_design(*LEVELS.values()))
    y = 0.7 + RESIDUAL_SD * rng.standard_normal(len(df))
    for factor, sd in sds.items():
        codes = pd.factorize(df[factor], sort=True)[0]
        z = rng.standard_normal(codes.max() + 1)
        y = y + sd * ((z - z.mean()) / z.std(ddof=1))[codes]
    return df.assign(arm=arm, score=scale * y)


def anova_components(df: pd.DataFrame, response: str, factors) -> dict:
    """Expected-mean-squares estimates of a balanced, fully crossed additive design: MS_f = (N / a_f) * sum of
    squared level-mean deviations / (a_f - 1), residual MS from the additive fit; sigma_f^2 = (MS_f - MS_e) / (N /
    a_f)."""
    y, n = df[response], len(df)
    fitted = y.mean() + sum(df.groupby(f)[response].transform("mean") - y.mean() for f in factors)
    residual_df = n - 1 - sum(df[f].nunique() - 1 for f in factors)
    mse = float(((y - fitted) ** 2).sum() / residual_df)
    out = {"residual": mse}
    for f in factors:
        a = df[f].nunique()
        ms = (n / a) * float(((df.groupby(f)[response].mean() - y.mean()) ** 2).sum()) / (a - 1)
        out[f] = (ms - mse) / (n / a)
    return out


def test_planted_components_are_recovered():
    """Tolerance: the effects are planted at exactly their SDs, so the error is the residual noise (SD 0.3): it leaks
    into the level means (most into the 4-level learning rate's: relative SD 6%) and the residual's own estimate
    has 493 degrees of freedom (relative SD 6%). Over 300 such designs (ANOVA estimates, equal to REML here) the
    largest relative error was 22% (residual; learning rate 19%) and the largest share error 0.018: allowed 25% of
    a variance and 0.025 of a share. The factor with no variance (data_seed) is under 0.5% of the total."""
    total = sum(sd ** 2 for sd in TRUE_SD.values()) + RESIDUAL_SD ** 2
    for seed in (0, 1):
        warnings = []
        table = V.variance_components(planted(seed), "score", warnings=warnings).set_index("source")
        assert list(table.index) == ["seed", "data_seed", "cluster_seed", "learning_rate", "residual"]
        assert table["share"].sum() == pytest.approx(1.0)
        for source, sd in [*TRUE_SD.items(), ("residual", RESIDUAL_SD)]:
            if sd:
                assert table.loc[source, "variance"] == pytest.approx(sd ** 2, rel=0.25), source
            assert table.loc[source, "share"] == pytest.approx(sd ** 2 / total, abs=0.025), source
        assert table.loc["data_seed", "variance"] < 0.005 * total
        assert table.loc["data_seed", "share"] < 0.005
        assert list(table["levels"]) == [8, 2, 8, 4, 512] and set(table["observations"]) == {512}
        np.testing.assert_allclose(table["sd"] ** 2, table["variance"], rtol=1e-12)


def test_balanced_reml_is_the_anova_estimate_and_scale_free():
    """Where every ANOVA estimate is positive, REML on a balanced design gives exactly it; the response's units do not
    matter (a score on 0..1 has variances near 1e-4, below statsmodels' absolute boundary checks)."""
    sds = TRUE_SD | {"data_seed": 0.3}
    df = planted(4, sds)
    expected = anova_components(df, "score", list(LEVELS))
    assert min(expected.values()) > 0
    table = V.variance_components(df, "score", by=None).set_index("source")["variance"]
    for source, value in expected.items():
        assert table[source] == pytest.approx(value, rel=1e-3), source
    small = V.variance_components(df.assign(score=df["score"] * 0.01), "score", by=None).set_index("source")
    assert small["variance"].to_numpy() == pytest.approx(table.to_numpy() * 1e-4, rel=1e-3)


def test_per_arm_with_the_factors_each_arm_varies_and_failures_as_nan_rows():
    a = planted(2, arm="a")
    b = planted(3, arm="b")
    b = b[b["learning_rate"] == 1e-4]  # b ran one learning rate: no variance of its to estimate
    constant = planted(5, arm="flat").assign(score=0.5)
    tiny = planted(6, arm="tiny").head(3)  # 3 trials, two factors varying: no residual degrees of freedom
    df = pd.concat([a, b, constant, tiny], ignore_index=True)
    warnings = []
    table = V.variance_components(df, "score", warnings=warnings)
    assert list(dict.fromkeys(table["arm"])) == ["a", "b", "flat", "tiny"]
    sources = lambda arm: list(table.loc[table["arm"] == arm, "source"])  # noqa: E731
    assert "learning_rate" in sources("a") and "learning_rate" not in sources("b")
    for arm in ("a", "b"):
        assert table.loc[table["arm"] == arm, "share"].sum() == pytest.approx(1.0)
    for arm in ("flat", "tiny"):
        assert table.loc[table["arm"] == arm, "variance"].isna().all()
    assert any(w.startswith("arm flat: score is the same in all 512 trials") for w in warnings)
    assert any(w.startswith("arm tiny:") and "no residual degrees of freedom" in w for w in warnings)
    # a's data_seed: a negative ANOVA estimate (-0.0003), so REML stops at the boundary, and says so
    assert anova_components(a, "score", list(LEVELS))["data_seed"] < 0
    assert table.loc[(table["arm"] == "a") & (table["source"] == "data_seed"), "variance"].item() < 1e-6
    assert any(w.startswith("arm a: the variance of data_seed estimated at 0") for w in warnings)
    # cluster_seed='trial' re-clusters with each seed: the two cannot be told apart
    aliased = planted(7).assign(cluster_seed=lambda d: d["seed"] + 100)
    warnings = []
    table = V.variance_components(aliased, "score", by=None, warnings=warnings)
    assert "cluster_seed" not in set(table["source"])
    assert any("cluster_seed is aliased with seed" in w for w in warnings)
    with pytest.raises(ValueError, match="no column 'ood'"):
        V.variance_components(df, "ood")


def test_variance_figure_stacks_each_arms_shares():
    df = pd.concat([planted(0, arm="a"), planted(1, arm="b")], ignore_index=True)
    table = V.variance_components(df, "score")
    fig = V.variance_figure(table, colours={"seed": "#000000"})
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 5  # one segment per arm and source
    widths = np.array([p.get_width() for p in ax.patches]).reshape(5, 2)  # drawn source by source
    shares = table.pivot(index="source", columns="arm", values="share").loc[
        ["seed", "data_seed", "cluster_seed", "learning_rate", "residual"]]
    np.testing.assert_allclose(widths, shares.to_numpy())
    assert ax.patches[0].get_facecolor()[:3] == (0.0, 0.0, 0.0)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_crossed_design_is_the_full_crossing():
    design = V.crossed_design([0, 1], [0], [5, 6, 7], [1e-4, 3e-4])
    assert len(design) == 2 * 1 * 3 * 2
    assert len({tuple(d.values()) for d in design}) == len(design)
    assert design[0] == {"seed": 0, "data_seed": 0, "cluster_seed": 5, "learning_rate": 1e-4}
    with pytest.raises(ValueError, match="learning_rate: no values"):
        V.crossed_design([0], [0], [0], [])
    assert math.prod(len(v) for v in LEVELS.values()) == len(V.crossed_design(*LEVELS.values()))


def test_the_reports_sources_of_variance_from_a_sweeps_trials():
    """A sweep's trials as ``emoe.analysis.results`` reads them (knobs as MLflow params: ``data_seed`` "None" is the
    trial's seed, ``cluster_seed`` "trial" too): every used trial of every rate, per task and arm with several
    tasks; a knob that follows the seed is no factor; fewer than two factors, no table."""
    rng = np.random.default_rng(9)
    rows = []
    for task, arm, seed, lr in itertools.product(("t1", "t2"), ("dense", "a"), range(4), (2e-5, 5e-5)):
        rows.append({"task": task, "arm": arm, "seed": seed, "learning_rate": lr, "data_seed": "None",
                     "cluster_seed": "trial", "outcome": "completed",
                     "ood_score": 0.7 + 0.02 * (seed % 2) + rng.normal(0, 0.005)})
    df = pd.DataFrame(rows)
    failed = df.head(1).assign(outcome="failed", ood_score=np.nan)
    warnings = []
    table = V.sources_of_variance(pd.concat([df, failed], ignore_index=True), "ood_score", warnings)
    assert list(table.columns[:2]) == ["task", "arm"] and len(table) == 2 * 2 * 3
    assert set(table["source"]) == {"seed", "learning_rate", "residual"}  # data and clustering seeds follow the seed
    assert set(table["observations"]) == {8}
    direct = V.variance_components(df[(df["task"] == "t2") & (df["arm"] == "a")], "ood_score",
                                   ("seed", "learning_rate"), by=None)
    mine = table[(table["task"] == "t2") & (table["arm"] == "a")]
    np.testing.assert_allclose(mine["variance"].to_numpy(), direct["variance"].to_numpy(), rtol=1e-9)
    # a data seed set on some trials is a factor, its unset trials reading the trial's seed
    crossed = df.assign(data_seed=np.where(df["seed"] < 2, "None", "7"))
    assert "data_seed" in set(V.sources_of_variance(crossed, "ood_score", [])["source"])
    warnings = []
    assert V.sources_of_variance(df[df["learning_rate"] == 2e-5], "ood_score", warnings) is None
    assert "fewer than two of seed, data_seed, cluster_seed and learning_rate (varied: seed)" in warnings[-1]
    assert V.sources_of_variance(df, "id_score", warnings) is None and "lack 'id_score'" in warnings[-1]


def test_the_variance_sweeps_arms_pool_into_one_family():
    """emoe sweep variance's arms differ only in cluster_seed and data_seed: the report pools them into one family
    (their crossing is what it measures); an arm with other knobs (another gate) stays its own."""
    rng = np.random.default_rng(3)
    rows = []
    for c, d, seed, lr in itertools.product(range(3), range(3), range(3), (2e-5, 5e-5)):
        rows.append({"task": "sst2", "arm": f"c{c}-d{d}", "seed": seed, "learning_rate": lr, "data_seed": d,
                     "cluster_seed": c, "gate": "avg_keys", "method": "emoe", "outcome": "completed",
                     "ood_score": 0.7 + 0.03 * c + 0.01 * seed + rng.normal(0, 0.002)})
    df = pd.DataFrame(rows)
    other = df[df["arm"] == "c0-d0"].assign(arm="centroid", gate="centroid")
    table = V.sources_of_variance(pd.concat([df, other], ignore_index=True), "ood_score", [])
    assert set(table["arm"]) == {"c0-d0 .. c2-d2 (9 arms)", "centroid"}
    pooled = table[table["arm"] == "c0-d0 .. c2-d2 (9 arms)"].set_index("source")
    assert set(pooled.index) == {"seed", "data_seed", "cluster_seed", "learning_rate", "residual"}
    assert pooled.loc["cluster_seed", "share"] > pooled.loc["seed", "share"] > pooled.loc["data_seed", "share"]
    assert pooled["observations"].max() == 54
