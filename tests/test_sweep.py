"""Sweeps: scripts' dry runs, bad input before Ray starts, per-arm ASHA, and real tiny sweeps on a local Ray."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import _children, env, run_tiny, sweep_cmd, tiny_args

from emoe import tracking
from emoe.sweep.cli import main as sweep_main
from emoe.sweep.search import PerArmScheduler
from emoe.tracking.records import TrialFiles

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"


def trial_results(exp_dir: Path) -> dict[str, tuple[float, list[dict]]]:
    """cell -> (when its attempt started, every report its records hold, in order: the metrics, a timestamp, and
    where it ran: ``node_ip``, ``node_id``, ``pid``, ``gpu_ids``)."""
    from emoe.tracking.records import sweep_trials

    return {files.dir.name: (cell["started"], files.load_reports(every=True)) for files, cell in sweep_trials(exp_dir)}


@pytest.mark.parametrize("script, trials", [("clustering", 7 * 3 * 3), ("gating", 7 * 3 * 3),
                                            ("pretraining", 4 * 3 * 3), ("experts", 15 * 3 * 3),
                                            ("router", 7 * 3 * 3), ("selection", 4 * 3 * 3),
                                            ("eval_method", 4 * 3 * 3)])
def test_each_ablation_dry_run(script, trials, tmp_path, monkeypatch, capsys):
    """In process (the scripts are the registry: test_cli checks it, and runs one as a subprocess)."""
    from emoe.sweep.ablations import ABLATIONS

    monkeypatch.chdir(tmp_path)
    assert sweep_main(ABLATIONS[script], ["--dry-run", "--model", "minilm", "--data-dir", "demo"]) == 0
    out = capsys.readouterr().out
    assert f"= {trials} trials" in out and "dense" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_dry_run_preset_and_optuna(capsys):
    from clustering import ABLATION

    assert sweep_main(ABLATION, ["--preset", "demo", "--dry-run", "--search", "optuna", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "7 arms x 2 seeds x optuna lr in [1e-05, 0.0001] = 21 trials" in out


def test_experts_grid_is_valid_pairs_only():
    from experts import ABLATION

    pairs = [(a["num_experts"], a["top_k"]) for a in ABLATION.arms.values() if "num_experts" in a]
    assert (4, 1) in pairs and (64, 32) in pairs and all(n % k == 0 and k >= 1 for n, k in pairs)
    assert len(pairs) == 14 and "dense" in ABLATION.arms


@pytest.fixture(autouse=True)
def _sweeps_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SWEEPS))


@pytest.mark.parametrize("args, message, broken", [
    (["--gate", "foo"], "unknown gate 'foo'; valid choices: avg_keys", None),
    (["--clustering", "kmeans"], "--clustering is swept by this ablation", None),
    (["--num-experts", "4", "--top-k", "8"], "top_k=8 must be between 1 and num_experts=4", None),
    (["--num-experts", "7", "--top-k", "2"], "arm 'constrained' (clustering=constrained): num_experts=7 does not "
     "divide d_ff=64", None),
    (["--layers", "0,9"], "block index 9 out of range for a model with 2 blocks", None),
    (["--tracking-uri", "http://127.0.0.1:9"], "tracking URI 'http://127.0.0.1:9' is unreachable", None),
    (["--tracking-uri", "./mlruns"], "MLflow 3 deprecates the file store", None),
    (["--data-dir", "/nonexistent"], "data file not found: /nonexistent/sst2/train.jsonl", None),
    (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory", None),
    (["--task", "colaa"], "unknown task 'colaa'", None),
    (["--tasks", "sst2,colaa"], "unknown task 'colaa'; valid choices: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte", None),
    (["--tasks", "sst2", "--task", "rte"], "--task and --tasks both given", None),
    (["--tasks", "sst2,sst2"], "--tasks lists a task twice", None),
    (["--ood-sets", "imdb,hans"], "--ood-sets: 'hans' is not an OOD set of task(s) sst2; valid choices: amazon, "
     "flipkart, imdb, yelp", None),
    (["--tasks", "sst2,mrpc"], "data file not found: {data}/hans/train.jsonl or {data}/hans/validation.jsonl "
     "(or leave hans out: --ood-sets qqp,rte,twitter)", None),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'", None),
    (["--seeds", "0,0"], "--seeds must be distinct", None),
    (["--seeds", "a"], "expected comma-separated integers", None),
    (["--learning-rates", "-1"], "--learning-rates must be positive", None),
    (["--search", "random"], "argument --search: invalid choice", None),
    (["--gpus-per-trial", "1.5"], "above 1 it must be a whole number", None),
    (["--cpus-per-trial", "512"], "--cpus-per-trial=512 asks for more CPUs than any node has (this machine: ", None),
    (["--gpus-per-trial", "1"], "--gpus-per-trial=1 asks for more GPUs than any node has (this machine: 0 GPUs)",
     None),
    (["--data-dir", "none"], "cannot be loaded from the Hub", None),
    (["--resume"], "nothing to resume", None),
    (["--epochs", "0"], "epochs=0 must be >= 1", None),
    (["--max-length", "x"], "invalid literal for int()", None),
    (["--max-concurrent", "x"], "argument --max-concurrent: invalid int value", None),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0", None),
    (["--lr-range", "1e-3,1e-5", "--search", "optuna"], "--lr-range must be LOW,HIGH with 0 < LOW < HIGH", None),
    (["--model", "not-an-org/not-a-model-xyz"], "--model not-an-org/not-a-model-xyz: not in the local Hugging Face "
     "cache and the Hub is unreachable", None),
    (["--tracking-uri", "ftp://host/x"], "unsupported scheme 'ftp'", None),
    (["--address", "headnode"], "--address 'headnode': expected HOST:PORT", None),
    (["--address", "127.0.0.1:9"], "--address '127.0.0.1:9': no Ray head reachable there", None),
    (["--precision", "fp8"], "unknown precision 'fp8'; valid choices: auto, fp32, bf16, fp16", None),
    # malformed data files: (file under the data dir, new content)
    ([], "sst2/train.jsonl: unreadable json file", ("sst2/train.jsonl", '{"sentence": "ok", "label": 1}\n{broken\n')),
    ([], "sst2/validation.jsonl: label(s) [7] outside task sst2's labels 0..1",
     ("sst2/validation.jsonl", '{"sentence": "ok", "label": 7}\n')),
    ([], "imdb/test.jsonl: missing field(s) ['sentence']", ("imdb/test.jsonl", '{"review": "ok", "label": 1}\n')),
    ([], "yelp/test.jsonl: empty file", ("yelp/test.jsonl", "")),
    ([], "amazon/test.jsonl: field 'sentence' holds int64, not text", ("amazon/test.jsonl", '{"sentence": 3, "label": 1}\n')),
    # a GLUE-X self-collected set that is not there: named, with the way to leave it out
    ([], "flipkart/test.jsonl (or leave flipkart out: --ood-sets imdb,yelp,amazon)", ("flipkart/test.jsonl", None)),
    (["--tasks", "stsb"], "stsb/validation.jsonl: label(s) [7.5] outside task stsb's score range 0..5",
     ("stsb/validation.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 7.5}\n')),
])
def test_bad_input_one_line_before_ray(args, message, broken, tiny_model_dir, tiny_data_dir, tmp_path, capsys,
                                       monkeypatch):
    from clustering import ABLATION

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the Hub is unreachable here either way; fail without retries
    data = tiny_data_dir
    if broken is not None:
        import shutil

        data = shutil.copytree(tiny_data_dir, tmp_path / "data")
        if broken[1] is None:
            (data / broken[0]).unlink()
        else:
            (data / broken[0]).write_text(broken[1])
    base = ["--model", tiny_model_dir, "--data-dir", str(data), "--seeds", "0", "--learning-rates", "1e-3",
            "--storage-path", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert exit_code(lambda: sweep_main(ABLATION, base + args)) == 2
    err = capsys.readouterr().err.strip()
    message = message.format(data=data)
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
    import ray

    assert not ray.is_initialized()


def exit_code(fn) -> int:
    """What the process would exit with: the returned code, or argparse's SystemExit code."""
    try:
        return fn()
    except SystemExit as e:
        return e.code


def _trial(tid, arm, seed=0):
    """A Tune trial as the scheduler sees it; its learning rate (its id here) tells it from its arm's others."""
    return types.SimpleNamespace(trial_id=tid, config={"arm": arm, "seed": seed, "learning_rate": tid})


def test_asha_replayed_from_the_records_decides_as_the_uninterrupted_run():
    """A resumed sweep's ASHA is fed what the cells reported before (their records): a new learning rate is judged
    against the rung results of cells that ended before the interruption, and a cut-off cell started again (a new
    Tune trial, the same cell) keeps the decision made at the rung it had passed, as the uninterrupted run would."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    def make(task=None):
        return ASHAScheduler(time_attr="epoch", max_t=1.0, grace_period=0.25, reduction_factor=2)

    r = lambda epoch, acc: {"epoch": epoch, "id_score": acc}  # noqa: E731
    cfg = lambda lr: {"arm": "a", "seed": 0, "learning_rate": lr}  # noqa: E731
    uninterrupted = PerArmScheduler(make)
    uninterrupted.set_search_properties("id_score", "max")
    for t in (_trial("1e-3", "a"), _trial("2e-3", "a"), _trial("3e-3", "a")):
        uninterrupted.on_trial_add(None, t)
    assert uninterrupted.on_trial_result(None, _trial("2e-3", "a"), r(0.25, 0.95)) == TrialScheduler.CONTINUE
    for report in (r(0.25, 0.99), r(0.5, 0.6), r(1.0, 0.6)):
        uninterrupted.on_trial_result(None, _trial("1e-3", "a"), report)
    # the interruption came here: 1e-3 ended, 2e-3 was cut off after its first rung, 3e-3 had not started
    history = [(cfg("1e-3"), [r(0.25, 0.99), r(0.5, 0.6), r(1.0, 0.6)], True), (cfg("2e-3"), [r(0.25, 0.95)], False)]
    resumed, partial = PerArmScheduler(make, history=history), PerArmScheduler(make, history=history[:1])
    again, new = types.SimpleNamespace(trial_id="other", config=cfg("2e-3")), _trial("3e-3", "a")
    for s in (resumed, partial):
        s.set_search_properties("id_score", "max")
        for t in (again, new):
            s.on_trial_add(None, t)
    # the cut-off cell continues from a checkpoint before its rung result and reports it again: the decision made
    # there stands (without its own record it would be judged again, against a result that came after it)
    assert resumed.on_trial_result(None, again, r(0.25, 0.95)) == TrialScheduler.CONTINUE
    assert partial.on_trial_result(None, again, r(0.25, 0.95)) == TrialScheduler.STOP
    assert resumed.on_trial_result(None, again, r(0.5, 0.7)) == TrialScheduler.CONTINUE
    # the new rate is judged against the earlier cells' rung results: stopped, as it would be uninterrupted
    assert uninterrupted.on_trial_result(None, _trial("3e-3", "a"), r(0.25, 0.8)) == TrialScheduler.STOP
    assert resumed.on_trial_result(None, new, r(0.25, 0.8)) == TrialScheduler.STOP
    fresh = PerArmScheduler(make)  # without the history, nothing to compare with: it would have gone on
    fresh.set_search_properties("id_score", "max")
    fresh.on_trial_add(None, new)
    assert fresh.on_trial_result(None, new, r(0.25, 0.8)) == TrialScheduler.CONTINUE


def test_asha_per_arm_compares_trials_only_within_their_arm_and_seed():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    def make(task=None):
        return ASHAScheduler(time_attr="epoch", max_t=1.0, grace_period=0.25, reduction_factor=2)

    per_arm, glob = PerArmScheduler(make), make()
    for s in (per_arm, glob):
        s.set_search_properties("id_score", "max")
    a1, b1, b2, b1_seed1 = _trial("a1", "fast"), _trial("b1", "slow"), _trial("b2", "slow"), _trial("b3", "slow", 1)
    for t in (a1, b1, b2, b1_seed1):
        per_arm.on_trial_add(None, t)
        glob.on_trial_add(None, t)
    r = lambda acc: {"epoch": 0.25, "id_score": acc}  # noqa: E731
    assert per_arm.on_trial_result(None, a1, r(0.9)) == TrialScheduler.CONTINUE
    assert glob.on_trial_result(None, a1, r(0.9)) == TrialScheduler.CONTINUE
    # The slow arm's first trial would be stopped by the fast arm under global ASHA, not per arm.
    assert glob.on_trial_result(None, b1, r(0.5)) == TrialScheduler.STOP
    assert per_arm.on_trial_result(None, b1, r(0.5)) == TrialScheduler.CONTINUE
    # Within its own arm and seed (another learning rate), a worse trial is stopped...
    assert per_arm.on_trial_result(None, b2, r(0.4)) == TrialScheduler.STOP
    # ...but another seed is a separate replicate: it never competes with its sibling seeds.
    assert per_arm.on_trial_result(None, b1_seed1, r(0.3)) == TrialScheduler.CONTINUE


def test_sweep_table_and_report_select_with_the_same_rule(monkeypatch):
    """The sweep's closing table and the analysis report both call ``emoe.analysis.selection.select``; on trials
    where the rules once differed (an early-stopped trial with the best id_score) they pick the same rate."""
    import pandas as pd

    from emoe.analysis import selection, stats
    from emoe.sweep.cli import closing_table

    rows = [("a", 0, 1e-3, "completed", 0.80, 0.7), ("a", 1, 1e-3, "completed", 0.60, 0.5),
            ("a", 0, 1e-4, "early_stopped", 0.99, 0.9), ("a", 1, 1e-4, "completed", 0.70, 0.6),
            ("dense", 0, 1e-3, "completed", 0.5, 0.5), ("dense", 1, 1e-3, "failed", None, None)]
    trials = pd.DataFrame(rows, columns=["arm", "seed", "learning_rate", "outcome", "id_score", "ood_score"])
    trials["task"] = "sst2"
    calls = []
    real = selection.select
    monkeypatch.setattr(selection, "select", lambda *a, **k: calls.append("select") or real(*a, **k))
    table = closing_table(trials).splitlines()
    report = stats.analyse(trials, metric="id_score")
    # one each (no second rule anywhere), then the report's held-out-seed inflation: one per left-out seed
    assert calls == ["select", "select"] + ["select"] * 2
    assert table[1].split() == ["sst2", "a", "0.0001", "2", "1", "0.8450+-0.2051", "0.7500+-0.2121"]
    assert table[2].split() == ["sst2", "dense", "0.001", "1", "0", "0.5000", "(1", "seed)", "0.5000", "(1", "seed)"]
    chosen = dict(zip(report.table["arm"], report.table["learning_rate"]))
    assert chosen == {"a": 1e-4, "dense": 1e-3}


@pytest.mark.slow
def test_tiny_sweep_with_asha_logs_every_trial(tiny_model_dir, tiny_data_dir, tmp_path):
    out = run_tiny("clustering", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0,1", "--learning-rates",
                   "1e-3", "--cpus-per-trial", "0.5", "--early-stop-scope", "global")
    assert "per arm: the learning rate with the best mean id_score over seeds" in out.stdout
    assert "14 of 14 cells ended" in out.stdout and out.stdout.count("] sst2 ") == 14  # a line per ended trial
    assert "mlflow ui --backend-store-uri" in out.stdout
    client, exp, parents, children = _children(f"sqlite:///{tmp_path}/mlflow.db", "emoe-clustering")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.SWEEP] == "clustering" and parent.data.tags[tracking.FACTOR] == "clustering"
    assert "emoe.git_commit" in parent.data.tags and "emoe.command" in parent.data.tags
    assert len(children) == 14
    assert {c.data.tags[tracking.ARM] for c in children} == {"constrained", "kmeans", "hierarchical", "spectral",
                                                              "random", "contiguous", "dense"}
    assert len({c.data.tags[tracking.TRIAL_ID] for c in children}) == 14
    for c in children:
        assert c.data.tags[tracking.PARENT] == parent.info.run_id
        assert c.info.status == "FINISHED"
        # how the trial ran, in its own params: the knobs, and the sweep settings that could cut it short
        assert c.data.params["sweep.scheduler"] == "asha" and c.data.params["ood_protocol"] == "gluex"
        outcome = c.data.tags[tracking.OUTCOME]
        assert outcome in ("completed", "early_stopped")
        assert (c.data.metrics["epoch"] == 1.0) == (outcome == "completed")
        arm = c.data.tags[tracking.ARM]  # the UI's default table shows the run name: task, arm, seed, lr, outcome, scores
        assert c.data.tags["mlflow.runName"] == (f"sst2 {arm} s{c.data.params['seed']} lr1e-03 | {outcome} | "
                                                 f"id {c.data.metrics['id_score']:.4f} ood {c.data.metrics['ood_score']:.4f}")
        assert c.data.params["clustering"] == c.data.tags[tracking.ARM] or c.data.tags[tracking.ARM] == "dense"
        assert {"id_score", "id.accuracy", "ood_score", "ood_score.imdb", "ood.imdb.accuracy", "train_loss",
                "step"} <= set(c.data.metrics) and c.data.tags[tracking.TASK] == "sst2"
        history = client.get_metric_history(c.info.run_id, "id_score")
        assert [m.step for m in history] == sorted(m.step for m in history) and history[0].step == 1
        artifacts = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert "emoe_config.json" in artifacts
        assert ("partitions.npz" in artifacts) == (c.data.tags[tracking.ARM] != "dense")
        assert "predictions.npz" in artifacts  # per example: the final evaluation's, or the one ASHA stopped on
        assert c.data.tags[tracking.PLACEMENT].startswith("node ")
    # The closing lines link to the experiment's runs table, not the MLflow 3 UI's GenAI overview.
    assert f"#/experiments/{exp.experiment_id}/runs" in out.stdout


@pytest.mark.slow
def test_logical_gpus_fractional_placement(tiny_model_dir, tiny_data_dir, tmp_path):
    relative = os.path.relpath(tiny_data_dir, tmp_path)  # as a user types it; trials run in other directories
    run_tiny("pretraining", tiny_model_dir, relative, tmp_path, "--seeds", "0,1", "--learning-rates", "1e-3",
             "--num-gpus", "4", "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.25", "--scheduler", "none",
             "--eval-steps", "none")
    (exp_dir,) = (tmp_path / "ray").iterdir()
    results = trial_results(exp_dir)
    assert len(results) == 8
    spans = []
    for start, rows in results.values():  # each trial sees exactly one (logical) GPU, the same in every result
        assert {r["gpu_ids"] for r in rows} == {rows[0]["gpu_ids"]} and rows[0]["gpu_ids"] in {"0", "1", "2", "3"}
        spans.append((start, rows[-1]["timestamp"], rows[0]["gpu_ids"]))  # from its start to its last report
    events = sorted([(start, 1, gpu) for start, _, gpu in spans] + [(end, -1, gpu) for _, end, gpu in spans],
                    key=lambda e: (e[0], e[1]))  # at equal times, an end before a start
    running, per_gpu, peak = 0, {}, 0
    for _, delta, gpu in events:
        running += delta
        per_gpu[gpu] = per_gpu.get(gpu, 0) + delta
        peak = max(peak, running)
        assert per_gpu[gpu] <= 2  # 0.5 GPU per trial: at most two trials share a GPU
    assert 2 < peak <= 8  # more at once than 2 CPUs alone would allow at 1 CPU each, never more than 4 / 0.5


@pytest.mark.slow
@pytest.mark.parametrize("sig, group", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False),
                                        (signal.SIGKILL, True)],
                         ids=["ctrl-c-driver", "ctrl-c-group", "sigterm", "sigkill"])
def test_interrupted_sweep_resumes_without_rerun_or_duplicates(sig, group, tiny_model_dir, tiny_data_dir, tmp_path):
    """Ctrl-C (to the driver alone, or to its process group as a terminal sends it), SIGTERM (as a cluster's
    scheduler sends it), or the driver killed outright (with its local Ray: the machine died), then --resume.
    Interrupted, the sweep says so truthfully: the parent run and every unfinished trial run KILLED, the cut-off
    cells marked in the closing table (not counted as results), the tool's own resume command, exit code 130."""
    # Trials long enough (3 epochs of 400 sentences) that the interruption lands while later ones still run:
    # a reused worker starts the next trial at once.
    args = tiny_args(tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", "--learning-rates", "1e-3",
                     "--max-concurrent", "1", "--scheduler", "none", "--max-train-samples", "400", "--epochs", "3",
                     "--eval-steps", "10")
    proc = subprocess.Popen(sweep_cmd("pretraining", *args), cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    trials = tmp_path / "ray"

    def mid_trial() -> list[Path]:  # the checkpoints of trials that are still training
        return [p for p in trials.glob("*/emoe_trials/*/state.pt") if not (p.parent / "final.json").exists()]

    deadline = time.time() + 600
    while time.time() < deadline and not (list(trials.glob("*/emoe_trials/*/final.json")) and mid_trial()):
        time.sleep(0.1)
    assert list(trials.glob("*/emoe_trials/*/final.json")), "no trial finished"
    first_step = 10  # --eval-steps 10: a trial trained again would report this step again
    if sig != signal.SIGKILL:
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 130, log[-3000:]
        assert "sweep interrupted:" in log and "--resume" in log and "Tuner.restore" not in log, log[-3000:]
        table = log[log.index("per arm:"):]
        assert "cut off" in table.splitlines()[1], table
    else:  # at once: the trial that has a checkpoint is still training
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate(timeout=60)
        time.sleep(2)
    import torch

    # the checkpoint each interrupted trial will continue from (after a Ctrl-C a trial may have ended cleanly)
    origins = {p.parent.name: torch.load(p, weights_only=False)["step"] for p in mid_trial()}
    if sig == signal.SIGKILL:
        assert origins, "the kill found no trial with a checkpoint"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, _, parents, children = _children(uri, "emoe-pretraining")
    if sig != signal.SIGKILL:  # a clean stop leaves nothing RUNNING; after SIGKILL the resume must clean up
        assert all(r.info.status != "RUNNING" for r in parents + children), log[-3000:]
        assert parents[0].info.status == "KILLED"
        unfinished = [c for c in children if tracking.OUTCOME not in c.data.tags]
        assert unfinished and all(c.info.status == "KILLED" for c in unfinished), log[-3000:]
    done_before = {p.parent.name for p in (tmp_path / "ray").glob("*/emoe_trials/*/final.json")}
    assert 1 <= len(done_before) < 4, log[-3000:]

    out = subprocess.run(sweep_cmd("pretraining", "--resume", "--storage-path", str(tmp_path / "ray")),
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _, _, parents, children = _children(uri, "emoe-pretraining")
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and len({c.data.tags[tracking.TRIAL_ID] for c in children}) == 4
    assert all(r.info.status != "RUNNING" for r in parents + children)
    assert all(c.info.status == "FINISHED" and c.data.tags[tracking.OUTCOME] == "completed" for c in children)
    client = tracking.client(uri)
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "id_score")]
        if c.data.tags[tracking.TRIAL_ID] in done_before:  # finished before the interruption: trained once
            assert steps.count(first_step) == 1, steps
        # every trial, the interrupted ones included (they continued from their checkpoints): each step once
        assert sorted(steps) == [10, 20, 25, 30, 40, 50, 60, 70, 75], steps  # every 10 steps and each epoch end
    for trial, origin in origins.items():
        # the resumed attempt's first report (Ray's records keep both attempts') is the evaluation right after its
        # checkpoint's step: it continued there, training nothing twice
        (run,) = [c for c in children if c.data.tags[tracking.TRIAL_ID] == trial]
        assert run.data.tags[tracking.RESUMED] == str(origin)
        # every attempt's reports (the cell's records keep them all)
        results = TrialFiles(next(trials.iterdir()), trial).load_reports(every=True)
        resumed = [r["step"] for r in results if r.get("resumed_from") == origin]
        assert resumed and min(resumed) == min(s for s in (10, 20, 25, 30, 40, 50, 60, 70, 75) if s > origin), (
            origin, [(r["step"], r.get("resumed_from")) for r in results])
        # and it ends where an uninterrupted run with the same config and seed ends
        from conftest import assert_matches_uninterrupted

        assert_matches_uninterrupted(run.data.metrics, next(trials.iterdir()), trial)


@pytest.mark.slow
def test_final_metrics_saved_even_when_asha_stops_at_max_t(tiny_model_dir, tiny_data_dir, tmp_path):
    """ASHA stops every trial on the report that reaches max_t; the completion marker must exist all the same."""
    run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", "--learning-rates", "1e-3",
             "--cpus-per-trial", "0.5")
    finals = list((tmp_path / "ray").glob("*/emoe_trials/*/final.json"))
    assert len(finals) == 4 and all(json.loads(f.read_text())["epoch"] == 1.0 for f in finals)


@pytest.mark.slow
def test_optuna_gives_every_arm_the_same_budget(tiny_model_dir, tiny_data_dir, tmp_path):
    run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0,1", "--search", "optuna",
             "--num-samples", "2", "--cpus-per-trial", "0.5", "--eval-steps", "none")
    _, _, _, children = _children(f"sqlite:///{tmp_path}/mlflow.db", "emoe-pretraining")
    by_arm = {}
    for c in children:
        by_arm.setdefault(c.data.tags[tracking.ARM], []).append(c)
    assert sorted(by_arm) == ["pretrained-dense", "pretrained-emoe", "random-dense", "random-emoe"]
    for runs in by_arm.values():  # an equal budget: 2 samples per arm, seeds in turn, rates from the range
        assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
        assert all(1e-5 <= float(r.data.params["learning_rate"]) <= 1e-4 for r in runs)


def _ended(uri: str, experiment: str) -> int:
    """Trial runs of the experiment that have an outcome (read while the sweep runs)."""
    try:
        _, _, _, children = _children(uri, experiment)
    except Exception:  # the store or the experiment is not there yet
        return 0
    return sum(tracking.OUTCOME in c.data.tags for c in children)


@pytest.mark.slow
@pytest.mark.parametrize("search", ["asha", "optuna"])
def test_resume_after_driver_kill_keeps_the_grid_and_each_arms_budget(search, tiny_model_dir, tiny_data_dir,
                                                                      tmp_path):
    """The driver (and its local Ray) SIGKILLed mid-sweep, then --resume: with the default ASHA (per arm and seed,
    two learning rates so that brackets have rivals) every grid cell runs once; with Optuna every arm gets exactly
    its budget, its seeds in turn, and no trial runs twice."""
    extra = ["--seeds", "0,1", "--max-concurrent", "1", "--max-train-samples", "96", "--epochs", "2",
             "--eval-steps", "3"]
    extra += (["--learning-rates", "1e-3,1e-4"] if search == "asha" else
              ["--search", "optuna", "--num-samples", "4", "--scheduler", "none"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.Popen(sweep_cmd("pretraining", *tiny_args(tiny_model_dir, tiny_data_dir, tmp_path, *extra)),
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and _ended(uri, "emoe-pretraining") < 3 and proc.poll() is None:
        time.sleep(1)
    time.sleep(3)  # Tune saves its experiment state (and the searcher's) every few seconds
    os.killpg(proc.pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=60)
    before = _ended(uri, "emoe-pretraining")
    assert 3 <= before < 16, log[-3000:]

    out = subprocess.run(sweep_cmd("pretraining", "--resume", "--storage-path", str(tmp_path / "ray")),
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _, _, parents, children = _children(uri, "emoe-pretraining")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 16 and len({c.data.tags[tracking.TRIAL_ID] for c in children}) == 16
    assert all(c.info.status == "FINISHED" for c in children), (
        [(c.data.tags[tracking.TRIAL_ID], c.info.status, c.data.tags.get(tracking.OUTCOME), c.data.metrics)
         for c in children if c.info.status != "FINISHED"], out.stdout[-3000:])
    outcomes = {c.data.tags[tracking.OUTCOME] for c in children}
    arms = ["pretrained-dense", "pretrained-emoe", "random-dense", "random-emoe"]
    if search == "asha":
        cells = sorted((c.data.tags[tracking.ARM], c.data.params["seed"], c.data.params["learning_rate"])
                       for c in children)
        assert cells == sorted((a, s, lr) for a in arms for s in ("0", "1") for lr in ("0.001", "0.0001"))
        assert outcomes <= {"completed", "early_stopped"}
    else:
        for arm in arms:  # exactly the budget, the seeds in turn (each rate on both seeds)
            runs = [c for c in children if c.data.tags[tracking.ARM] == arm]
            assert sorted(c.data.params["seed"] for c in runs) == ["0", "0", "1", "1"]
            rates = sorted(float(c.data.params["learning_rate"]) for c in runs)
            assert rates[0] == rates[1] and rates[2] == rates[3], rates  # a rate runs on every seed
        assert outcomes == {"completed"}


def test_help_shows_the_presets_defaults_and_hides_the_swept_flag(capsys):
    from clustering import ABLATION

    assert exit_code(lambda: sweep_main(ABLATION, ["--preset", "demo", "--help"])) == 0
    demo = capsys.readouterr().out
    assert "Defaults shown are preset demo's" in demo
    assert "(default: 0,1)" in demo and "(default: 0.0001)" in demo and "(default: 1000)" in demo  # seeds, lrs, data
    assert "--clustering" not in demo and "--seed " not in demo  # swept by the script / owned by --seeds
    assert exit_code(lambda: sweep_main(ABLATION, ["--help"])) == 0
    plain = capsys.readouterr().out
    assert "(default: 0,1,2)" in plain and "(default: 2e-05,3e-05,5e-05)" in plain  # the knobs' declared grids


def test_settings_round_trip_through_the_sweep_record(tmp_path):
    from emoe.sweep import SweepSettings
    from emoe.tracking.records import SweepRecord

    settings = SweepSettings.from_preset("demo", trial={"epochs": 2}, seeds=(3, 4), search="optuna")
    assert settings.trial["model"] == "minilm" and settings.trial["epochs"] == 2 and settings.cpus_per_trial == 2
    record = SweepRecord("clustering", "clustering", {"dense": {"method": "dense"}}, settings.to_dict(), "emoe-x",
                         "run1", ["sweeps/clustering.py"])
    record.save(tmp_path)
    again = SweepRecord.load(tmp_path)
    assert (again.design, again.arms, again.parent_run_id, again.argv) == (record.design, record.arms, "run1",
                                                                            ["sweeps/clustering.py"])
    assert SweepSettings.from_dict(again.settings) == settings  # tuples come back as tuples
    flat = again.trial_config({**settings.trial, "arm": "dense", "seed": 3, "learning_rate": 1e-4,
                               "__trial_index__": 0})
    assert flat["method"] == "dense" and flat["seed"] == 3 and "arm" not in flat and "__trial_index__" not in flat


@pytest.mark.slow
def test_kept_models_are_re_evaluated_on_a_new_set_without_retraining(tiny_model_dir, tiny_data_dir, tmp_path):
    """A finished sweep's kept models scored on an extra OOD file: the scores land in the same trial runs, once,
    however often it runs; the analysis reads the new set."""
    from conftest import PACKAGED_DATA, _head, write_jsonl

    from emoe.analysis.results import load_trials
    from emoe.evaluate import evaluate_runs

    # two rates under ASHA (per arm and seed): a trial it stops keeps its best model so far, and is re-evaluated too
    # --ood-sets: its param ("imdb,yelp") must parse back (issue 21: evaluate raised on every such sweep)
    run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", "--learning-rates",
             "1e-3,1e-5", "--cpus-per-trial", "0.5", "--checkpoint-every", "none", "--eval-steps", "2",
             "--ood-sets", "imdb,yelp")
    extra = write_jsonl(tmp_path / "extra.jsonl", _head(PACKAGED_DATA / "yelp" / "test.jsonl", 24))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert evaluate_runs(uri, "emoe-pretraining", {"extra": str(extra)}) == {"evaluated": 8, "skipped": 0,
                                                                            "no_model": 0, "older": 0}
    assert evaluate_runs(uri, "emoe-pretraining", {"extra": str(extra)}) == {"evaluated": 0, "skipped": 8,
                                                                            "no_model": 0, "older": 0}
    client, _, _, children = _children(uri, "emoe-pretraining")
    assert {c.data.tags[tracking.OUTCOME] for c in children} <= {"completed", "early_stopped"}
    for c in children:
        history = client.get_metric_history(c.info.run_id, "ood_score.extra")
        assert len(history) == 1 and history[0].step == c.data.metrics["step"]
        assert 0 <= history[0].value <= 1 and "ood.extra.accuracy" in c.data.metrics
        assert Path(c.data.tags[tracking.MODEL]).is_dir()
    trials, _ = load_trials(uri, "emoe-pretraining")
    assert trials["ood_score.extra"].notna().all()


@pytest.mark.slow
def test_extend_runs_only_the_missing_cells_under_the_same_parent(tiny_model_dir, tiny_data_dir, tmp_path):
    common = ("--learning-rates", "1e-3", "--cpus-per-trial", "0.5", "--scheduler", "none", "--checkpoint-every",
              "none", "--keep-model", "none")
    run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", *common)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, _, parents, before = _children(uri, "emoe-pretraining")
    out = run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0,1", "--extend", *common)
    _, _, parents_after, after = _children(uri, "emoe-pretraining")
    assert len(parents_after) == 1 and parents_after[0].info.run_id == parents[0].info.run_id
    assert parents_after[0].info.status == "FINISHED"
    new = [c for c in after if c.info.run_id not in {b.info.run_id for b in before}]
    assert len(before) == 4 and len(new) == 4 and {c.data.params["seed"] for c in new} == {"1"}
    assert all(c.data.tags[tracking.OUTCOME] == "completed" for c in after)
    again = run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0,1", "--extend", *common)
    assert "nothing to run" in again.stdout and len(_children(uri, "emoe-pretraining")[3]) == 8
    bad = subprocess.run(sweep_cmd("pretraining", *tiny_args(tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0,1",
                                                             "--extend", "--max-length", "40", *common)),
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert bad.returncode == 2 and "--extend: max_length is 32 in the sweep being extended, 40 now" in bad.stderr
    assert "per arm" in out.stdout
    # issue 20, finding 7: the primary analysis is declared at launch, and stays; each run that showed new results
    # was a look, and the second one is beyond the one planned
    params = parents_after[0].data.params
    assert {k: params[f"primary.{k}"] for k in ("metric", "blocks", "baseline", "alpha", "planned_looks")} == \
        {"metric": "ood_score", "blocks": "auto", "baseline": "auto", "alpha": "0.05", "planned_looks": "1"}
    client = tracking.client(uri)
    assert client.get_run(parents[0].info.run_id).data.tags[tracking.LOOKS] == "4,8"
    assert "look 2 at this sweep's results, 1 planned: its report will be exploratory" in out.stdout
    moved = subprocess.run(sweep_cmd("pretraining", *tiny_args(tiny_model_dir, tiny_data_dir, tmp_path, "--seeds",
                                                               "0,1,2", "--extend", "--alpha", "0.1", *common)),
                           capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert moved.returncode == 2 and ("--extend: the sweep's primary analysis declared primary.alpha 0.05 at launch, "
                                      "0.1 now") in moved.stderr


@pytest.mark.slow
def test_scale_benchmark_runs_a_grid_of_trivial_trials_through_the_real_runner(tmp_path):
    """The 2,000-trial benchmark in miniature (24 trials): every trial a finished MLflow run, the analysis reads
    them, and the figures are printed."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_scale.py"), "--seeds", "1",
                          "--learning-rates", "1", "--reports", "2", "--keep", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "24 trials" in out.stdout and "driver memory" in out.stdout and "analysis of the sweep" in out.stdout
    _, _, parents, children = _children(f"sqlite:///{tmp_path}/mlflow.db", "emoe-bench-scale")
    assert len(parents) == 1 and len(children) == 24
    assert {c.data.params["task"] for c in children} == {"sst2", "rte", "mrpc", "stsb"}


@pytest.mark.parametrize("flag", ["--resume", "--extend"])
def test_a_sweep_of_an_older_scoring_is_not_continued(flag, tmp_path, capsys):
    """A sweep started before the OOD protocols and the official partition (its record has no scoring version) is
    refused by --resume and --extend in one line, before Ray starts: one table must not mix two scorings."""
    from clustering import ABLATION

    from emoe.sweep import SweepSettings
    from emoe.tracking.records import SCORING_VERSION, SweepRecord

    old = tmp_path / "emoe-clustering-20260101-000000"
    old.mkdir()
    record = SweepRecord("clustering", "clustering", ABLATION.arms, SweepSettings.from_preset("demo").to_dict(),
                         "emoe-clustering", "parent0")
    record.save(old)
    assert SweepRecord.load(old).scoring_version == SCORING_VERSION
    data = json.loads((old / "emoe_sweep.json").read_text())
    del data["scoring_version"]  # as written before versions were recorded
    (old / "emoe_sweep.json").write_text(json.dumps(data))
    assert exit_code(lambda: sweep_main(ABLATION, [flag, str(old), "--preset", "demo",
                                                   "--storage-path", str(tmp_path)])) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {flag}: {old} was started by an older emoe (scoring version 1")
    assert "start a new sweep" in err and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_the_paper_lora_comparison_runs_as_a_sweep(tiny_model_dir, tiny_data_dir, tmp_path):
    """comparison_lora on Ray: one trial per official LoRA command, each under its own regime and method, mirrored to
    MLflow with those params, completed, and the report compares the arms with vanilla LoRA (dense)."""
    args = ["--model", tiny_model_dir, "--data-dir", str(tiny_data_dir), "--epochs", "1", "--max-train-samples", "48",
            "--max-eval-samples", "16", "--max-length", "32", "--batch-size", "16", "--layers", "-1", "--seeds", "0",
            "--learning-rates", "1e-3", "--cpus-per-trial", "0.5", "--scheduler", "none", "--checkpoint-every", "none",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray")]
    out = subprocess.run(sweep_cmd("comparison_lora", *args), capture_output=True, text=True, cwd=tmp_path, env=env(),
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _, _, parents, children = _children(f"sqlite:///{tmp_path}/mlflow.db", "emoe-comparison_lora")
    got = {c.data.tags[tracking.ARM]: (c.data.params["method"], c.data.params["regime"]) for c in children}
    assert got == {"dense": ("dense", "lora"), "block": ("dense", "lora_block"), "gmoe": ("gmoe", "lora_block"),
                   "emoe": ("emoe", "lora_gates"), "emoe-learn": ("emoe", "lora_gates")}
    assert all(c.data.tags[tracking.OUTCOME] == "completed" for c in children) and len(parents) == 1
    assert {c.data.params["expert_repeat"] for c in children if c.data.tags[tracking.ARM] == "gmoe"} == {"8"}


@pytest.mark.slow
def test_a_sweep_of_constructions_by_routers_runs_to_its_table(tiny_model_dir, tiny_data_dir, tmp_path):
    """Constructions (MoEfication's co-activation split, CMoE's, LLaMA-MoE's gradient split) crossed with routers
    (avg-k, the MLP predictor, CMoE's analytic router, D2DMoE's norm regression) on Ray: every trial completes, logs
    its compute beside its scores, and the closing table has every arm."""
    out = run_tiny("crossing", tiny_model_dir, tiny_data_dir, tmp_path, "--factor",
                   "clustering=coactivation,cmoe,gradient", "--factor", "gate=avg_keys,mlp,analytic,norm_regression",
                   "--seeds", "0", "--learning-rates", "1e-3", "--cpus-per-trial", "0.5", "--scheduler", "none",
                   "--checkpoint-every", "none", "--keep-model", "none", "--calibration-samples", "64")
    _, _, _, children = _children(f"sqlite:///{tmp_path}/mlflow.db", "emoe-clustering-x-gate")
    assert len(children) == 13 and all(c.data.tags[tracking.OUTCOME] == "completed" for c in children)
    routed = [c for c in children if c.data.tags[tracking.ARM] != "dense"]
    assert all(c.data.metrics["active_neurons.block1"] == 32 for c in routed)  # k = 2 of 4 experts of 64 neurons
    assert all("ffn_flops.block1" in c.data.metrics for c in routed)
    for arm in ("coactivation+mlp", "cmoe+analytic", "gradient+norm_regression", "gradient+avg_keys", "dense"):
        assert arm in out.stdout
    html = (tmp_path / "reports" / "emoe-clustering-x-gate" / "report.html").read_text()
    assert "Compute (per trial; converted blocks per token)" in html and "gradient+norm_regression" in html