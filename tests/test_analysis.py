"""Analysis: a golden experiment with ties, a missing seed, a failed and an early-stopped trial.

The expected table below was worked out by hand from the logged values; the expected statistics are recomputed
independently here with scipy. To see what the code makes of the same store:
    pytest tests/test_analysis.py -k golden_cli -s   (prints the report of the golden experiment)
"""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import exact_wilcoxon_p
from scipy import stats

from emoe.analysis import cli as friedman
from emoe.analysis import results
from emoe.analysis.report import display_table
from emoe.analysis.stats import analyse
from emoe import tracking

SETS = ("imdb", "yelp", "amazon")
# (arm, seed, lr, outcome, id_score, {set: score}); OOD values at the rejected learning rates are high on purpose: OOD
# metrics must never select anything.
TRIALS = [
    ("constrained", 0, 1e-4, "completed", 0.80, {"imdb": 0.70, "yelp": 0.90, "amazon": 0.60}),
    ("constrained", 1, 1e-4, "completed", 0.82, {"imdb": 0.72, "yelp": 0.88, "amazon": 0.62}),
    ("constrained", 0, 2e-4, "completed", 0.70, {"imdb": 0.99, "yelp": 0.99, "amazon": 0.99}),
    ("constrained", 1, 2e-4, "early_stopped", 0.71, {"imdb": 0.99, "yelp": 0.99, "amazon": 0.99}),
    ("kmeans", 0, 1e-4, "completed", 0.75, {"imdb": 0.99, "yelp": 0.99, "amazon": 0.99}),
    ("kmeans", 1, 1e-4, "completed", 0.76, {"imdb": 0.99, "yelp": 0.99, "amazon": 0.99}),
    ("kmeans", 0, 2e-4, "completed", 0.81, {"imdb": 0.70, "yelp": 0.90, "amazon": 0.58}),  # seed 1 missing here
    ("dense", 0, 1e-4, "completed", 0.79, {"imdb": 0.66, "yelp": 0.90, "amazon": 0.60}),
    ("dense", 1, 1e-4, "completed", 0.79, {"imdb": 0.68, "yelp": 0.90, "amazon": 0.58}),
    ("dense", 0, 2e-4, "failed", None, None),
    ("dense", 1, 2e-4, "completed", 0.60, {"imdb": 0.99, "yelp": 0.99, "amazon": 0.99}),
    ("constrained", 2, 1e-4, "completed", 0.81, {"imdb": 0.71, "yelp": 0.89, "amazon": 0.61}),
    ("kmeans", 2, 2e-4, "completed", 0.81, {"imdb": 0.70, "yelp": 0.90, "amazon": 0.58}),
    ("dense", 2, 1e-4, "completed", 0.79, {"imdb": 0.67, "yelp": 0.90, "amazon": 0.59}),
]

EXPECTED_TABLE = [  # task, arm, ID, amazon, imdb, yelp, OOD mean, rank, lr, seeds, failed, early stopped
    ["sst2", "constrained", "0.8100 ± 0.0100", "0.6100 ± 0.0100", "0.7100 ± 0.0100", "0.8900 ± 0.0100",
     "0.7367 ± 0.0033", "1.00", "0.0001", "0,1,2", 0, 1],
    ["sst2", "kmeans", "0.8100 ± 0.0000", "0.5800 ± 0.0000", "0.7000 ± 0.0000", "0.9000 ± 0.0000",
     "0.7267 ± 0.0000", "2.00", "0.0002", "0,2", 0, 0],
    ["sst2", "dense", "0.7900 ± 0.0000", "0.5900 ± 0.0100", "0.6700 ± 0.0100", "0.9000 ± 0.0000",
     "0.7200 ± 0.0000", "3.00", "0.0001", "0,1,2", 1, 0],
]
# One task: the blocks are its seeds (each seed's OOD sets averaged into its ood_score), never its OOD sets. Seed 1
# lacks kmeans (not run at kmeans' chosen rate): that block is dropped. By hand, per seed (constrained, kmeans,
# dense): seed 0 (0.7 + 0.9 + 0.6) / 3, (0.70 + 0.90 + 0.58) / 3, (0.66 + 0.90 + 0.60) / 3; seed 2 likewise.
BLOCKS = {"constrained": [(0.70 + 0.90 + 0.60) / 3, (0.71 + 0.89 + 0.61) / 3],
          "kmeans": [(0.70 + 0.90 + 0.58) / 3] * 2, "dense": [(0.66 + 0.90 + 0.60) / 3, (0.67 + 0.90 + 0.59) / 3]}


def log_golden(uri: str, experiment: str = "emoe-golden", primary: dict | None = None) -> str:
    primary = {} if primary is None else primary
    client = tracking.client(uri)
    exp = tracking.get_or_create_experiment(client, experiment)
    parent = client.create_run(exp, tags={tracking.ROLE: "sweep", tracking.SWEEP: "clustering",
                                          tracking.FACTOR: "clustering"})
    client.log_param(parent.info.run_id, "arms", "constrained,kmeans,dense")
    for name, value in primary.items():  # the primary analysis, declared at launch
        client.log_param(parent.info.run_id, f"primary.{name}", value)
    for i, (arm, seed, lr, outcome, id_score, ood) in enumerate(TRIALS):
        run = tracking.TrialRun(client, exp, f"{arm}-{i}", parent_run_id=parent.info.run_id,
                                tags={tracking.ARM: arm, tracking.TRIAL_ID: f"t{i}"})
        run.log_params({"task": "sst2", "seed": seed, "learning_rate": lr,
                        "method": "dense" if arm == "dense" else "emoe", "clustering": arm})
        if id_score is not None:
            metrics = {"id_score": id_score, "epoch": 0.5 if outcome == "early_stopped" else 1.0,
                       "ood_score": float(np.mean(list(ood.values())))}
            metrics.update({f"ood_score.{s}": v for s, v in ood.items()})
            run.log_metrics(metrics, step=10)
        run.finish(outcome, error="FloatingPointError: train_loss became nan" if outcome == "failed" else None)
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('golden')}/mlflow.db"
    parent = log_golden(uri)
    trials, sweep = results.load_trials(uri, "emoe-golden")
    return uri, parent, trials, sweep


def test_golden_results_frame(golden):
    _, parent, trials, sweep = golden
    assert len(trials) == len(TRIALS) and sweep["run_id"] == parent and sweep["emoe.factor"] == "clustering"
    assert list(dict.fromkeys(trials["arm"])) == ["constrained", "kmeans", "dense"]  # the sweep's arm order
    assert (trials["outcome"] == "failed").sum() == 1 and trials["seed"].dtype.kind in "if"


def test_golden_table_exact(golden):
    a = analyse(golden[2])
    assert display_table(a).values.tolist() == EXPECTED_TABLE


def test_golden_statistics_match_scipy(golden):
    a = analyse(golden[2])
    matrix = np.array([BLOCKS[arm] for arm in ("constrained", "kmeans", "dense")]).T  # blocks x arms
    assert a.blocks == "seeds" and list(a.ranks.index) == [("sst2", 0), ("sst2", 2)]
    np.testing.assert_allclose(a.ranks.to_numpy(), [[1, 2, 3], [1, 2, 3]])
    n, k = matrix.shape
    mean_ranks = np.array([1, 2, 3])  # by hand, from the ranks above
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(mean_ranks ** 2) - k * (k + 1) ** 2 / 4)  # Demšar (2006), eq. (1)
    assert chi2 == pytest.approx(stats.friedmanchisquare(*matrix.T).statistic) == 4.0
    t = a.tests
    assert t["friedman"]["chi2"] == pytest.approx(chi2) and t["friedman"]["p"] == pytest.approx(stats.chi2.sf(chi2, 2))
    assert t["friedman"]["p_permutation"] == pytest.approx(1 / 6)  # block 2 ranks as block 1 in 1 of 3! orders
    # Iman-Davenport's F = (n - 1) chi2 / (n (k - 1) - chi2) divides by zero when every block ranks alike
    assert n * (k - 1) - chi2 == 0 and t["iman_davenport"]["F"] == math.inf and math.isnan(t["iman_davenport"]["p"])
    q = stats.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2)
    assert t["nemenyi_cd"] == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)))
    raw = [exact_wilcoxon_p(matrix[:, j] - matrix[:, 2]) for j in (0, 1)]
    order = np.argsort(raw)  # Holm by hand: sorted p times (m - i), running maximum, capped at 1
    holm = np.empty(2)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, raw[j] * (2 - i)))
        holm[j] = running
    wil = t["wilcoxon"].set_index("arm")
    np.testing.assert_allclose(wil.loc[["constrained", "kmeans"], "p"], raw)
    np.testing.assert_allclose(wil.loc[["constrained", "kmeans"], "p_holm"], holm)
    assert a.baseline == "dense"


def test_golden_warnings_name_each_gap(golden):
    w = "\n".join(analyse(golden[2]).warnings)
    assert "sst2/kmeans: seed(s) [1] missing at the chosen learning rate 0.0002; averaged over seeds [0, 2]" in w
    assert "1 failed trial(s) left out" in w
    assert "block sst2/1: no ood_score for arm(s) ['kmeans'] (not a failure: never run, or a NaN score)" in w
    assert "smallest two-sided p it can give is 0.5" in w and "nothing can be significant" in w


def test_golden_cli_writes_and_logs_every_file(golden, tmp_path, capsys):
    uri, parent, _, _ = golden
    assert friedman.main(["--experiment", "emoe-golden", "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Friedman chi2(2)" in out and "Nemenyi critical difference" in out and "Holm" in out
    names = {"table.csv", "table.md", "table.tex", "tests.txt", "cd_diagram.png", "id_vs_ood.png",
             "learning_curves.png", "rank_intervals.png", "budget_curves.png", "report.html", "appendix.txt"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    assert "\\toprule" in (tmp_path / "table.tex").read_text() and "$\\pm$" in (tmp_path / "table.tex").read_text()
    page = (tmp_path / "report.html").read_text()  # self-contained: figures embedded, no external file
    assert page.count("data:image/png;base64,") == len(list(tmp_path.glob("*.png"))) >= 5
    assert "Friedman chi2" in page and "src=\"http" not in page
    for section in ("Ranks with intervals", "Grid", "For the appendix"):
        assert section in page
    csv = pd.read_csv(tmp_path / "table.csv")
    assert csv.loc[csv["arm"] == "constrained", "id_score_mean"].item() == pytest.approx(0.81)
    logged = {a.path for a in tracking.client(uri).list_artifacts(parent, "analysis")}
    assert {f"analysis/{n}" for n in names} <= logged


def _frame(rows):
    df = pd.DataFrame(rows, columns=["arm", "seed", "learning_rate", "id_score", "ood_score.a", "ood_score.b"])
    df["task"], df["outcome"] = "t", "completed"
    df["ood_score"] = df[["ood_score.a", "ood_score.b"]].mean(axis=1)
    return df


def test_nan_metric_drops_its_seed_block_with_warning():
    """A NaN ood_score of one seed drops that seed's block (not a failure: the direction is unknown); the other
    seed's block stands, and the task's other values are untouched."""
    df = _frame([("x", 0, 1e-4, 0.8, 0.7, float("nan")), ("dense", 0, 1e-4, 0.7, 0.6, 0.5),
                 ("y", 0, 1e-4, 0.75, 0.65, 0.55), ("x", 1, 1e-4, 0.8, 0.7, 0.6), ("dense", 1, 1e-4, 0.7, 0.6, 0.5),
                 ("y", 1, 1e-4, 0.75, 0.65, 0.55)])
    df.loc[0, "ood_score"] = float("nan")  # as the trial logs it: a NaN set makes its ood_score NaN
    a = analyse(df)
    assert list(a.ranks.index) == [("t", 1)]
    assert any("block t/0: no ood_score for arm(s) ['x'] (not a failure" in w for w in a.warnings)
    assert any("Friedman test needs at least 2 complete blocks, got 1" in w for w in a.warnings)


def test_sets_are_never_blocks():
    with pytest.raises(ValueError, match="unknown blocks 'sets' \\(a task's OOD sets are scored by the same models: "
                                         "not independent blocks\\); valid choices: tasks, seeds"):
        analyse(_frame([("x", 0, 1e-4, 0.8, 0.7, 0.6), ("dense", 0, 1e-4, 0.7, 0.6, 0.5)]), blocks="sets")


def test_two_arms_get_the_wilcoxon_test_only():
    df = _frame([("x", s, 1e-4, 0.8, 0.7 + s / 100, 0.6) for s in range(6)] +
                [("dense", s, 1e-4, 0.7, 0.6, 0.5 + s / 50) for s in range(6)])
    a = analyse(df)
    assert "friedman" not in a.tests and len(a.tests["wilcoxon"]) == 1 and a.tests["blocks"] == 6
    x = np.array([(0.7 + s / 100 + 0.6) / 2 for s in range(6)])
    d = np.array([(0.6 + 0.5 + s / 50) / 2 for s in range(6)])
    assert a.tests["wilcoxon"]["p"].item() == pytest.approx(stats.wilcoxon(x, d, method="exact").pvalue)


def test_bad_requests():
    with pytest.raises(ValueError, match="no trial runs"):
        analyse(pd.DataFrame(columns=["arm", "outcome"]))
    with pytest.raises(ValueError, match="baseline arm 'bert' not found; arms: x, dense"):
        analyse(_frame([("x", 0, 1e-4, 0.8, 0.7, 0.6), ("dense", 0, 1e-4, 0.7, 0.6, 0.5)]), baseline="bert")


def test_unknown_experiment_or_store_is_one_line(golden, tmp_path, capsys):
    assert friedman.main(["--experiment", "nope", "--tracking-uri", golden[0]]) == 2
    assert capsys.readouterr().err.strip() == (f"error: no MLflow experiment 'nope' in {golden[0]}; its emoe "
                                               "experiments: emoe-golden")
    assert friedman.main(["--experiment", "emoe-golden", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "error: no MLflow store at sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_the_report_leads_with_the_declared_primary_analysis_and_counts_looks(tmp_path, capsys):
    """Issue 20, finding 7: a sweep that declared its primary analysis gets a report that leads with it; another
    metric is exploratory; a report on more trials than the last look is a new look (beyond the one planned:
    exploratory); --no-log counts without recording."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = log_golden(uri, "emoe-declared", {"metric": "ood_score", "blocks": "auto", "baseline": "auto",
                                               "alpha": 0.05, "planned_looks": 1})
    args = ["--experiment", "emoe-declared", "--tracking-uri", uri, "--out", str(tmp_path / "r")]
    assert friedman.main(args) == 0
    out = capsys.readouterr().out
    assert "PRIMARY ANALYSIS (declared when the sweep was launched): ood_score over blocks = seeds" in out
    assert tracking.client(uri).get_run(parent).data.tags[tracking.LOOKS] == "13"  # 13 finished trials
    assert friedman.main(args + ["--metric", "id_score"]) == 0
    assert "EXPLORATORY ANALYSIS (id_score" in capsys.readouterr().out
    client = tracking.client(uri)  # one more finished trial: the results changed since the last look
    exp = client.get_experiment_by_name("emoe-declared").experiment_id
    run = tracking.TrialRun(client, exp, "late", parent_run_id=parent, tags={tracking.ARM: "kmeans",
                                                                              tracking.TRIAL_ID: "late"})
    run.log_params({"task": "sst2", "seed": 1, "learning_rate": 2e-4, "method": "emoe", "clustering": "kmeans"})
    run.log_metrics({"id_score": 0.8, "ood_score": 0.72, "ood_score.imdb": 0.7, "ood_score.yelp": 0.9,
                     "ood_score.amazon": 0.56, "epoch": 1.0}, step=10)
    run.finish("completed")
    assert friedman.main(args + ["--no-log"]) == 0
    assert "look 2 at the results, 1 planned" in capsys.readouterr().out
    assert client.get_run(parent).data.tags[tracking.LOOKS] == "13"
