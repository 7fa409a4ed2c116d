"""What a sweep prints while it runs: one line per ended trial (its cell, outcome, scores and time, read from its
records) and a status line (running, ended, failed, elapsed), instead of Tune's status tables (``--verbose`` keeps
them). Runs in the driver, as a Tune callback."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ray.tune import Callback

from emoe.tracking import schema
from emoe.tracking.records import SweepRecord, TrialFiles, cell_budget


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def trial_line(files: TrialFiles, done: int, total: int, seconds: float | None) -> str:
    """``[ 12/84] sst2 kmeans s0 lr2e-05  completed  id 0.9120  ood 0.7341  3m12s``, from the cell's records."""
    cell = files.load_config() or {"arm": "?", "config": {}}
    c = cell["config"]
    ended = files.outcome(*cell_budget(cell))
    outcome, metrics = ended if ended is not None else ("cut off", {})
    width = len(str(total))
    line = (f"[{done:>{width}}/{total}] {c.get('task', '?')} {cell['arm']} s{c.get('seed')} "
            f"lr{schema.rate_text(c.get('learning_rate', 0))}  {outcome:<13}")
    for name, label in ((schema.ID_SCORE, "id"), (schema.OOD_SCORE, "ood")):
        value = metrics.get(name)
        if isinstance(value, (int, float)) and value == value:
            line += f"  {label} {value:.4f}"
    if outcome == "failed":
        error = (files.load_ended() or {}).get("error") or ""
        line += f"  {error.splitlines()[0][:120] if error else ''}"
    return line + (f"  {_duration(seconds)}" if seconds is not None else "")


class Console(Callback):
    """One line per ended trial and a status line: rewritten in place on a terminal, else every ``every`` seconds
    (a log file keeps a line a minute, not a table per result)."""

    def __init__(self, record: SweepRecord, root: str, total: int, every: float = 60.0, out: TextIO | None = None):
        self.record, self.root, self.total, self.every = record, root, total, every
        self.out = out or sys.stdout
        self.ended = self.failed = 0
        self.started: dict[str, float] = {}
        self.t0 = time.time()
        self._last_status = 0.0
        self._status_shown = False

    def __getstate__(self):
        return {**self.__dict__, "out": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out = sys.stdout

    def _files(self, trial) -> TrialFiles:
        return TrialFiles.of_cell(self.root, trial.config["arm"], self.record.trial_config(trial.config))

    def _print(self, line: str) -> None:
        if self._status_shown and self.out.isatty():
            self.out.write("\r\033[K")  # the status line gives way
            self._status_shown = False
        self.out.write(line + "\n")
        self.out.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()

    def _ended(self, trial, failed: bool) -> None:
        self.ended += 1
        self.failed += failed
        start = self.started.pop(trial.trial_id, None)
        self._print(trial_line(self._files(trial), self.ended, self.total,
                               time.time() - start if start is not None else None))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, True)

    def status(self, trials) -> str:
        running = sum(t.status == "RUNNING" for t in trials)
        return (f"running {running}, ended {self.ended}/{self.total} ({self.failed} failed), "
                f"elapsed {_duration(time.time() - self.t0)}")

    def on_step_end(self, iteration, trials, **info):
        now = time.time()
        if self.out.isatty():
            if now - self._last_status >= 1.0:
                self.out.write("\r\033[K" + self.status(trials))
                self.out.flush()
                self._status_shown, self._last_status = True, now
        elif now - self._last_status >= self.every:
            if self._last_status:
                self._print(self.status(trials))
            self._last_status = now

    def on_experiment_end(self, trials, **info):
        if self._status_shown:
            self.out.write("\n")
            self._status_shown = False
