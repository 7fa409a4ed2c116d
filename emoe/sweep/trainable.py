"""The worker side of a sweep: one Tune trial is one call of ``emoe.train.train_and_evaluate``.

Runs inside Ray's worker processes (possibly on other nodes): it knows the sweep's record (to turn a Tune config
into a flat trial config) and where the trial's files go, and nothing of MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from emoe.tracking import schema
from emoe.tracking.records import SweepRecord, TrialFiles


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    record: SweepRecord
    root: str  # the sweep's directory, where its cells' files go (an extension's: the sweep it extends)
    threads: int  # torch threads: the trial's CPUs
    checkpoint_every: int | None = 1  # evaluations between training-state checkpoints; None: none


def quiet_libraries() -> None:
    """Progress bars and load reports of every trial drown Tune's table; keep warnings and errors."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def tune_trainable(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: train and evaluate, reporting each evaluation with ``ray.tune.report``.

    Each report goes first to the cell's records (``reports.jsonl``: every metric, with where it ran: ``node_ip``,
    ``node_id``, ``pid``, ``gpu_ids``), then to Tune (only what Tune schedules on). A cell whose final metrics were
    saved (it finished before an interruption) reports them again and returns without retraining. Every ``checkpoint_every`` evaluations, once the report has
    been taken, the whole training state is written to the trial's ``state.pt`` on the storage path (atomically,
    one per trial, deleted when the trial finishes); a trial that Tune starts again (a retry after a node failure,
    ``--resume`` after a driver kill) continues from it: no optimiser step is trained twice, and each step is
    reported at most once more (the MLflow callback logs each step once).

    NOTE: not Tune's own checkpoints: Tune restores a trial from the checkpoint named in its last saved experiment
    state, which, after a driver kill, can be one that ``CheckpointConfig(num_to_keep=...)`` (or the deletion of a
    finished trial's checkpoints) has already removed, and the trial then fails before this function runs (seen in
    the driver-kill test). The trial's own file has no such window.
    """
    import ray
    import torch
    from ray import tune

    from emoe.convert import emoe_layers
    from emoe.train import train_and_evaluate

    quiet_libraries()
    torch.set_num_threads(setup.threads)
    trial_cfg = setup.record.trial_config(config)
    files = TrialFiles.of_cell(setup.root, config["arm"], trial_cfg)  # the cell's files, whichever attempt this is
    where = {"gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
             "node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
             "pid": os.getpid()}
    final = files.load_final()
    if final is not None:  # the cell finished in an earlier attempt: its result again, nothing retrained
        tune.report(schema.scheduled(final))
        return
    files.start_attempt(config["arm"], trial_cfg)  # the cell's record: its config, then every report
    resume = files.load_state() if setup.checkpoint_every else None
    # every report of an attempt that continued from a checkpoint says from which step (records, MLflow tag)
    origin = {schema.RESUMED_FROM: resume["step"]} if resume is not None else {}
    staged: list[dict[str, Any]] = []  # the state of the coming report, written once the report is taken
    evaluations = [0]

    def on_state(state: dict[str, Any]) -> None:
        evaluations[0] += 1
        if evaluations[0] % setup.checkpoint_every == 0 and not state["done"]:
            staged.append(state)

    def report(metrics: dict[str, float]) -> None:
        # NOTE: the final evaluation is saved *before* it is reported: a scheduler may stop the trial on that very
        # report (ASHA stops every trial that reaches max_t), and the function never runs past it.
        files.append_report({**metrics, **where, **origin})
        if schema.finished(metrics, trial_cfg["epochs"], trial_cfg.get("max_steps")):
            files.save_final(metrics)
            files.drop_state()
        tune.report(schema.scheduled(metrics))  # the rest is in the records
        # NOTE: after the report: a trial that dies before this line reports this step again from its previous
        # state (logged once all the same), never skips it. The tensors are still those of this evaluation.
        if staged:
            files.save_state(staged.pop())

    def save_partitions(model):
        files.save_partitions({f.block: f.labels.cpu().numpy() for f in emoe_layers(model)})

    def keep_model(model, state):
        from emoe.convert import save_converted

        save_converted(model, files.model, state=state)

    train_and_evaluate(trial_cfg, report, data=task_data(trial_cfg), on_model=save_partitions,
                       on_predictions=files.save_predictions, on_state=on_state if setup.checkpoint_every else None,
                       resume=resume, on_kept_model=keep_model)


_TASK_DATA: dict[str, Any] = {}


def task_data(cfg: dict[str, Any]):
    """The trial's task data, loaded once per worker process: Tune reuses a trial's actor for the next trial
    (``reuse_actors``), so a sweep's trials on one worker share the loaded (read-only) datasets."""
    from emoe.train import load_trial_data

    key = json.dumps([cfg["task"], cfg["data_dir"], cfg.get("ood"), cfg["max_train_samples"],
                      cfg["max_eval_samples"], cfg.get("ood_sets"), cfg["ood_protocol"], cfg.get("dev_samples"),
                      cfg.get("dev_seed", 0)], sort_keys=True, default=str)
    if key not in _TASK_DATA:
        _TASK_DATA.clear()  # one task at a time: never hold several datasets in a worker
        _TASK_DATA[key] = load_trial_data(cfg)
    return _TASK_DATA[key]
