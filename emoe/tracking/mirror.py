"""MLflow as a mirror of the trial records: ``Mirror.update`` writes into a cell's child run whatever the run lacks of
the cell's files (params, each report's metrics, the placement, resume and restart tags, artifacts, the verdict),
idempotently. The driver's Tune callback calls it as results arrive; ``emoe sync`` calls it afterwards for every
cell; both write the same run from the same files.
"""

from __future__ import annotations

import logging
from typing import Any

from emoe import hparams
from emoe.tracking import runs, schema
from emoe.tracking.records import SweepRecord, TrialFiles, cell_budget

log = logging.getLogger(__name__)

PLACE_FIELDS = ("node_ip", "node_id", "pid", "gpu_ids")  # where a report was computed (the trainable records them)


def placement(report: dict[str, Any]) -> str:
    """Where a report was computed: node address and id, process, GPUs."""
    return (f"node {report.get('node_ip', '?')} {report.get('node_id', '?')} pid {report.get('pid', '?')} "
            f"gpus {report.get('gpu_ids') or '-'}")


class Mirror:
    """Writes cells' records into their MLflow child runs under the sweep's parent run. Remembers, per cell, its
    run, the last step that run holds and the tags it set, so a live sweep reads MLflow once per cell."""

    def __init__(self, client, experiment_id: str, record: SweepRecord):
        self.client, self.experiment_id, self.record = client, experiment_id, record
        self._runs: dict[str, runs.TrialRun] = {}
        self._logged: dict[str, float] = {}  # cell -> the last step its run holds
        self._tags: dict[str, dict[str, str]] = {}  # cell -> the tags its run holds

    def _open(self, files: TrialFiles, cell: dict[str, Any]) -> runs.TrialRun:
        name = files.dir.name
        if name not in self._runs:
            arm, config = cell["arm"], cell["config"]
            run = runs.open_trial_run(self.client, self.experiment_id, self.record.parent_run_id, name, arm,
                                      schema.trial_run_name(arm, config), config.get("task"))
            data = self.client.get_run(run.run_id).data
            if not data.params:  # a new run: its config, once
                run.log_params({**config, **schema.sweep_params(self.record.settings, self.record.scoring_version)})
                run.log_dict(hparams.emoe_config(config).to_dict(), "emoe_config.json")
            self._runs[name] = run
            self._logged[name] = data.metrics.get(schema.STEP, -1)
            self._tags[name] = dict(data.tags)
        return self._runs[name]

    def start(self, files: TrialFiles) -> None:
        """A live attempt at the cell began: its run (created if new) is RUNNING."""
        cell = files.load_config()
        if cell is None:
            return
        run, name = self._open(files, cell), files.dir.name
        for stale in (schema.OUTCOME, schema.ERROR):  # an earlier attempt's verdict (failed, interrupted) goes
            if stale in self._tags[name]:
                self.client.delete_tag(run.run_id, stale)
                self._tags[name].pop(stale)
        self.client.update_run(run.run_id, "RUNNING")

    def update(self, files: TrialFiles) -> dict[str, int]:
        """Write what the cell's run lacks; returns what was added (``metrics`` points, ``outcomes``)."""
        cell = files.load_config()
        if cell is None:  # the attempt has not written its config yet, or the cell predates the records
            return {"metrics": 0, "outcomes": 0}
        run, name = self._open(files, cell), files.dir.name
        reports = files.load_reports()
        added = self._metrics(run, name, reports)
        self._set_tags(run, name, self._derived_tags(files, reports))
        ended = files.outcome(*cell_budget(cell))
        if ended is None or self._tags[name].get(schema.OUTCOME) == ended[0]:
            return {"metrics": added, "outcomes": 0}
        outcome, last = ended
        for path in files.artifacts():
            self.client.log_artifact(run.run_id, str(path))
        verdict = files.load_ended() or {}
        run.finish(outcome, verdict.get("error"),
                   name=schema.trial_run_name(cell["arm"], cell["config"], outcome, last))
        self._tags[name][schema.OUTCOME] = outcome
        return {"metrics": added, "outcomes": 1}

    def _metrics(self, run: runs.TrialRun, name: str, reports: list[dict[str, Any]]) -> int:
        """Each report's metrics at its step, once: the steps after the last one the run holds, one batch per
        report (so the run's latest ``step`` is always a report it holds whole)."""
        from mlflow.entities import Metric

        added = 0
        for row in reports:
            metrics = schema.trial_metrics(row)
            step = int(metrics.get(schema.STEP, 0))
            if step <= self._logged[name]:
                continue
            ms = int(float(row.get("timestamp", 0)) * 1000)
            batch = [Metric(k, float(v), ms, step) for k, v in metrics.items() if k != schema.STEP]
            batch.append(Metric(schema.STEP, float(step), ms, step))
            self.client.log_batch(run.run_id, metrics=batch)  # the step last: it marks the report as held
            self._logged[name] = step
            added += len(batch)
        return added

    def _derived_tags(self, files: TrialFiles, reports: list[dict[str, Any]]) -> dict[str, str]:
        tags = {}
        if reports and any(k in reports[-1] for k in PLACE_FIELDS):
            tags[schema.PLACEMENT] = placement(reports[-1])
        resumed = sorted({int(r[schema.RESUMED_FROM]) for r in reports if r.get(schema.RESUMED_FROM) is not None})
        if resumed:
            tags[schema.RESUMED] = ",".join(map(str, resumed))
        restarts = files.load_restarts()
        if restarts:
            tags[schema.RESTARTS], tags[schema.RESTART_ERROR] = str(restarts["count"]), restarts["error"]
        if files.model.is_dir():
            tags[schema.MODEL] = str(files.model)
        return tags

    def _set_tags(self, run: runs.TrialRun, name: str, tags: dict[str, str]) -> None:
        new = {k: v for k, v in tags.items() if self._tags[name].get(k) != runs.redact(str(v))[:5000]}
        if new:
            run.set_tags(new)
            self._tags[name].update({k: runs.redact(str(v))[:5000] for k, v in new.items()})

    def forget(self, files: TrialFiles) -> None:
        """An ended cell's entries go: a sweep of thousands of trials must not grow the driver."""
        for held in (self._runs, self._logged, self._tags):
            held.pop(files.dir.name, None)
