"""Running a sweep: ``run_sweep(design, settings)`` checks everything, joins (or starts) Ray, opens the MLflow parent
run, fits (or restores) the Tuner, closes the runs, and returns what happened. No argv here: that is the CLI's."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

from emoe.sweep.console import Console
from emoe.sweep.design import Ablation
from emoe.sweep.plan import (Plan, SweepSettings, check_model_and_data, check_resources, local_nodes, make_plan,
                             primary_params)
from emoe.sweep.search import CellList, scheduler, search_space
from emoe.sweep.trainable import TrialSetup, quiet_libraries, tune_trainable
from emoe.tracking import runs, schema
from emoe.tracking.callback import MlflowTrials
from emoe.tracking.records import (SweepRecord, cell_budget, cell_of, done_cells, retire, sweep_trials,
                                   trial_rows, unended_cells)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrialResult:
    """One trial as the sweep saw it end: its arm, seed, rate, outcome and last reported metrics."""

    trial_id: str
    arm: str
    seed: int
    learning_rate: float
    outcome: str
    metrics: dict[str, float]
    task: str | None = None


@dataclasses.dataclass
class SweepOutcome:
    """What ``run_sweep`` did."""

    plan: Plan
    experiment_id: str
    parent_run_id: str
    directory: Path  # the Ray experiment directory (``--resume`` takes it)
    trials: list[TrialResult]  # every ended cell of the sweep (and its extensions), from the records
    complete: bool  # every cell the sweep wants ended (a resume has nothing left to do)
    interrupted: bool = False  # Ctrl-C ended it
    unended: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (task, arm) of started, unended cells
    ran: int = 0  # the cells (an Optuna search: trials) this invocation set out to run

    @property
    def failed(self) -> int:
        return sum(t.outcome == "failed" for t in self.trials)

    @property
    def exit_code(self) -> int:
        """0, or 1 when every trial failed (a sweep that produced nothing is not a success)."""
        return 1 if self.trials and self.failed == len(self.trials) else 0


def prepare(design: Ablation, settings: SweepSettings):
    """Every check that needs no Ray: the plan, the tracking store, the model, the data and this machine's
    resources (for a local Ray). Returns ``(plan, workloads)`` (one ``Workload`` per task); ``ValueError`` (one line)
    on bad input."""
    plan = make_plan(design, settings)
    runs.check_tracking_uri(settings.tracking_uri)
    workload = check_model_and_data(plan)
    if settings.address is None:
        nodes = local_nodes(settings.num_gpus)
        check_resources(settings, nodes, gpus_per_trial(settings, nodes))
    return plan, workload


def gpus_per_trial(settings: SweepSettings, nodes: list[dict[str, float]]) -> float:
    """``--gpus-per-trial``, else 1 when some node has a GPU, else 0."""
    if settings.gpus_per_trial is not None:
        return settings.gpus_per_trial
    return 1.0 if any(n.get("GPU", 0) >= 1 for n in nodes) else 0.0


def connect_ray(settings: SweepSettings) -> list[dict[str, float]]:
    """Join the cluster at ``settings.address``, else start a local Ray; ``ValueError`` (one line) if it cannot be
    reached. Runs before anything is written to MLflow. Returns the live nodes' resources."""
    import ray

    address = settings.address
    if not address:
        # NOTE: "local" always starts a fresh Ray: plain ray.init() would join (or, if its head died, hang on) the
        # cluster recorded in /tmp/ray/ray_current_cluster by an earlier `ray start`.
        ray.init(address="local", num_gpus=settings.num_gpus, ignore_reinit_error=True, include_dashboard=False)
    else:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if address != "auto":
            if not host or not port.isdigit():
                raise ValueError(f"--address {address!r}: expected HOST:PORT (the head's GCS port, e.g. "
                                 "10.0.0.1:6379), ray://HOST:PORT or auto")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as e:
                raise ValueError(f"--address {address!r}: no Ray head reachable there ({e.strerror or e}); start "
                                 "one with ray start --head, or omit --address for a local Ray") from None
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise ValueError(f"--address {address!r}: cannot join the Ray cluster ({str(e).splitlines()[0]})") \
                from None
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_extension(old: SweepRecord, design: Ablation, plan: Plan) -> None:
    """An extension adds seeds, learning rates, arms or tasks to a sweep, nothing else: ``ValueError`` (one line)
    naming what differs."""
    if plan.settings.search != "grid":
        raise ValueError("--extend adds grid cells; it works with --search grid only")
    if plan.experiment != old.experiment:
        raise ValueError(f"--extend: the sweep logs to experiment {old.experiment!r}, not {plan.experiment!r}")
    for arm in set(design.arms) & set(old.arms):
        if {k: str(v) for k, v in design.arms[arm].items()} != {k: str(v) for k, v in old.arms[arm].items()}:
            raise ValueError(f"--extend: arm {arm!r} sets {design.arms[arm]} here but {old.arms[arm]} in the sweep "
                             "being extended")
    declared = primary_params(SweepSettings.from_dict(old.settings))
    for name, value in primary_params(plan.settings).items():
        if str(declared[name]) != str(value):
            raise ValueError(f"--extend: the sweep's primary analysis declared {name} {declared[name]!r} at launch, "
                             f"{value!r} now; it cannot change after results were seen (analyse other choices as "
                             "exploratory)")
    before = make_plan(Ablation(old.design, old.arms, old.factor), SweepSettings.from_dict(old.settings)).base
    for knob, value in plan.base.items():
        if knob in before and str(before[knob]) != str(value):
            raise ValueError(f"--extend: {knob} is {before[knob]!r} in the sweep being extended, {value!r} now; an "
                             "extension adds seeds, learning rates, arms or tasks only")


def remaining_cells(plan: Plan, record: SweepRecord, home: Path, client, experiment_id: str) -> list[dict[str, Any]]:
    """The cells (task, arm, seed, learning rate) that ``record`` wants (an extension: its own; else the plan's
    grid) and no finished (completed or early-stopped) trial holds: new cells, and cells whose trials failed, were
    cut off or never started. From the records of the sweep in ``home`` alone; from MLflow only for a sweep whose
    trials predate the records."""
    done = done_cells(home)
    if done is None:
        done = _done_in_mlflow(client, experiment_id, record.parent_run_id)
    wanted = _wanted(plan, record)
    return [{"task": t, "arm": a, "seed": s, "learning_rate": lr} for t, a, s, lr in wanted
            if (t, a, int(s), float(lr)) not in done]


def _wanted(plan: Plan, record: SweepRecord) -> list[tuple[str, str, int, float]]:
    """The (task, arm, seed, learning rate) cells a sweep wants: an extension's own, else the plan's grid."""
    if record.cells is None:
        return plan.grid()
    return [(c["task"], c["arm"], c["seed"], c["learning_rate"]) for c in record.cells]


def _done_in_mlflow(client, experiment_id: str, parent_run_id: str) -> set[tuple[str, str, int, float]]:
    children = client.search_runs([experiment_id], filter_string=f"tags.`{schema.PARENT}` = '{parent_run_id}'",
                                  max_results=50_000)
    return {(r.data.params.get("task"), r.data.tags.get(schema.ARM), int(r.data.params["seed"]),
             float(r.data.params["learning_rate"])) for r in children
            if r.data.tags.get(schema.OUTCOME) in ("completed", "early_stopped")}


def run_sweep(design: Ablation, settings: SweepSettings, resume: str | Path | None = None,
              argv: list[str] | None = None, extend: str | Path | None = None,
              trainable: Callable[[dict[str, Any], TrialSetup], None] = tune_trainable) -> SweepOutcome:
    """Run (or, with ``resume``, continue; with ``extend``, top up) a sweep.

    A run, a resume and an extension are one thing: the cells the sweep wants minus the cells its records hold as
    done, each cell a content-addressed directory that any attempt at it continues (``emoe.tracking.records``).

    Args:
        design: the arms.
        settings: everything else (``SweepSettings``).
        resume: the directory of an interrupted sweep with these design and settings: its cells not yet done run
            (a cut-off one from its checkpoint), ASHA's rungs replayed from the records.
        argv: the command line, recorded in the parent run's ``emoe.command`` tag.
        extend: the directory of a sweep to top up: the cells of this design and settings that it lacks (new
            seeds, rates, arms or tasks, and cells whose trials failed) run under its MLflow parent run, Tune's
            state in a directory of their own, their files among the sweep's; nothing else may differ. Running it
            again runs nothing.
        trainable: what each trial runs, ``(tune config, TrialSetup)``; the default trains and evaluates. The
            scale benchmark passes one that only reports, to measure the driver and MLflow alone.

    Raises:
        ValueError: bad input, before Ray starts or anything is logged (one line).
    """
    import ray

    quiet_libraries()
    plan, _ = prepare(design, settings)
    nodes = connect_ray(settings)
    try:
        gpus = gpus_per_trial(settings, nodes)
        check_resources(settings, nodes, gpus)
        client = runs.client(settings.tracking_uri)
        experiment_id = runs.get_or_create_experiment(client, plan.experiment)
        if extend is not None:
            record, directory, home = _extension(design, plan, Path(extend), client, experiment_id, argv)
        elif resume is not None:
            directory = Path(resume).resolve()
            record = SweepRecord.load(directory)
            record.check_scoring(directory, "--resume")
            home = directory.parent / record.origin if record.origin else directory
        else:
            record, directory = _new_sweep(design, plan, client, experiment_id, argv)
            home = directory
    except ValueError:
        ray.shutdown()
        raise
    restore = resume is not None and settings.search == "optuna"  # the searcher's state is Tune's: restored
    cells = None if settings.search == "optuna" else remaining_cells(plan, record, home, client, experiment_id)
    if cells is not None and not cells:
        log.info("nothing to run: every cell of this grid has a finished trial (parent run %s)", record.parent_run_id)
        if resume is not None:
            runs.close_runs(client, experiment_id, record.parent_run_id, True)
        return SweepOutcome(plan, experiment_id, record.parent_run_id, directory, _trials(home), True, ran=0)
    if resume is not None or extend is not None:
        _settle(record, home, client, experiment_id)
        client.update_run(record.parent_run_id, "RUNNING")
        log.info("%s %s: %s (MLflow parent run %s)", "resuming" if resume is not None else "extending",
                 home.name, f"{len(cells)} cell(s) to run" if cells is not None else "the search continues",
                 record.parent_run_id)
    return _fit(plan, record, directory, home, client, experiment_id, gpus, cells, restore, trainable)


def _settle(record: SweepRecord, home: Path, client, experiment_id: str) -> None:
    """Cells that finished (final metrics saved) while the driver died before it gave their verdict: the verdict
    from their records, and their MLflow runs brought up to date (no trial will run them again)."""
    from emoe.tracking.mirror import Mirror

    mirror = Mirror(client, experiment_id, record)
    for files, cell in sweep_trials(home):
        if cell is not None and not files.ended.is_file() and files.load_final() is not None:
            files.conclude({}, *cell_budget(cell))
            try:
                mirror.update(files)
            except Exception as e:  # the records hold it; emoe sync writes it later
                log.warning("could not bring %s's MLflow run up to date (%s)", files.dir.name, e)
            mirror.forget(files)


def _new_sweep(design: Ablation, plan: Plan, client, experiment_id: str, argv) -> tuple[SweepRecord, Path]:
    settings = plan.settings
    directory = Path(settings.storage_path).resolve() / f"{plan.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory.mkdir(parents=True, exist_ok=False)
    parent_id = runs.create_sweep_run(
        client, experiment_id, f"{design.name}-{directory.name[-15:]}", design.name, design.factor, argv or [],
        str(directory),
        {"arms": ",".join(design.arms), "tasks": ",".join(plan.tasks), "seeds": plan.seeds,
         "learning_rates": plan.learning_rates, "search": settings.search, "scheduler": settings.scheduler,
         "early_stop_scope": settings.early_stop_scope, "preset": settings.preset or "",
         **primary_params(settings), **plan.base, **swept_values(design, plan.base)})
    record = SweepRecord(design.name, design.factor, design.arms, settings.to_dict(), plan.experiment, parent_id,
                         argv or [])
    record.save(directory)
    return record, directory


def swept_values(design: Ablation, base: dict[str, Any]) -> dict[str, str]:
    """Each knob an arm sets, with its values over the arms in arm order (an arm that does not set it: the base
    config's): the parent run's param for the knob, not the base value alone, which may be no arm's."""
    out: dict[str, list[str]] = {}
    for knob in {k for knobs in design.arms.values() for k in knobs}:
        values = out.setdefault(knob, [])
        for knobs in design.arms.values():
            text = runs.param_value(knobs.get(knob, base.get(knob)))
            if text not in values:
                values.append(text)
    return {knob: ",".join(values) for knob, values in sorted(out.items())}


def _extension(design: Ablation, plan: Plan, extend: Path, client, experiment_id: str,
               argv) -> tuple[SweepRecord, Path, Path]:
    """The record and Tune directory of an extension of the sweep in ``extend``, and the sweep's own directory
    (where the cells' files are)."""
    old = SweepRecord.load(extend)
    old.check_scoring(extend, "--extend")
    check_extension(old, design, plan)
    home = extend.parent / old.origin if old.origin else extend  # the sweep first launched
    directory = Path(plan.settings.storage_path).resolve() / f"{plan.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    wanted = SweepRecord(design.name, design.factor, {**old.arms, **design.arms}, plan.settings.to_dict(),
                         plan.experiment, old.parent_run_id, argv or [], origin=home.name)
    wanted.cells = [{"task": t, "arm": a, "seed": s, "learning_rate": lr} for t, a, s, lr in plan.grid()]
    wanted.cells = remaining_cells(plan, wanted, home, client, experiment_id)
    if wanted.cells:
        directory.mkdir(parents=True, exist_ok=False)
        wanted.save(directory)
        client.set_tag(old.parent_run_id, schema.EXTENDED, str(directory))
    return wanted, directory, home


def _trials(home: Path) -> list[TrialResult]:
    """Every ended cell of the sweep in ``home`` (and its extensions), from the records."""
    return [TrialResult(r["run_id"], r["arm"], r["seed"], r["learning_rate"], r["outcome"],
                        {k: v for k, v in r.items() if schema.direction(k) or k in (schema.EPOCH, schema.STEP)},
                        r["task"]) for r in trial_rows(home, unfinished=None)]


# Cells per Tuner fit: the driver holds Tune's objects of one wave at a time, so its memory does not grow with the
# grid (benchmarks/sweep_scale.py); each wave's ASHA is fed the earlier waves' reports from the records.
WAVE = 256


def _fit(plan: Plan, record: SweepRecord, directory: Path, home: Path, client, experiment_id: str, gpus: float,
         cells: list[dict[str, Any]] | None, restore: bool, trainable=tune_trainable) -> SweepOutcome:
    """Tune runs ``cells`` (None: the Optuna search), in waves of ``WAVE``, or continues the restored search; the
    outcome is read from the records, whatever Tune returns."""
    from ray import tune

    s = plan.settings
    trainable = tune.with_resources(
        tune.with_parameters(trainable, setup=TrialSetup(record, str(home), max(1, int(s.cpus_per_trial)),
                                                         s.checkpoint_every)),
        {"cpu": s.cpus_per_trial, "gpu": gpus})
    callback = MlflowTrials(s.tracking_uri, experiment_id, record, str(home))
    # NOTE: after the MLflow callback, which writes the verdict the console's line reads
    console = Console(record, str(home), len(cells) if cells is not None else plan.n_trials)
    _quiet_tune(s.verbose)
    log.info("%s: %d %s to run, %s at once; files in %s", record.design,
             len(cells) if cells is not None else plan.n_trials, "cell(s)" if cells is not None else "trial(s)",
             s.max_concurrent or "as many as fit", home)
    wave = max(WAVE, 16 * (s.max_concurrent or 1))
    waves = [cells[i:i + wave] for i in range(0, len(cells), wave)] if cells is not None else [None]
    interrupted = False
    previous = {sig: signal.signal(sig, _interrupt(callback)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for part in waves:
            _tuner(plan, record, directory, home, trainable, [callback, console], part, restore).fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        all_done = not interrupted and _all_done(plan, record, home, client, experiment_id, cells is None)
        try:
            runs.close_runs(client, experiment_id, record.parent_run_id, all_done)
        except Exception as e:
            log.warning("could not close MLflow runs (%s); run emoe sync after the server is back", e)
    return SweepOutcome(plan, experiment_id, record.parent_run_id, directory, _trials(home), all_done,
                        interrupted=interrupted, ran=len(cells) if cells is not None else plan.n_trials,
                        unended=_unended(home))


def _tuner(plan: Plan, record: SweepRecord, directory: Path, home: Path, trainable, callbacks: list,
           cells: list[dict[str, Any]] | None, restore: bool):
    """One Tuner: over ``cells`` (each with its arm's knobs, so that Tune's config, and its ``--verbose`` tables,
    are the trial's), or the Optuna search (restored from Tune's state with ``restore``)."""
    from ray import tune

    s = plan.settings
    if restore and tune.Tuner.can_restore(str(directory)):
        return tune.Tuner.restore(str(directory), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    param_space, search_alg, num_samples = search_space(plan)
    os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)  # a searcher that learns: Tune's one pending trial
    if cells is not None:
        resolved = [{**c, **record.arms[c["arm"]]} for c in cells]
        param_space, search_alg, num_samples = dict(plan.base), CellList(resolved), len(cells)
        # NOTE: Tune keeps one trial pending for any searcher but its own grid's generator, which would start a
        # list's trials one at a time; a list learns nothing, so its trials wait for resources as a grid's do
        # (Tune's figure for its generator: up to 200).
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(1, min(len(cells), 200)))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(
        metric=schema.ID_SCORE, mode=schema.direction(schema.ID_SCORE), scheduler=scheduler(plan, history(home)),
        search_alg=search_alg, num_samples=num_samples, max_concurrent_trials=s.max_concurrent,
        # NOTE: every trial asks for the same resources, so a finished trial's worker (torch and transformers
        # imported, data loaded) runs the next one.
        reuse_actors=True),
        run_config=tune.RunConfig(name=directory.name, storage_path=str(directory.parent), callbacks=callbacks,
                                  verbose=1 if s.verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=s.max_failures)))


def _quiet_tune(verbose: bool) -> None:
    """Tune as this tool drives it. NOTE: its per-trial result files are off (the records hold every report; its
    end-of-fit ExperimentAnalysis, never read here, would load them all into the driver, and warns that it finds
    none), and so is its SIGINT handler (``_interrupt``); without ``verbose``, its boxes, tables and state-saving
    notes give way to the console's lines."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)


def _unended(home: Path) -> list[tuple[str, str]]:
    return [(c["config"]["task"], c["arm"]) for c in (f.load_config() for f in unended_cells(home)) if c]


def _interrupt(callback: MlflowTrials):
    """Ctrl-C (or SIGTERM, as a cluster's scheduler sends): the callback stops giving verdicts (a trial stopped now
    was cut off, not stopped), and the fit ends with ``KeyboardInterrupt``. NOTE: Tune's own handler (off: ``TUNE_DISABLE_SIGINT_HANDLER``) would end the fit
    quietly, its stopped trials looking early-stopped, and advise ``Tuner.restore``, which this tool does not use."""
    def handler(signum, frame):
        callback.interrupted = True
        raise KeyboardInterrupt
    return handler


def _all_done(plan: Plan, record: SweepRecord, home: Path, client, experiment_id: str, search: bool) -> bool:
    """Whether every cell the sweep wants has a verdict (completed, early-stopped or failed). An Optuna search's
    cells without one when its fit ended were lost with the driver before Tune saved its state (the restored search
    suggested anew): they are retired first, their runs moved to MLflow's trash."""
    if search:
        for files in unended_cells(home):
            runs.retire_trial_run(client, experiment_id, record.parent_run_id, files.dir.name)
            log.info("%s: lost with the driver before Tune saved its state; retired to %s", files.dir.name,
                     retire(files))
        return len(trial_rows(home, unfinished=None)) >= plan.n_trials
    ended = {(r["task"], r["arm"], int(r["seed"]), float(r["learning_rate"]))
             for r in trial_rows(home, unfinished=None)}
    wanted = _wanted(plan, record)
    return all((t, a, int(s), float(lr)) in ended for t, a, s, lr in wanted)


def history(home: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]], bool]]:
    """What ASHA saw of the sweep's started cells before this run: (Tune config, reports, ended) each."""
    out = []
    for files, cell in sweep_trials(home):
        if cell is None:
            continue
        task, arm, seed, lr = cell_of(cell)
        config = {"task": task, "arm": arm, "seed": seed, "learning_rate": lr}
        reports = files.load_reports()
        out.append((config, reports, files.outcome(*cell_budget(cell)) is not None))
    return out


def results_frame(outcome: SweepOutcome) -> Any:
    """The sweep's trials as the analysis reads them (one row per trial: task, arm, seed, learning_rate, outcome,
    metrics), for ``emoe.analysis.selection``."""
    import pandas as pd

    rows = [{"task": t.task, "arm": t.arm, "seed": t.seed, "learning_rate": t.learning_rate,
             "outcome": t.outcome, **t.metrics} for t in outcome.trials]
    columns = ["task", "arm", "seed", "learning_rate", "outcome", schema.ID_SCORE, schema.OOD_SCORE]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
