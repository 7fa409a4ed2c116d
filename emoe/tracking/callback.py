"""The driver-side Tune callback that logs a sweep into MLflow: one child run per trial under the sweep's parent run.

All logging happens in the driver, so trials never contend for the store and workers never need to reach it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ray.tune import Callback

from emoe import hparams
from emoe.tracking import runs, schema
from emoe.tracking.records import SweepRecord, TrialFiles

log = logging.getLogger(__name__)


def trial_error_text(trial) -> str:
    """The error of a failed Tune trial: its last line ("Type: message") first, then the whole traceback."""
    try:
        err = trial.get_error()
        text = str(err) if err is not None else ""
    except Exception:
        text = ""
    if not text and trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] + "\n\n" + text) if lines else "trial failed (no error recorded)"


def placement(result: dict) -> str:
    """Where a result was computed, from the fields Tune adds to every result and the trainable's GPU ids."""
    return (f"node {result.get('node_ip', '?')} {result.get('node_id', '?')} pid {result.get('pid', '?')} "
            f"gpus {result.get('gpu_ids') or '-'}")


class MlflowTrials(Callback):
    """One child run per trial under the sweep's parent run.

    A trial that restarts (resume, retry) continues its own run, found by its ``emoe.trial_id`` tag; MLflow errors
    are logged and never stop the sweep (Ray's own records keep every result; ``python -m emoe.sync`` backfills).
    """

    def __init__(self, uri: str, experiment_id: str, record: SweepRecord, root: str):
        self.uri, self.experiment_id, self.record, self.root = uri, experiment_id, record, root
        self._runs: dict[str, runs.TrialRun] = {}
        self._placed: dict[str, str] = {}  # trial id -> the placement last tagged
        self._logged: dict[str, float] = {}  # trial id -> the last step its run already holds (a continued run)
        self._resumed: dict[str, list[int]] = {}  # trial id -> the checkpoint steps its attempts continued from
        self._client = None
        self._down_until = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_runs": {}, "_placed": {}, "_logged": {}, "_resumed": {},
                "_down_until": 0.0}

    def __setstate__(self, state):
        # a sweep started before a field existed restores its pickled callback without it (--resume)
        self.__dict__.update({"_resumed": {}, **state})

    @property
    def client(self):
        if self._client is None:
            self._client = runs.client(self.uri)
        return self._client

    def _safe(self, what, fn, *a, **k):
        # NOTE: a circuit breaker: with the server down every call would block Tune's event loop through the
        # client's retries, so after a failure MLflow is left alone for a minute (python -m emoe.sync backfills).
        if time.time() < self._down_until:
            return None
        try:
            return fn(*a, **k)
        except Exception as e:  # never let tracking break training
            self._down_until = time.time() + 60
            log.warning("MLflow %s failed (%s); skipping MLflow for 60 s. Ray keeps every result: backfill with "
                        "python -m emoe.sync --storage-path %s --tracking-uri %s", what, str(e)[:200],
                        Path(self.root).parent, self.uri)
            return None

    def _run(self, trial) -> runs.TrialRun | None:
        if trial.trial_id not in self._runs:
            arm = trial.config.get("arm")
            run = self._safe("run lookup", runs.open_trial_run, self.client, self.experiment_id,
                             self.record.parent_run_id, trial.trial_id, arm, schema.trial_run_name(arm, trial.config),
                             trial.config.get("task"))
            if run is None:
                return None
            self._runs[trial.trial_id] = run
            # A continued run (resume, retry) may already hold steps that the trial reports again: it resumed from a
            # checkpoint older than its last logged report (Tune saves its state every few seconds). Each step once.
            data = self._safe("run lookup", lambda: self.client.get_run(run.run_id).data)
            if data is not None and data.metrics.get(schema.STEP) is not None:
                self._logged[trial.trial_id] = data.metrics[schema.STEP]
            if data is not None and data.tags.get(schema.RESUMED):  # earlier attempts' origins, kept in the tag
                self._resumed[trial.trial_id] = [int(s) for s in data.tags[schema.RESUMED].split(",")]
        return self._runs[trial.trial_id]

    def _epochs(self, trial) -> int:
        """The trial's epochs: ``--epochs``, or its task's cap."""
        try:
            return self.record.trial_config(trial.config)["epochs"]
        except Exception:  # a config the record cannot read: any positive number keeps the outcome honest
            return trial.config.get("epochs") or 1

    def on_trial_start(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run is not None:
            config = self.record.trial_config(trial.config)
            self._safe("params", run.log_params, {**config, **schema.sweep_params(self.record.settings,
                                                                                 self.record.scoring_version)})
            self._safe("config artifact", run.log_dict, hparams.emoe_config(config).to_dict(), "emoe_config.json")
            self._safe("status", self.client.update_run, run.run_id, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self._run(trial)
        if run is None:
            return
        step = int(result.get(schema.STEP, 0))
        # Each step once: a trial restarted from a checkpoint older than its last logged report (or, without
        # checkpoints, from the start) reports those steps again with the same values (CPU) and is not re-logged.
        if step > self._logged.get(trial.trial_id, -1):
            self._safe("metrics", run.log_metrics, schema.trial_metrics(self._report(trial, result)), step)
            self._logged[trial.trial_id] = step
        origin = result.get(schema.RESUMED_FROM)
        if origin is not None and int(origin) not in self._resumed.setdefault(trial.trial_id, []):
            self._resumed[trial.trial_id].append(int(origin))
            self._safe("resume", run.set_tags, {schema.RESUMED: ",".join(map(str, self._resumed[trial.trial_id]))})
        where = placement(result)
        if self._placed.get(trial.trial_id) != where:  # at the first result, and again when a retry runs elsewhere
            self._placed[trial.trial_id] = where
            self._safe("placement", run.set_tags, {schema.PLACEMENT: where})

    def _report(self, trial, result: dict) -> dict:
        """The whole report behind a Tune result: Tune is sent only what it schedules on (``schema.SCHEDULED``),
        the trial's records hold every metric (a trial from before the records: the result itself)."""
        step = result.get(schema.STEP)
        for row in reversed(TrialFiles(self.root, trial.trial_id).load_reports()):
            if row.get(schema.STEP) == step:
                return row
        return result

    def _artifacts(self, trial, run):
        for path in TrialFiles(self.root, trial.trial_id).artifacts():
            self._safe(f"{path.stem} artifact", self.client.log_artifact, run.run_id, str(path))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        TrialFiles(self.root, trial.trial_id).save_ended(schema.outcome(last, self._epochs(trial)))  # the record
        run = self._run(trial)
        if run is None:
            return
        self._artifacts(trial, run)
        model = TrialFiles(self.root, trial.trial_id).model
        if model.is_dir():
            self._safe("model tag", run.set_tags, {schema.MODEL: str(model)})
        if last:  # where the trial ended (a retry may have moved it since its placement was last tagged)
            self._safe("placement", run.set_tags, {schema.PLACEMENT: placement(last)})
        outcome = schema.outcome(last, self._epochs(trial))
        TrialFiles(self.root, trial.trial_id).drop_state()  # it never trains again (early-stopped ones included)
        self._safe("outcome", run.finish, outcome, name=schema.trial_run_name(
            trial.config.get("arm"), trial.config, outcome, self._report(trial, last) if last else last))
        self._forget(trial)

    def _forget(self, trial):
        """An ended trial's entries go: a sweep of thousands of trials must not grow the driver."""
        for held in (self._runs, self._placed, self._logged, self._resumed):
            held.pop(trial.trial_id, None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A retry (--max-failures) continues the same run, from the trial's latest checkpoint.
        run = self._run(trial)
        if run is not None:
            error = trial_error_text(trial).split("\n\n")[0]
            self._safe("restart", run.set_tags, {schema.RESTARTS: trial.num_failures, schema.RESTART_ERROR: error})

    def on_trial_error(self, iteration, trials, trial, **info):
        TrialFiles(self.root, trial.trial_id).save_ended("failed", trial_error_text(trial))  # the record
        run = self._run(trial)
        if run is None:
            return
        self._safe("failure", run.finish, "failed", trial_error_text(trial),
                   name=schema.trial_run_name(trial.config.get("arm"), trial.config, "failed"))
        self._forget(trial)
