"""GLUE-X: the eight tasks' metrics against independent computations, STS-B as regression, every cross-task label
mapping on known examples, self-collected sets named before anything runs, crossings, and the paper's table."""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import write_jsonl

from emoe import metrics, tracking
from emoe.data import GLUE, TASKS, load_task

SWEEPS = __import__("pathlib").Path(__file__).resolve().parents[1] / "sweeps"


@pytest.fixture(autouse=True)
def _sweeps_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SWEEPS))


# --- metrics: each against a formula computed here by hand (not the library the code calls) ---

PRED = np.array([1, 1, 0, 1, 0, 0, 1, 0, 1, 1])
GOLD = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0, 1])


def test_classification_metrics_equal_their_formulas():
    tp = int(((PRED == 1) & (GOLD == 1)).sum())  # 4
    tn = int(((PRED == 0) & (GOLD == 0)).sum())  # 3
    fp = int(((PRED == 1) & (GOLD == 0)).sum())  # 2
    fn = int(((PRED == 0) & (GOLD == 1)).sum())  # 1
    assert (tp, tn, fp, fn) == (4, 3, 2, 1)
    out = metrics.compute(("accuracy", "f1", "matthews_correlation"), PRED, GOLD)
    assert out["accuracy"] == pytest.approx(7 / 10)
    assert out["f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert out["matthews_correlation"] == pytest.approx(mcc) and mcc == pytest.approx(10 / math.sqrt(6 * 5 * 4 * 5))
    assert metrics.primary(out) == pytest.approx((0.7 + 8 / 11 + mcc) / 3)  # GLUE: a task's score = mean of metrics


def test_correlations_equal_their_formulas():
    pred = np.array([0.5, 2.0, 1.0, 4.5, 3.0, 3.0])
    gold = np.array([0.0, 2.5, 1.5, 5.0, 2.0, 3.5])
    x, y = pred - pred.mean(), gold - gold.mean()
    pearson = (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())

    def ranks(v):  # average ranks for ties, by hand
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2 + 1
            i = j + 1
        return np.array(r)

    rx, ry = ranks(pred) - ranks(pred).mean(), ranks(gold) - ranks(gold).mean()
    spearman = (rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum())
    out = metrics.compute(("pearson", "spearmanr"), pred, gold)
    assert out["pearson"] == pytest.approx(pearson) and out["spearmanr"] == pytest.approx(spearman)
    # a constant prediction has no correlation: 0, never NaN (it would poison selection)
    assert metrics.compute(("pearson", "spearmanr"), np.ones(6), gold) == {"pearson": 0.0, "spearmanr": 0.0}


def test_each_task_carries_glue_metrics_and_the_official_epoch_caps():
    assert GLUE == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
    assert {t: TASKS[t].metrics for t in GLUE} == {
        "cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
        "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearmanr"), "mnli": ("accuracy",),
        "qnli": ("accuracy",), "rte": ("accuracy",)}
    assert {t for t in GLUE if TASKS[t].epochs == 3} == {"mnli", "qqp", "qnli"}
    assert all(TASKS[t].epochs == 10 for t in GLUE if t not in ("mnli", "qqp", "qnli"))
    assert TASKS["stsb"].regression and TASKS["stsb"].num_labels == 1 and not TASKS["snli"].glue_x
    assert {t: list(TASKS[t].ood) for t in GLUE} == {  # GLUE-X's pairs (its result files)
        "cola": ["grammar"], "sst2": ["imdb", "yelp", "amazon", "flipkart"], "mrpc": ["qqp", "rte", "hans", "twitter"],
        "qqp": ["mrpc", "rte", "hans", "twitter"], "stsb": ["sick"], "mnli": ["mnli_mismatched", "snli", "sick"],
        "qnli": ["newsqa"], "rte": ["mrpc", "qqp", "hans", "scitail"]}


def test_score_metrics_names_every_metric():
    from emoe.train import score_metrics

    scores = {"id": {"accuracy": 0.8, "f1": 0.6}, "qqp": {"accuracy": 0.5, "f1": 0.7}, "rte": {"accuracy": 0.4, "f1": 0.2}}
    out = score_metrics(scores, {"id": 10, "qqp": 100, "rte": 300})
    # GLUE-X (top_OOD_lp.py): each set's metrics weighted by the set's size: (100 * 0.6 + 300 * 0.3) / 400
    assert out == pytest.approx({"id_score": 0.7, "id.accuracy": 0.8, "id.f1": 0.6, "ood_score.qqp": 0.6,
                                 "ood.qqp.accuracy": 0.5, "ood.qqp.f1": 0.7, "ood_score.rte": 0.3,
                                 "ood.rte.accuracy": 0.4, "ood.rte.f1": 0.2, "ood_score": 0.375})
    # the official EMoE script scores each set alone; a task's OOD score is their plain mean
    assert score_metrics(scores, {"id": 10, "qqp": 100, "rte": 300}, "emoe")["ood_score"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="size"):
        score_metrics(scores)  # GLUE-X's weights are the sets' sizes: none given is a bug, not an unweighted mean


# --- label mappings (GLUE-X evaluation/utils_lp.py::preprocess_data) on known examples ---

def _pair(a, b, label, **extra):
    return {"sentence1": a, "sentence2": b, "label": label, **extra}


@pytest.fixture
def glue_x_dir(tmp_path):
    """A layout whose OOD sets hold rows of known labels, in the sets' own formats."""
    d = tmp_path / "data"
    for task in ("rte", "mrpc", "stsb"):
        rows = [_pair("a b", "c d", 2.5 if task == "stsb" else i % 2) for i in range(4)]
        write_jsonl(d / task / "train.jsonl", rows)
        write_jsonl(d / task / "validation.jsonl", rows)
    # mrpc 1 = equivalent, rte 0 = entailment, qqp 1 = duplicate, hans 0 = entailment
    write_jsonl(d / "mrpc" / "train.jsonl", [_pair("m1", "m2", 1), _pair("m3", "m4", 0)])
    write_jsonl(d / "rte" / "train.jsonl", [_pair("r1", "r2", 0), _pair("r3", "r4", 1)])
    write_jsonl(d / "qqp" / "train.jsonl", [{"question1": "q1", "question2": "q2", "label": 1},
                                            {"question1": "q3", "question2": "q4", "label": 0}])
    write_jsonl(d / "hans" / "train.jsonl", [{"premise": "h1", "hypothesis": "h2", "label": 0},
                                             {"premise": "h3", "hypothesis": "h4", "label": 1}])
    write_jsonl(d / "scitail" / "test.jsonl", [{"premise": "s1", "hypothesis": "s2", "label": "entails"},
                                               {"premise": "s3", "hypothesis": "s4", "label": "neutral"}])
    write_jsonl(d / "twitter" / "test.jsonl", [{"Sent_1": "t1", "Sent_2": "t2", "Label": 1},
                                               {"Sent_1": "t3", "Sent_2": "t4", "Label": 0}])
    write_jsonl(d / "sick" / "test.jsonl", [{"premise": f"p{i}", "hypothesis": "h", "label": 0, "relatedness": r}
                                            for i, r in enumerate([1.0, 2.6, 3.5, 4.5, 5.0])])
    return d


def _labels(data, name):
    first = data.task.text_fields[0]
    return dict(zip(data.ood[name][first], data.ood[name]["label"]))


def test_rte_ood_labels_follow_glue_x(glue_x_dir):
    data = load_task("rte", glue_x_dir)
    assert _labels(data, "mrpc")["m1"] == 0 and _labels(data, "mrpc")["m3"] == 1  # equivalent -> entailment
    assert _labels(data, "qqp")["q1"] == 0 and _labels(data, "qqp")["q3"] == 1  # duplicate -> entailment
    assert _labels(data, "hans") == {"h1": 0, "h3": 1}  # same order as RTE: unchanged
    assert _labels(data, "scitail") == {"s1": 0, "s3": 1}  # entails 0, neutral 1
    assert set(data.ood["qqp"].column_names) >= {"sentence1", "sentence2"}  # renamed to RTE's fields


def test_mrpc_ood_labels_follow_glue_x(glue_x_dir):
    data = load_task("mrpc", glue_x_dir)
    assert _labels(data, "qqp") == {"q1": 1, "q3": 0}  # duplicate = equivalent: unchanged
    assert _labels(data, "rte")["r1"] == 1 and _labels(data, "rte")["r3"] == 0  # entailment -> equivalent
    assert _labels(data, "hans") == {"h1": 1, "h3": 0}
    assert _labels(data, "twitter") == {"t1": 1, "t3": 0}


def test_qqp_ood_sets_take_qqp_fields(glue_x_dir):
    from emoe.data import _to_task

    task = TASKS["qqp"]
    ds = _to_task(__import__("datasets").Dataset.from_list([_pair("m1", "m2", 1)]), task.ood["mrpc"], task)
    assert ds[0] == {"question1": "m1", "question2": "m2", "label": 1}
    ds = _to_task(__import__("datasets").Dataset.from_list([_pair("r1", "r2", 0)]), task.ood["rte"], task)
    assert ds[0]["label"] == 1 and ds[0]["question1"] == "r1"


def test_stsb_ood_sick_is_glue_x_relatedness_minus_one_rounded(glue_x_dir):
    data = load_task("stsb", glue_x_dir)
    got = dict(zip(data.ood["sick"]["sentence1"], data.ood["sick"]["label"]))
    # round(r - 1), Python's round (half to even, as GLUE-X): 3.5 -> 2, 4.5 -> 4 (round(3.5) = 4), 2.6 -> 2
    assert got == {"p0": 0.0, "p1": 2.0, "p2": 2.0, "p3": 4.0, "p4": 4.0}
    assert data.validation.features["label"].dtype == "float32"


def test_packaged_cross_task_rows_map_as_glue_x(tmp_path):
    """Real rows of the packaged slice: an MRPC pair marked equivalent is an RTE entailment (0), and back."""
    import json

    from emoe.data import DATA_ALIASES

    mrpc = [json.loads(l) for l in (DATA_ALIASES["demo"] / "mrpc" / "train.jsonl").read_text().splitlines()]
    rte = load_task("rte", "demo", ood_sets=["mrpc"])
    mapped = dict(zip(rte.ood["mrpc"]["sentence1"], rte.ood["mrpc"]["label"]))
    for row in mrpc[:20]:
        assert mapped[row["sentence1"]] == 1 - row["label"]


def test_self_collected_sets_come_from_files_only(glue_x_dir, tmp_path, monkeypatch):
    import datasets

    from emoe import data

    fake = datasets.Dataset.from_list([{"sentence": "a b", "label": 0}, {"sentence": "c d", "label": 1}])
    monkeypatch.setattr(data, "_hub", lambda source: fake)  # every Hub set "loads"
    with pytest.raises(ValueError) as err:
        load_task("cola")
    text = str(err.value)
    assert "\n" not in text and text == (
        "task cola: OOD set 'grammar' is self-collected by GLUE-X (not on the Hub): pass --ood grammar=FILE, or "
        "--data-dir DIR with DIR/grammar/test.jsonl (or leave grammar out: --ood-sets NONE)")
    path = write_jsonl(tmp_path / "grammar.jsonl", [{"sentence": "x y", "label": 1}])
    assert len(load_task("cola", ood={"grammar": str(path)}).ood["grammar"]) == 1
    assert list(load_task("cola", ood_sets=[]).ood) == []
    # a self-collected set in GLUE-X's own format (string labels) maps as GLUE-X does
    news = write_jsonl(tmp_path / "newsqa.jsonl", [{"question": "q", "sentence": "s", "label": "not_entailment"},
                                                   {"question": "q2", "sentence": "s2", "label": "entailment"}])
    monkeypatch.setattr(data, "_hub", lambda source: datasets.Dataset.from_list(
        [{"question": "a", "sentence": "b", "label": 0}]))
    assert load_task("qnli", ood={"newsqa": str(news)}).ood["newsqa"]["label"] == [1, 0]
    flip = write_jsonl(tmp_path / "flip.jsonl", [{"Summary": "ok", "Sentiment": s}
                                                 for s in ("positive", "neutral", "negative")])
    monkeypatch.setattr(data, "_hub", lambda source: fake)
    got = load_task("sst2", ood={"flipkart": str(flip)}, ood_sets=["flipkart"]).ood["flipkart"]
    assert got["label"] == [1, 0, 0] and got["sentence"] == ["ok"] * 3  # neutral counts as negative


# --- training ---

def test_stsb_trains_as_regression(tiny_model_dir, tiny_data_dir):
    from emoe.train import train_and_evaluate

    seen = {}

    def on_model(model):
        seen["labels"] = model.config.num_labels
        seen["model"] = model

    final = train_and_evaluate({"task": "stsb", "model": tiny_model_dir, "data_dir": str(tiny_data_dir),
                                "max_length": 32, "batch_size": 16, "epochs": 1, "num_experts": 4, "top_k": 2,
                                "learning_rate": 1e-3}, on_model=on_model)
    assert seen["labels"] == 1 and seen["model"].config.problem_type == "regression"  # MSE on one output
    assert {"id.pearson", "id.spearmanr", "ood_score.sick", "ood.sick.pearson"} <= set(final)
    assert final["id_score"] == pytest.approx((final["id.pearson"] + final["id.spearmanr"]) / 2)
    assert final["epoch"] == 1.0 and math.isfinite(final["train_loss"])


def test_epochs_default_to_the_task_cap():
    from emoe import hparams

    assert hparams.trial_config({"task": "mnli"})["epochs"] == 3
    assert hparams.trial_config({"task": "rte"})["epochs"] == 10
    assert hparams.trial_config({"task": "mnli", "epochs": 2})["epochs"] == 2


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
        assert any(l.startswith(f"task {task}: 2 epoch(s), 1000 training examples") and f"OOD {sets})" in l
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
