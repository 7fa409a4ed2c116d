"""Running a sweep: ``run_sweep(design, settings)`` checks everything, joins (or starts) Ray, opens the MLflow parent
run, fits (or restores) the Tuner, closes the runs, and returns what happened. No argv here: that is the CLI's."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from pathlib import Path
from typing import Any, Callable

from emoe.sweep.design import Ablation
from emoe.sweep.plan import (Plan, SweepSettings, check_model_and_data, check_resources, local_nodes, make_plan,
                             primary_params)
from emoe.sweep.search import CellList, scheduler, search_space
from emoe.sweep.trainable import TrialSetup, quiet_libraries, tune_trainable
from emoe.tracking import runs, schema
from emoe.tracking.callback import MlflowTrials
from emoe.tracking.records import SweepRecord, TrialFiles, done_cells

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
    trials: list[TrialResult]
    complete: bool  # every trial of the plan ended (a resume has nothing left to do)

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


def missing_cells(plan: Plan, client, experiment_id: str, parent_run_id: str) -> list[dict[str, Any]]:
    """The grid cells (task, arm, seed, learning rate) of ``plan`` that no finished (completed or early-stopped)
    trial run under ``parent_run_id`` holds: new cells, and cells whose trials failed or never ended. From MLflow:
    only for a sweep whose trials predate the trial records (``emoe.tracking.records.done_cells`` otherwise)."""
    children = client.search_runs([experiment_id], filter_string=f"tags.`{schema.PARENT}` = '{parent_run_id}'",
                                  max_results=50_000)
    done = set()
    for r in children:
        if r.data.tags.get(schema.OUTCOME) in ("completed", "early_stopped"):
            p = r.data.params
            done.add((p.get("task"), r.data.tags.get(schema.ARM), int(p["seed"]), float(p["learning_rate"])))
    return [{"task": t, "arm": a, "seed": s, "learning_rate": lr} for t, a, s, lr in plan.grid()
            if (t, a, int(s), float(lr)) not in done]


def run_sweep(design: Ablation, settings: SweepSettings, resume: str | Path | None = None,
              argv: list[str] | None = None, extend: str | Path | None = None,
              trainable: Callable[[dict[str, Any], TrialSetup], None] = tune_trainable) -> SweepOutcome:
    """Run (or, with ``resume``, continue; with ``extend``, top up) a sweep.

    Args:
        design: the arms.
        settings: everything else (``SweepSettings``).
        resume: the experiment directory of an interrupted sweep with these design and settings.
        argv: the command line, recorded in the parent run's ``emoe.command`` tag.
        extend: the experiment directory of a sweep to top up: the cells of this design and settings that it lacks
            (new seeds, rates, arms or tasks, and cells whose trials failed) run under its MLflow parent run, from a
            directory of their own; nothing else may differ. Running it again runs nothing.
        trainable: what each trial runs, ``(tune config, TrialSetup)``; the default trains and evaluates. The
            scale benchmark passes one that only reports, to measure the driver and MLflow alone.

    Raises:
        ValueError: bad input, before Ray starts or anything is logged (one line).
    """
    import ray

    quiet_libraries()
    plan, _ = prepare(design, settings)
    nodes = connect_ray(settings)
    gpus = gpus_per_trial(settings, nodes)
    try:
        check_resources(settings, nodes, gpus)
    except ValueError:
        ray.shutdown()
        raise
    client = runs.client(settings.tracking_uri)
    experiment_id = runs.get_or_create_experiment(client, plan.experiment)
    storage = Path(settings.storage_path).resolve()
    if extend is not None:
        old = SweepRecord.load(extend)
        try:
            old.check_scoring(extend, "--extend")
            check_extension(old, design, plan)
        except ValueError:
            ray.shutdown()
            raise
        home = Path(extend).parent / old.origin if old.origin else Path(extend)  # the sweep first launched
        done = done_cells(home)  # from the trial records alone; MLflow only for trials older than the records
        cells = missing_cells(plan, client, experiment_id, old.parent_run_id) if done is None else \
            [{"task": t, "arm": a, "seed": s, "learning_rate": lr} for t, a, s, lr in plan.grid()
             if (t, a, int(s), float(lr)) not in done]
        if not cells:
            log.info("nothing to run: every cell of this grid has a finished trial under parent run %s",
                     old.parent_run_id)
            return SweepOutcome(plan, experiment_id, old.parent_run_id, Path(extend), [], True)
        directory = storage / f"{plan.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        directory.mkdir(parents=True, exist_ok=False)
        record = SweepRecord(design.name, design.factor, {**old.arms, **design.arms}, settings.to_dict(),
                             plan.experiment, old.parent_run_id, argv or [], cells=cells, origin=home.name)
        record.save(directory)
        client.update_run(old.parent_run_id, "RUNNING")
        client.set_tag(old.parent_run_id, schema.EXTENDED, str(directory))
        log.info("extending parent run %s with %d cell(s) in %s", old.parent_run_id, len(cells), directory)
        return _fit(plan, record, directory, client, experiment_id, gpus, False, trainable)
    if resume is None:
        directory = storage / f"{plan.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        directory.mkdir(parents=True, exist_ok=False)
        parent_id = runs.create_sweep_run(
            client, experiment_id, f"{design.name}-{directory.name[-15:]}", design.name, design.factor,
            argv or [], str(directory),
            {"arms": ",".join(design.arms), "tasks": ",".join(plan.tasks), "seeds": plan.seeds, "learning_rates": plan.learning_rates,
             "search": settings.search, "scheduler": settings.scheduler,
             "early_stop_scope": settings.early_stop_scope, "preset": settings.preset or "",
             **primary_params(settings), **plan.base})
        record = SweepRecord(design.name, design.factor, design.arms, settings.to_dict(), plan.experiment,
                             parent_id, argv or [])
        record.save(directory)
    else:
        directory = Path(resume).resolve()
        record = SweepRecord.load(directory)
        try:
            record.check_scoring(directory, "--resume")
        except ValueError:
            ray.shutdown()
            raise
        parent_id = record.parent_run_id
        client.update_run(parent_id, "RUNNING")
        log.info("resuming %s (MLflow parent run %s)", directory, parent_id)
    return _fit(plan, record, directory, client, experiment_id, gpus, resume is not None, trainable)


def _fit(plan: Plan, record: SweepRecord, directory: Path, client, experiment_id: str, gpus: float,
         resume: bool, trainable=tune_trainable) -> SweepOutcome:
    from ray import tune

    s = plan.settings
    trainable = tune.with_resources(
        tune.with_parameters(trainable, setup=TrialSetup(record, str(directory), max(1, int(s.cpus_per_trial)),
                                                         s.checkpoint_every)),
        {"cpu": s.cpus_per_trial, "gpu": gpus})
    callback = MlflowTrials(s.tracking_uri, experiment_id, record, str(directory))
    all_done, trials = False, []
    try:
        if resume and tune.Tuner.can_restore(str(directory)):
            tuner = tune.Tuner.restore(str(directory), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            param_space, search_alg, num_samples = search_space(plan)
            if record.cells is not None:  # an extension: exactly the cells it lacks
                param_space, search_alg, num_samples = dict(plan.base), CellList(record.cells), len(record.cells)
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(
                metric=schema.ID_SCORE, mode=schema.direction(schema.ID_SCORE), scheduler=scheduler(plan),
                search_alg=search_alg, num_samples=num_samples, max_concurrent_trials=s.max_concurrent,
                # NOTE: every trial asks for the same resources, so a finished trial's worker (torch and
                # transformers imported, data loaded) runs the next one.
                reuse_actors=True),
                run_config=tune.RunConfig(name=directory.name, storage_path=str(directory.parent),
                                          callbacks=[callback], verbose=1,
                                          failure_config=tune.FailureConfig(max_failures=s.max_failures)))
        grid = tuner.fit()
        for r in grid:
            if r.config:
                epochs = record.trial_config(r.config)["epochs"]  # --epochs, or the task's cap
                trial_id = (r.metrics or {}).get("trial_id", "")
                files = TrialFiles(directory, trial_id) if trial_id else None
                reports = files.load_reports() if files is not None else []
                full = (files.load_final() if files is not None else None) or (reports[-1] if reports else r.metrics)
                trials.append(TrialResult(  # Tune holds what it schedules on; the records every metric
                    trial_id, r.config.get("arm"), r.config.get("seed"), r.config.get("learning_rate"),
                    schema.outcome(r.metrics, epochs, r.error is not None), schema.trial_metrics(full or {}),
                    r.config.get("task")))
        expected = len(record.cells) if record.cells is not None else plan.n_trials
        all_done = grid.num_terminated + grid.num_errors >= expected
        if resume:
            # NOTE: after the fit, when Tune has written its final state: read before it, the state on the storage
            # path can be older than the one the Tuner restored from, and would retire runs of trials it knows.
            known = {t.trial_id for t in tune.ExperimentAnalysis(str(directory)).trials}
            retired = runs.retire_lost_trials(client, experiment_id, record.parent_run_id, known)
            if retired:
                log.info("%d trial run(s) started after Tune's last saved state were lost with the driver: moved "
                         "to MLflow's trash (tag %s); their cells ran again", retired, schema.RETIRED)
    finally:
        try:
            runs.close_runs(client, experiment_id, record.parent_run_id, all_done)
        except Exception as e:
            log.warning("could not close MLflow runs (%s); run python -m emoe.sync after the server is back", e)
    return SweepOutcome(plan, experiment_id, record.parent_run_id, directory, trials, all_done)


def results_frame(outcome: SweepOutcome) -> Any:
    """The sweep's trials as the analysis reads them (one row per trial: task, arm, seed, learning_rate, outcome,
    metrics), for ``emoe.analysis.selection``."""
    import pandas as pd

    rows = [{"task": t.task, "arm": t.arm, "seed": t.seed, "learning_rate": t.learning_rate,
             "outcome": t.outcome, **t.metrics} for t in outcome.trials]
    columns = ["task", "arm", "seed", "learning_rate", "outcome", schema.ID_SCORE, schema.OOD_SCORE]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
