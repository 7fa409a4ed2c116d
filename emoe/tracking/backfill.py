"""Backfill MLflow from Ray's own experiment records, idempotently.

When the tracking server was down for part of a sweep, training went on and Ray kept every reported result; this
command writes into MLflow whatever it lacks: missing child runs, params, metric points (a (key, step) pair already
there is never logged again), partitions, outcomes, and the parent's final status. Running it twice adds nothing.

    python -m emoe.sync --storage-path ./ray_results --tracking-uri http://127.0.0.1:5000 [--sweep DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emoe.tracking import runs, schema
from emoe.tracking.callback import trial_error_text
from emoe.tracking.records import SWEEP_RECORD, SweepRecord, TrialFiles
from emoe.usage import prog

log = logging.getLogger(__name__)


def sweep_dirs(storage: Path, sweep: str | None = None) -> list[Path]:
    if sweep:
        path = Path(sweep)
        path = path if path.is_absolute() or path.exists() else storage / sweep
        if not SweepRecord.exists(path):
            raise ValueError(f"{path} is not a sweep directory (no {SWEEP_RECORD})")
        return [path]
    dirs = sorted(p for p in storage.glob("*") if SweepRecord.exists(p))
    if not dirs:
        raise ValueError(f"no sweep directories (with {SWEEP_RECORD}) under {storage}")
    return dirs


def sync_sweep(path: Path, uri: str) -> dict[str, int]:
    """Backfill one sweep directory into ``uri``. Returns counts of what was added."""
    from mlflow.entities import Metric
    from ray.tune import ExperimentAnalysis

    record = SweepRecord.load(path)
    client = runs.client(uri)
    experiment_id = runs.get_or_create_experiment(client, record.experiment)
    if record.origin and SweepRecord.exists(path.parent / record.origin):  # an extension: its sweep's parent run
        parent = SweepRecord.load(path.parent / record.origin).parent_run_id
        if parent != record.parent_run_id:  # the sweep's parent was recreated: the extension follows it
            record.parent_run_id = parent
            record.save(path)
    parent_id = record.parent_run_id
    try:
        client.get_run(parent_id)
    except Exception:  # the store never saw this sweep (or was replaced): a new parent run stands in
        parent_id = client.create_run(experiment_id, run_name=path.name, tags={
            schema.ROLE: "sweep", schema.SWEEP: record.design, schema.FACTOR: record.factor,
            schema.RAY_DIR: str(path), schema.BACKFILLED: "true",
            **({schema.LOOKS: ",".join(map(str, record.looks))} if record.looks else {})}).info.run_id
        runs.TrialRun(client, experiment_id, "", run_id=parent_id).log_params(parent_params(record))
        record.parent_run_id = parent_id
        record.save(path)
    analysis = ExperimentAnalysis(str(path))
    added = {"runs": 0, "metrics": 0, "outcomes": 0}
    all_done = True
    for trial in analysis.trials:
        config = trial.config
        before = client.search_runs([experiment_id], filter_string=(
            f"tags.`{schema.TRIAL_ID}` = '{trial.trial_id}' and tags.`{schema.PARENT}` = '{parent_id}'"))
        run = runs.open_trial_run(client, experiment_id, parent_id, trial.trial_id, config.get("arm"),
                                  schema.trial_run_name(config.get("arm"), config), config.get("task"))
        added["runs"] += not before
        run.log_params({**record.trial_config(config), **schema.sweep_params(record.settings, record.scoring_version)})
        have: dict[str, set[int]] = {}  # (key -> steps) already in MLflow, read once per key
        # every report the trial made, in order: from its records (Tune holds only what it schedules on), else
        # (a trial from before the records) from Ray's results
        rows = TrialFiles(path, trial.trial_id).load_reports()
        frame = analysis.trial_dataframes.get(trial.trial_id) if not rows else None
        rows = rows or (frame.to_dict("records") if frame is not None else [])
        batch = []
        for row in rows:
            metrics = schema.trial_metrics(row)
            step = int(metrics.get(schema.STEP, 0))
            for key, value in metrics.items():
                if key not in have:
                    have[key] = {m.step for m in client.get_metric_history(run.run_id, key)}
                if step not in have[key]:
                    batch.append(Metric(key, float(value), int(row.get("timestamp", 0)) * 1000, step))
                    have[key].add(step)
        for i in range(0, len(batch), 500):
            client.log_batch(run.run_id, metrics=batch[i:i + 500])
        added["metrics"] += len(batch)
        current = client.get_run(run.run_id)
        if schema.OUTCOME in current.data.tags and current.info.status != "RUNNING":
            continue
        if trial.status == "ERROR":
            run.finish("failed", trial_error_text(trial))
        elif trial.status == "TERMINATED":
            files = TrialFiles(path, trial.trial_id)
            last = files.load_final() or (rows[-1] if rows else {})
            for artifact in files.artifacts():
                client.log_artifact(run.run_id, str(artifact))
            outcome = schema.outcome(last, record.trial_config(config)["epochs"])
            run.finish(outcome, name=schema.trial_run_name(config.get("arm"), config, outcome, last))
        else:
            all_done = False
            continue
        added["outcomes"] += 1
    if all_done and client.get_run(parent_id).info.status in ("RUNNING", "KILLED"):
        client.set_terminated(parent_id, status="FINISHED")
    return added


def parent_params(record: SweepRecord) -> dict:
    """What a recreated parent run declares, from the sweep's record: its arms and its primary analysis."""
    declared = record.primary() or {}
    return {"arms": ",".join(record.arms), **{f"{schema.PRIMARY_PREFIX}{k}": v for k, v in declared.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("python -m emoe.sync"), description=__doc__.splitlines()[0])
    p.add_argument("--storage-path", default="./ray_results", help="Ray results of the sweeps (default ./ray_results)")
    p.add_argument("--sweep", help="one sweep directory (default: every sweep under --storage-path)")
    p.add_argument("--tracking-uri", default=schema.DEFAULT_TRACKING_URI,
                   help=f"MLflow store to fill (default: {schema.DEFAULT_TRACKING_URI})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs.check_tracking_uri(args.tracking_uri)
        dirs = sweep_dirs(Path(args.storage_path), args.sweep)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in dirs:
        added = sync_sweep(path, args.tracking_uri)
        print(f"{path.name}: added {added['runs']} run(s), {added['metrics']} metric point(s), "
              f"{added['outcomes']} outcome(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
