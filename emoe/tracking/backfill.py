"""``emoe sync``: write sweeps' trial records into MLflow, idempotently.

When the tracking server was down for part of a sweep (or its store was lost), training went on and the trial
records kept everything; this command writes into MLflow whatever it lacks, with the code the live sweep uses
(``emoe.tracking.mirror``): missing child runs, params, metric points (a step the run holds is never logged again),
tags, partitions, outcomes, and the parent's final status (a new parent run when the store lost it). Running it
twice adds nothing.

    emoe sync --storage-path ./ray_results --tracking-uri http://127.0.0.1:5000 [--sweep DIR]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from emoe.tracking import runs, schema
from emoe.tracking.records import SWEEP_RECORD, SweepRecord, cell_budget, sweep_family, sweep_trials
from emoe.usage import Parser, prog

log = logging.getLogger(__name__)


def sweep_dirs(storage: Path, sweep: str | None = None) -> list[Path]:
    if sweep:
        path = Path(sweep)
        path = path if path.is_absolute() or path.exists() else storage / sweep
        if not SweepRecord.exists(path):
            raise ValueError(f"{path} is not a sweep directory (no {SWEEP_RECORD})")
        return [path]
    dirs = sorted(p for p in storage.glob("*") if SweepRecord.exists(p)
                  and not (SweepRecord.load(p).origin and SweepRecord.exists(storage / SweepRecord.load(p).origin)))
    if not dirs:
        raise ValueError(f"no sweep directories (with {SWEEP_RECORD}) under {storage}")
    return dirs


def sync_sweep(path: Path, uri: str) -> dict[str, int]:
    """Write one sweep directory's records (and its extensions') into ``uri``. Returns counts of what was added."""
    from emoe.tracking.mirror import Mirror

    record = SweepRecord.load(path)
    if record.origin and SweepRecord.exists(path.parent / record.origin):  # an extension: its sweep's cells
        path = path.parent / record.origin
        record = SweepRecord.load(path)
    client = runs.client(uri)
    experiment_id = runs.get_or_create_experiment(client, record.experiment)
    parent_id = _parent_run(client, experiment_id, record, path)
    added = {"runs": 0, "metrics": 0, "outcomes": 0}
    before = {r.data.tags.get(schema.TRIAL_ID) for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`{schema.PARENT}` = '{parent_id}'", max_results=50_000)}
    mirror = Mirror(client, experiment_id, record)
    all_done, legacy = True, 0
    for files, cell in sweep_trials(path):
        if cell is None:  # from before the trial records: its run is as the sweep left it
            legacy += 1
            continue
        done = mirror.update(files)
        added["runs"] += files.dir.name not in before
        added["metrics"] += done["metrics"]
        added["outcomes"] += done["outcomes"]
        all_done &= files.outcome(*cell_budget(cell)) is not None
        mirror.forget(files)
    if legacy:
        log.warning("%s: %d trial(s) predate the trial records (no config.json); their MLflow runs are left as "
                    "they are", path.name, legacy)
    if all_done and client.get_run(parent_id).info.status in ("RUNNING", "KILLED"):
        client.set_terminated(parent_id, status="FINISHED")
    return added


def _parent_run(client, experiment_id: str, record: SweepRecord, path: Path) -> str:
    """The sweep's parent run; a new one (from the record: arms, primary analysis, looks) when the store never saw
    it or was replaced, the record and its extensions' records updated to name it."""
    try:
        client.get_run(record.parent_run_id)
        return record.parent_run_id
    except Exception:
        pass
    parent_id = client.create_run(experiment_id, run_name=path.name, tags={
        schema.ROLE: "sweep", schema.SWEEP: record.design, schema.FACTOR: record.factor,
        schema.RAY_DIR: str(path), schema.BACKFILLED: "true",
        **({schema.LOOKS: ",".join(map(str, record.looks))} if record.looks else {})}).info.run_id
    runs.TrialRun(client, experiment_id, "", run_id=parent_id).log_params(parent_params(record))
    for member in sweep_family(path):
        member_record = SweepRecord.load(member)
        member_record.parent_run_id = parent_id
        member_record.save(member)
    record.parent_run_id = parent_id
    return parent_id


def parent_params(record: SweepRecord) -> dict:
    """What a recreated parent run declares, from the sweep's record: its arms and its primary analysis."""
    declared = record.primary() or {}
    return {"arms": ",".join(record.arms), **{f"{schema.PRIMARY_PREFIX}{k}": v for k, v in declared.items()}}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=prog("python -m emoe.sync"), description=__doc__.splitlines()[0])
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
