"""Faults on real engines: a failing trial, the MLflow server down mid-sweep (then backfilled), secrets kept out."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _children, env, free_port, run_tiny, start_mlflow_server, stop, sweep_cmd, tiny_args

from emoe.analysis.results import load_trials
from emoe.analysis.stats import analyse
from emoe import tracking

pytestmark = pytest.mark.slow


def fault_env():
    return {**env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def test_nan_trial_is_failed_with_its_error_and_the_rest_finish(tiny_model_dir, tiny_data_dir, tmp_path):
    out = run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", "--learning-rates",
                   "1e-3,1e30", "--scheduler", "none", "--cpus-per-trial", "0.5", "--max-grad-norm", "1e30")
    assert "4 trial(s) failed" in out.stdout
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, _, parents, children = _children(uri, "emoe-pretraining")
    failed = [c for c in children if float(c.data.params["learning_rate"]) > 1]
    fine = [c for c in children if float(c.data.params["learning_rate"]) < 1]
    assert len(failed) == len(fine) == 4
    for c in failed:
        assert c.info.status == "FAILED" and c.data.tags[tracking.OUTCOME] == "failed"
        assert "FloatingPointError: train_loss became" in c.data.tags[tracking.ERROR]
    assert all(c.info.status == "FINISHED" and c.data.tags[tracking.OUTCOME] == "completed" for c in fine)
    trials, _ = load_trials(uri, "emoe-pretraining")
    a = analyse(trials)
    assert a.table["failed"].tolist() == [1, 1, 1, 1]
    assert set(a.table["learning_rate"]) == {1e-3}


def test_mlflow_server_down_mid_sweep_then_backfilled(tiny_model_dir, tiny_data_dir, tmp_path):
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    args = tiny_args(tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", "--learning-rates", "1e-3",
                     "--max-concurrent", "1", "--scheduler", "none")
    args[args.index("--tracking-uri") + 1] = uri
    proc = subprocess.Popen(sweep_cmd("pretraining", *args), cwd=tmp_path, env=fault_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not list((tmp_path / "ray").glob("*/emoe_trials/*/final.json")):
            time.sleep(0.5)
        stop(server)  # down for the rest of the sweep
        log, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    assert "write them into MLflow with emoe sync" in log
    finals = list((tmp_path / "ray").glob("*/emoe_trials/*/final.json"))
    assert len(finals) == 4  # training went on without the tracking server

    server = start_mlflow_server(tmp_path, port)
    try:
        sync = [sys.executable, "-m", "emoe.sync", "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri]
        first = subprocess.run(sync, capture_output=True, text=True, env=fault_env(), timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        _, _, parents, children = _children(uri, "emoe-pretraining")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 4 and all(c.data.tags[tracking.OUTCOME] == "completed" for c in children)
        client = tracking.client(uri)
        for c in children:  # every reported evaluation is in MLflow, once
            # NOTE: MLflow returns a metric's history in no promised order (backfilled points share whole-second
            # timestamps); the UI plots by step, so the order does not matter to a user: compare as sets.
            steps = [m.step for m in client.get_metric_history(c.info.run_id, "id_score")]
            assert sorted(steps) == [1, 2, 3, 4]
            assert c.info.status == "FINISHED"
        second = subprocess.run(sync, capture_output=True, text=True, env=fault_env(), timeout=600)
        assert "added 0 run(s), 0 metric point(s), 0 outcome(s)" in second.stdout, second.stdout + second.stderr
    finally:
        stop(server)


def test_secrets_in_the_environment_never_reach_mlflow(tiny_model_dir, tiny_data_dir, tmp_path):
    secrets = {"HF_TOKEN": "hf_SECRETtoken123", "MLFLOW_TRACKING_PASSWORD": "pw-SECRET-456"}
    # A secret that lands in a flag (a path here) must not be logged either.
    data = tmp_path / "hf_SECRETtoken123"
    data.symlink_to(tiny_data_dir)
    args = tiny_args(tiny_model_dir, data, tmp_path, "--seeds", "0", "--learning-rates", "1e-3", "--scheduler", "none",
                     "--cpus-per-trial", "0.5")
    out = subprocess.run(sweep_cmd("pretraining", *args), capture_output=True, text=True, cwd=tmp_path,
                         env={**env(), **secrets}, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, exp, parents, children = _children(f"sqlite:///{tmp_path}/mlflow.db", "emoe-pretraining")
    logged = []
    for run in parents + children:
        logged += list(run.data.params.values()) + list(run.data.tags.values())
        for art in client.list_artifacts(run.info.run_id):
            if art.path.endswith((".json", ".txt")):
                logged.append(Path(client.download_artifacts(run.info.run_id, art.path, str(tmp_path))).read_text())
    text = "\n".join(logged)
    assert "***" in text  # the data_dir param was redacted
    for value in secrets.values():
        assert value not in text


def test_a_sweep_whose_every_trial_failed_exits_non_zero(tiny_model_dir, tiny_data_dir, tmp_path):
    args = tiny_args(tiny_model_dir, tiny_data_dir, tmp_path, "--seeds", "0", "--learning-rates", "1e30",
                     "--scheduler", "none", "--cpus-per-trial", "0.5", "--max-grad-norm", "1e30")
    out = subprocess.run(sweep_cmd("pretraining", *args), capture_output=True, text=True, cwd=tmp_path, env=env(),
                         timeout=900)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 trial(s) failed" in out.stdout and "every trial failed" in out.stderr
