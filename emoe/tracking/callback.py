"""The driver-side Tune callback of a sweep: it writes each trial's verdict into the cell's records and mirrors the
records into MLflow as results arrive (``emoe.tracking.mirror``: the code ``emoe sync`` runs afterwards).

All logging happens in the driver, so trials never contend for the store and workers never need to reach it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ray.tune import Callback

from emoe.tracking import runs
from emoe.tracking.mirror import Mirror
from emoe.tracking.records import SweepRecord, TrialFiles, cell_budget

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


class MlflowTrials(Callback):
    """One child run per cell under the sweep's parent run, written from the cell's records.

    A cell started again (resume, retry) continues its own run. MLflow errors are logged and never stop the sweep:
    the records keep everything, and ``emoe sync`` writes what MLflow missed.
    """

    def __init__(self, uri: str, experiment_id: str, record: SweepRecord, root: str):
        self.uri, self.experiment_id, self.record, self.root = uri, experiment_id, record, root
        self.interrupted = False  # set by the driver on Ctrl-C: trials stopped then were cut off, not stopped
        self._mirror: Mirror | None = None
        self._files: dict[str, TrialFiles] = {}  # Tune trial id -> its cell's files
        self._down_until = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_mirror": None, "_files": {}, "_down_until": 0.0}

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            self._mirror = Mirror(runs.client(self.uri), self.experiment_id, self.record)
        return self._mirror

    def files(self, trial) -> TrialFiles:
        if trial.trial_id not in self._files:
            self._files[trial.trial_id] = TrialFiles.of_cell(self.root, trial.config["arm"],
                                                             self.record.trial_config(trial.config))
        return self._files[trial.trial_id]

    def _safe(self, what, fn, *a, **k):
        # NOTE: a circuit breaker: with the server down every call would block Tune's event loop through the
        # client's retries, so after a failure MLflow is left alone for a minute (emoe sync writes what it missed).
        if time.time() < self._down_until:
            return None
        try:
            return fn(*a, **k)
        except Exception as e:  # never let tracking break training
            self._down_until = time.time() + 60
            log.warning("MLflow %s failed (%s); skipping MLflow for 60 s. The trial records keep every result: "
                        "write them into MLflow with emoe sync --sweep %s --tracking-uri %s", what, str(e)[:200],
                        self.root, self.uri)
            return None

    def on_trial_start(self, iteration, trials, trial, **info):
        files = self.files(trial)
        if files.load_final() is None:  # a new attempt at the cell: its run is RUNNING from now
            files.start_attempt(trial.config["arm"], self.record.trial_config(trial.config), worker=False)
        self._safe("run start", self.mirror.start, files)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safe("metrics", self.mirror.update, self.files(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        files = self.files(trial)
        if self.interrupted and files.load_final() is None:
            return  # cut off by Ctrl-C: no verdict; --resume continues it from its checkpoint
        cell = files.load_config()
        files.conclude(trial.last_result, *(cell_budget(cell) if cell else
                                             (float(trial.config.get("epochs") or 1), trial.config.get("max_steps"))))
        self._end(trial, files)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A retry (--max-failures) continues the same cell, from its latest checkpoint.
        files = self.files(trial)
        files.save_restart(trial.num_failures, trial_error_text(trial).split("\n\n")[0])
        self._safe("restart", self.mirror.update, files)

    def on_trial_error(self, iteration, trials, trial, **info):
        files = self.files(trial)
        if self.interrupted:
            return  # its worker got the Ctrl-C too: cut off, not failed
        files.save_ended("failed", trial_error_text(trial))
        self._end(trial, files)

    def _end(self, trial, files: TrialFiles) -> None:
        self._safe("outcome", self.mirror.update, files)
        self.mirror.forget(files)
        self._files.pop(trial.trial_id, None)
