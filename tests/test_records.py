"""The trial records as the truth (issue 21): a sweep's files alone say which cells are done and give the same
analysis as MLflow; MLflow is a mirror that ``emoe sync`` rebuilds from them."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import env, run_tiny

from emoe.analysis import report, results, stats
from emoe.tracking.records import SweepRecord, TrialFiles, done_cells


def _analysis(trials, sweep):
    return stats.analyse(trials, primary=results.primary_of(sweep), bayes_samples=0)


def _same(a, b):
    pd.testing.assert_frame_equal(report.display_table(a), report.display_table(b))
    np.testing.assert_allclose(a.tests["wilcoxon"]["p"], b.tests["wilcoxon"]["p"])
    assert a.status["primary"] == b.status["primary"] and a.blocks == b.blocks


def test_trial_files_say_how_each_trial_ended(tmp_path):
    files = TrialFiles(tmp_path, "t1")
    files.save_config("kmeans", {"task": "sst2", "seed": 0, "learning_rate": 1e-3, "epochs": 2})
    assert files.outcome(2) is None  # started, never ended: failed, as an unended MLflow run
    files.append_report({"step": 1, "epoch": 1.0, "id_score": 0.5})
    files.append_report({"step": 1, "epoch": 1.0, "id_score": 0.6})  # a resumed attempt repeats its step
    files.save_ended("early_stopped")
    outcome, metrics = files.outcome(2)
    assert outcome == "early_stopped" and {k: metrics[k] for k in ("step", "epoch", "id_score")} == \
        {"step": 1, "epoch": 1.0, "id_score": 0.6}
    assert done_cells(tmp_path) == {("sst2", "kmeans", 0, 1e-3)}
    files.save_ended("failed", "boom")
    assert files.outcome(2) == ("failed", {}) and done_cells(tmp_path) == set()


@pytest.mark.slow
def test_a_deleted_store_is_rebuilt_from_the_records_and_nothing_reruns(tiny_model_dir, tiny_data_dir, tmp_path):
    common = ("--seeds", "0,1", "--learning-rates", "1e-3", "--cpus-per-trial", "0.5", "--scheduler", "none",
              "--checkpoint-every", "none", "--keep-model", "none")
    run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, *common)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_dir = next(p for p in (tmp_path / "ray").glob("emoe-pretraining-*") if SweepRecord.exists(p))
    from_store = _analysis(*results.load_trials(uri, "emoe-pretraining"))
    from_records = _analysis(*results.load_records(sweep_dir))
    _same(from_store, from_records)
    assert from_records.status["primary"] and len(from_records.chosen) == 8
    assert SweepRecord.load(sweep_dir).looks == [8]

    (tmp_path / "mlflow.db").unlink()  # the store is lost; the records are not
    shutil.rmtree(tmp_path / "mlartifacts", ignore_errors=True)
    again = run_tiny("pretraining", tiny_model_dir, tiny_data_dir, tmp_path, *common, "--extend")
    assert "nothing to run" in again.stdout  # decided from the records: MLflow knows nothing now
    sync = subprocess.run([sys.executable, "-m", "emoe.sync", "--storage-path", str(tmp_path / "ray"),
                           "--tracking-uri", uri], capture_output=True, text=True, cwd=tmp_path, env=env(),
                          timeout=600)
    assert sync.returncode == 0, sync.stderr[-2000:]
    rebuilt = _analysis(*results.load_trials(uri, "emoe-pretraining"))
    _same(rebuilt, from_records)
    _same(rebuilt, _analysis(*results.load_records(sweep_dir)))
    from emoe.cli import main

    assert main(["analyse", "--records", str(sweep_dir), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").is_file()


def test_extend_dry_run_lists_only_the_cells_it_would_run(tmp_path, monkeypatch, capsys):
    """A sweep of seeds 0 (done for two arms) extended to seeds 0,1: the dry run lists the 2 seed-0 cells not done
    and the 4 seed-1 cells, not the whole grid."""
    from emoe import hparams
    from emoe.sweep.ablations import ABLATIONS
    from emoe.sweep.cli import main as sweep_main
    from emoe.sweep.plan import SweepSettings

    monkeypatch.chdir(tmp_path)
    design = ABLATIONS["pretraining"]
    flags = ["--preset", "demo", "--learning-rates", "1e-3", "--storage-path", str(tmp_path)]
    sweep = tmp_path / "emoe-pretraining-20260101-000000"
    sweep.mkdir()
    settings = SweepSettings.from_preset("demo", seeds=(0,), learning_rates=(1e-3,), storage_path=str(tmp_path))
    SweepRecord(design.name, design.factor, design.arms, settings.to_dict(), "emoe-pretraining", "p0").save(sweep)
    base = {**settings.trial, "seed": 0, "learning_rate": 1e-3}
    for arm in list(design.arms)[:2]:
        config = hparams.trial_config({**base, **design.arms[arm]})
        files = TrialFiles.of_cell(sweep, arm, config)
        files.start_attempt(arm, config)
        files.save_final({"id_score": 0.5, "epoch": float(config["epochs"]), "step": 10})
    assert sweep_main(design, [*flags, "--seeds", "0,1", "--extend", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--extend: 6 of these 8 cells would run" in out
    listed = [line.split()[:3] for line in out.splitlines() if line.startswith("sst2 ")]
    done = {(a, "0") for a in list(design.arms)[:2]}
    assert len(listed) == 6 and not {(arm, seed) for _, arm, seed in listed} & done


def test_a_cell_that_finished_as_the_driver_died_gets_its_verdict_and_its_run_on_resume(tmp_path):
    """The driver killed between a cell's final metrics and its verdict: a resume does not run the cell again (it
    is done), so before anything runs its verdict comes from its records and its MLflow run is finished from them
    (it would otherwise stay RUNNING, then KILLED, beside a FINISHED parent)."""
    from emoe import hparams, tracking
    from emoe.sweep.runner import _settle
    from emoe.tracking.mirror import Mirror

    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-x")
    parent = client.create_run(exp).info.run_id
    record = SweepRecord("x", "clustering", {"kmeans": {"clustering": "kmeans"}}, {}, "emoe-x", parent)
    config = hparams.trial_config({"clustering": "kmeans", "epochs": 2})
    files = TrialFiles.of_cell(tmp_path, "kmeans", config)
    files.start_attempt("kmeans", config)
    for step, epoch in ((5, 1.0), (10, 2.0)):
        files.append_report({"step": step, "epoch": epoch, "id_score": 0.5 + epoch / 10})
    files.save_final({"step": 10, "epoch": 2.0, "id_score": 0.7})
    Mirror(client, exp, record).start(files)  # the live run, RUNNING when the driver died
    _settle(record, tmp_path, client, exp)
    assert files.load_ended()["outcome"] == "completed"
    (run,) = client.search_runs([exp], filter_string=f"tags.`{tracking.PARENT}` = '{parent}'")
    assert run.info.status == "FINISHED" and run.data.tags[tracking.OUTCOME] == "completed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "id_score")] == [5, 10]


def test_knobs_added_later_leave_the_names_of_earlier_cells_alone():
    """A sweep recorded before a knob existed resumes after the upgrade: at its default, a later knob (regime,
    expert_repeat, noise_tuning, lora_r, body_lr_ratio) stays out of the cell's hash; set away from it, it changes
    the cell."""
    from emoe import hparams
    from emoe.tracking.records import cell_name

    cfg = hparams.trial_config({"seed": 1})
    before = {k: v for k, v in cfg.items() if k not in hparams.LATER_KNOBS}  # the config as an earlier sweep wrote it
    assert cell_name("kmeans", cfg) == cell_name("kmeans", before)
    for knob, value in {"regime": "lora", "expert_repeat": 2, "noise_tuning": 0.1, "lora_r": 4,
                        "body_lr_ratio": 0.5}.items():
        assert cell_name("kmeans", {**cfg, knob: value}) != cell_name("kmeans", cfg), knob
    assert set(hparams.LATER_KNOBS) <= set(hparams.KNOBS)
    assert all(hparams.trial_config({})[k] == v for k, v in hparams.LATER_KNOBS.items())
