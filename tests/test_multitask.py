"""Sweeps over several tasks: crossings, tasks crossed with arms (ASHA per task), the paper's table over tasks."""

import math

import pandas as pd
import pytest

from emoe import tracking
from emoe.data import GLUE

SWEEPS = __import__("pathlib").Path(__file__).resolve().parents[1] / "sweeps"


@pytest.fixture(autouse=True)
def _sweeps_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SWEEPS))


# --- sweeps: crossings, tasks, the paper's table ---

def test_crossing_names_arms_and_refuses_an_invalid_pair(tmp_path):
    from emoe.sweep import SweepSettings, make_plan
    from emoe.sweep.design import Ablation, check_factors, crossing_from_file, parse_factor

    design = Ablation.cross(check_factors(dict([parse_factor("clustering=constrained,kmeans"),
                                                parse_factor("layers=-1;-2,-1")])))
    assert list(design.arms) == ["constrained+-1", "constrained+-2,-1", "kmeans+-1", "kmeans+-2,-1", "dense"]
    assert design.arms["kmeans+-2,-1"] == {"clustering": "kmeans", "layers": (-2, -1)}
    assert design.factor == "clustering,layers" and design.name == "clustering-x-layers"
    bad = Ablation.cross(check_factors({"top_k": ["2", "32"], "num_experts": ["8"]}))
    with pytest.raises(ValueError) as err:
        make_plan(bad, SweepSettings(trial={"model": "minilm"}))
    assert str(err.value) == "arm '32+8' (top_k=32, num_experts=8): top_k=32 must be between 1 and num_experts=8"
    with pytest.raises(ValueError, match="unknown factor 'gates'; valid choices: ood_sets, init"):
        check_factors({"gates": ["x"]})
    with pytest.raises(ValueError, match="factor gate: unknown value 'x'; valid choices: avg_keys"):
        check_factors({"gate": ["x"]})
    path = tmp_path / "d.toml"
    path.write_text('name = "cg"\nbaseline = false\n[factors]\nclustering = ["kmeans"]\ngate = ["avg_keys", '
                    '"centroid"]\n')
    factors, name, baseline = crossing_from_file(str(path))
    design = Ablation.cross(check_factors(factors), name=name, baseline=baseline)
    assert design.name == "cg" and list(design.arms) == ["kmeans+avg_keys", "kmeans+centroid"]


def test_tasks_cross_with_arms_and_take_their_epoch_caps():
    from clustering import ABLATION

    from emoe.sweep import SweepSettings, make_plan
    from emoe.sweep.search import search_space

    plan = make_plan(ABLATION, SweepSettings(tasks=("glue",), trial={"model": "minilm"}))
    assert plan.tasks == list(GLUE) and plan.n_trials == 8 * 7 * 3 * 3
    assert {t: plan.epochs(t) for t in ("mnli", "rte")} == {"mnli": 3, "rte": 10}
    space, _, _ = search_space(plan)
    assert space["task"] == {"grid_search": list(GLUE)} and space["epochs"] is None
    fixed = make_plan(ABLATION, SweepSettings(tasks=("mnli", "rte"), trial={"model": "minilm", "epochs": 2}))
    assert fixed.epochs("mnli") == fixed.epochs("rte") == 2


def test_asha_brackets_are_per_task_and_run_to_each_tasks_epochs():
    from clustering import ABLATION

    from emoe.sweep import SweepSettings, make_plan
    from emoe.sweep.search import scheduler

    plan = make_plan(ABLATION, SweepSettings(tasks=("mnli", "rte"), trial={"model": "minilm"}))
    for scope in ("arm", "global"):
        plan.settings.early_stop_scope = scope
        s = scheduler(plan)
        s.set_search_properties("id_score", "max")
        import types

        for task in ("mnli", "rte"):
            s.on_trial_add(None, types.SimpleNamespace(trial_id=task, config={"arm": "kmeans", "seed": 0,
                                                                              "task": task}))
        assert {key[-1]: bracket._max_t for key, bracket in s._arms.items()} == {"mnli": 3, "rte": 10}


def _two_task_trials():
    """Three arms on two tasks, two seeds, known scores; OOD scores put arm b first on one task, c on the other."""
    rows = []
    scores = {("t1", "a"): (0.80, 0.60), ("t1", "b"): (0.82, 0.70), ("t1", "c"): (0.78, 0.65),
              ("t2", "a"): (0.50, 0.40), ("t2", "b"): (0.52, 0.42), ("t2", "c"): (0.56, 0.45)}
    for (task, arm), (id_score, ood) in scores.items():
        for seed in (0, 1):
            rows.append({"task": task, "arm": arm, "seed": seed, "learning_rate": 1e-4, "outcome": "completed",
                         "method": "dense" if arm == "a" else "emoe", "init": "pretrained",
                         "id_score": id_score, "ood_score": ood, f"ood_score.{task}_set": ood})
    return pd.DataFrame(rows)


def test_paper_table_averages_over_tasks_and_ranks_over_tasks():
    from emoe.analysis import report, stats

    a = stats.analyse(_two_task_trials(), baseline="a")
    assert a.blocks == "tasks" and list(a.ranks.index.get_level_values("task")) == ["t1", "t2"]
    s = a.summary.set_index("arm")
    assert s.loc["b", "id_score"] == pytest.approx((0.82 + 0.52) / 2)
    assert s.loc["c", "ood_score"] == pytest.approx((0.65 + 0.45) / 2)
    # OOD ranks per task: t1 b 1, c 2, a 3; t2 c 1, b 2, a 3
    assert s["ood_rank"].to_dict() == {"a": 3.0, "b": 1.5, "c": 1.5}
    assert s["id_rank"].to_dict() == {"a": 2.5, "b": 1.5, "c": 2.0}
    assert (s["tasks"] == 2).all()
    text = report.console(a)
    assert "GLUE-X OOD rank" in text and "each task (seeds averaged; a task's OOD sets averaged" in text
    # the per-task rows carry each task's own rank, not the rank over tasks
    t = a.table.set_index(["task", "arm"])
    assert t.loc[("t1", "b"), "rank"] == 1.0 and t.loc[("t2", "b"), "rank"] == 2.0
    assert not any("dropped" in w for w in a.warnings)  # t1_set was never a block of t2


@pytest.mark.slow
def test_two_task_sweep_logs_both_tasks_and_ranks_over_them(tiny_model_dir, tiny_data_dir, tmp_path):
    from conftest import _children, run_tiny

    from emoe.analysis import results, stats

    run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--tasks", "sst2,stsb", "--seeds", "0",
             "--learning-rates", "1e-3", "--epochs", "1", "--cpus-per-trial", "0.5", "--scheduler", "none")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, _, parents, children = _children(uri, "emoe-pretraining")
    assert len(parents) == 1 and parents[0].data.params["tasks"] == "sst2,stsb"
    by_task = {}
    for c in children:
        by_task.setdefault(c.data.tags[tracking.TASK], []).append(c)
        assert c.data.params["task"] == c.data.tags[tracking.TASK]
    assert {t: len(r) for t, r in by_task.items()} == {"sst2": 4, "stsb": 4}
    assert all("id.pearson" in c.data.metrics and "ood_score.sick" in c.data.metrics for c in by_task["stsb"])
    assert all("id.accuracy" in c.data.metrics and "ood_score.flipkart" in c.data.metrics for c in by_task["sst2"])
    trials, _ = results.load_trials(uri, "emoe-pretraining")
    a = stats.analyse(trials)
    assert a.blocks == "tasks" and sorted(a.ranks.index.get_level_values("task")) == ["sst2", "stsb"]
    assert a.tests["blocks"] == 2 and a.tests["arms"] == 4 and (a.summary["tasks"] == 2).all()


def test_glue_small_dry_run_lists_the_trials_per_task(tmp_path):
    import subprocess
    import sys

    from conftest import env

    out = subprocess.run([sys.executable, str(SWEEPS / "clustering.py"), "--preset", "glue-small", "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "ablation clustering: 4 tasks x 7 arms x 2 seeds x 1 learning rates = 56 trials (preset glue-small)" in lines
    for task, sets in (("sst2", "imdb, yelp, amazon, flipkart"), ("rte", "mrpc, qqp, scitail"),
                       ("mrpc", "qqp, rte"), ("stsb", "sick")):
        assert any(l.startswith(f"task {task}: 2 epoch(s), 900 training examples") and f"OOD {sets})" in l
                   and l.endswith("14 trials") for l in lines), out.stdout
    rows = [l.split() for l in lines if l.split()[:1] and l.split()[0] in ("sst2", "rte", "mrpc", "stsb")]
    assert len(rows) == 56 and {r[0] for r in rows} == {"sst2", "rte", "mrpc", "stsb"}
    assert not (tmp_path / "mlflow.db").exists()


def test_paper_table_averages_id_and_ood_over_the_same_tasks():
    """Issue 20, finding 2: one arm lacks an OOD score on one task; the paper's table must not average ID over two
    tasks and OOD over one while saying "tasks 2". An arm whose every trial failed ranks last on every task, has no
    average, is listed as failed on them, and leaves the others' averages and tasks alone."""
    from emoe.analysis import stats

    df = _two_task_trials()
    df.loc[(df["task"] == "t2") & (df["arm"] == "c"), ["ood_score", "ood_score.t2_set"]] = float("nan")
    s = stats.analyse(df, baseline="a").summary.set_index("arm")
    assert (s["tasks"] == 1).all()
    assert s.loc["b", "id_score"] == pytest.approx(0.82) and s.loc["b", "ood_score"] == pytest.approx(0.70)
    dead = _two_task_trials()
    dead.loc[dead["arm"] == "c", "outcome"] = "failed"
    dead.loc[dead["arm"] == "c", ["id_score", "ood_score", "ood_score.t1_set", "ood_score.t2_set"]] = float("nan")
    a = stats.analyse(dead, baseline="a")
    s = a.summary.set_index("arm")
    assert s.loc["c", "failed"] == "t1, t2" and math.isnan(s.loc["c", "id_score"]) and s.loc["c", "ood_rank"] == 3.0
    assert s.loc["b", "id_score"] == pytest.approx((0.82 + 0.52) / 2) and (s["tasks"] == 2).all()
    assert s.loc["b", "ood_rank"] == 1.0 and s.loc["a", "ood_rank"] == 2.0
    # the rank tests keep both tasks, the failed arm last in each (it cannot come out first by failing)
    assert a.tests["blocks"] == 2 and a.ranks["c"].tolist() == [3.0, 3.0]
    assert any("c failed on t1, t2: ranked last there" in w for w in a.warnings)
