"""The ablation runner: arms x seeds x learning rates as a Ray Tune search, every trial an MLflow child run.

A sweep script declares only its ablation (``Ablation``: a name and its arms); ``run_sweep`` does the rest: presets
and flags, checks of every trial config before Ray starts, resources (fractional GPUs too), ASHA early stopping per
arm on ``id_acc``, Optuna with an equal budget per arm, MLflow parent/child runs, resume, and a summary per arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from emoe import hparams, tracking

log = logging.getLogger(__name__)

DENSE = "dense"
SIDECAR = "emoe_sweep.json"  # in the Ray experiment directory: how to resume this sweep
TRIALS_DIR = "emoe_trials"  # in the Ray experiment directory: per-trial final metrics, partitions, placement


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One ablation: its name (``emoe-<name>`` experiment) and its arms, each a name and the knobs it sets."""

    name: str
    arms: dict[str, dict[str, Any]]
    factor: str  # the swept factor, recorded as the sweep's ``emoe.factor`` tag for analysis

    @classmethod
    def over(cls, factor: str, values, baseline: bool = True) -> "Ablation":
        """One arm per value of one knob, plus the dense baseline arm."""
        arms = {str(v): {factor: v} for v in values}
        if baseline:
            arms[DENSE] = {"method": DENSE}
        return cls(factor if factor != "init" else "pretraining", arms, factor)


# Sweep-level settings a preset may set besides knobs.
SWEEP_DEFAULTS = {"seeds": [0, 1, 2], "learning_rates": [2e-5, 3e-5, 5e-5], "lr_range": [1e-5, 1e-4],
                  "cpus_per_trial": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a laptop CPU: the packaged MiniLM, a small SST-2 subset, 2 seeds, 1 learning rate.
    "demo": {"model": "minilm", "task": "sst2", "max_train_samples": 1000, "max_eval_samples": 200,
             "max_length": 64, "batch_size": 16, "epochs": 1, "eval_steps": 32, "seeds": [0, 1],
             "learning_rates": [1e-4], "cpus_per_trial": 2.0},
    # The paper's setting on GLUE with BERT-base: full data, its learning-rate grid, 3 seeds.
    "paper": {"model": "bert-base-uncased", "task": "sst2", "max_train_samples": None, "max_eval_samples": None,
              "max_length": 128, "batch_size": 32, "epochs": 3, "eval_steps": None, "seeds": [0, 1, 2],
              "learning_rates": [2e-5, 3e-5, 5e-5]},
}


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage block first otherwise)
        self.exit(2, f"error: {message}\n")


def build_parser(ablation: Ablation) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{Path(sys.argv[0]).name}",
                description=f"EMoE ablation '{ablation.name}': arms {', '.join(ablation.arms)}; each crossed with "
                            "seeds and learning rates, run as a Ray Tune search, logged to MLflow.")
    g = p.add_argument_group("sweep")
    g.add_argument("--preset", choices=sorted(PRESETS), help="demo: offline MiniLM, a few minutes on a CPU; "
                   "paper: bert-base-uncased, full data, the paper's grid. Explicit flags override it")
    g.add_argument("--seeds", type=_ints, help="comma-separated seeds (default: 0,1,2)")
    g.add_argument("--learning-rates", type=_floats, help="comma-separated grid (default: 2e-5,3e-5,5e-5)")
    g.add_argument("--search", choices=("grid", "optuna"), default="grid",
                   help="grid, or optuna: a log-uniform learning rate (--lr-range), --num-samples per arm")
    g.add_argument("--num-samples", type=int, default=None,
                   help="optuna: trials per arm (default: seeds x learning rates); grid: repeats of the grid")
    g.add_argument("--lr-range", type=_floats, help="optuna: LOW,HIGH of the log-uniform learning rate")
    g.add_argument("--scheduler", choices=("asha", "none"), default="asha", help="early stopping on id_acc")
    g.add_argument("--early-stop-scope", choices=("arm", "global"), default="arm",
                   help="arm: a trial competes only with the learning rates of its own arm and seed (default); "
                        "global: with every trial")
    g.add_argument("--grace-period", type=float, default=None,
                   help="ASHA: epochs before a trial can be stopped (default: a quarter of --epochs)")
    g.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (default: 2)")
    g.add_argument("--dry-run", action="store_true", help="print the trials and resources; run nothing")
    r = p.add_argument_group("cluster")
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    r.add_argument("--num-gpus", type=float, default=None,
                   help="local Ray only: GPUs to declare (default: detected); logical GPUs work for testing")
    r.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPU share per trial, fractions allowed (default: 1 if the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs per trial, also its torch threads (default: 1; preset demo: 2)")
    r.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    r.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial (default: 0)")
    r.add_argument("--storage-path", default="./ray_results",
                   help="Ray results; a shared path on a multi-node cluster (default: ./ray_results)")
    r.add_argument("--resume", nargs="?", const="latest", metavar="DIR",
                   help="continue an interrupted sweep (default: the latest of this experiment)")
    t = p.add_argument_group("tracking")
    t.add_argument("--tracking-uri", default=tracking.DEFAULT_TRACKING_URI,
                   help=f"MLflow store (default: {tracking.DEFAULT_TRACKING_URI}; http://host:port for a server)")
    t.add_argument("--experiment", default=None,
                   help=f"MLflow experiment (default: {tracking.experiment_name(ablation.name)})")
    k = p.add_argument_group("trial (every other knob of emoe.hparams)")
    hparams.add_arguments(k, [n for n in hparams.KNOBS if n not in ("seed", "learning_rate")])
    return p


@dataclasses.dataclass
class SweepPlan:
    ablation: Ablation
    args: argparse.Namespace
    base: dict[str, Any]  # trial config shared by every trial (without seed, learning_rate, arm knobs)
    seeds: list[int]
    learning_rates: list[float]
    lr_range: list[float]
    experiment: str

    def trial(self, arm: str, seed: int, learning_rate: float) -> dict[str, Any]:
        return {**self.base, **self.ablation.arms[arm], "seed": seed, "learning_rate": learning_rate}

    def grid(self) -> list[tuple[str, int, float]]:
        return [(a, s, lr) for a in self.ablation.arms for s in self.seeds for lr in self.learning_rates]


def make_plan(ablation: Ablation, argv: list[str] | None) -> SweepPlan:
    """Parse flags over preset over defaults, and check every trial config. ``ValueError`` on bad input."""
    args = build_parser(ablation).parse_args(argv)
    preset = dict(PRESETS.get(args.preset, {}))
    settings = {k: preset.pop(k, v) for k, v in SWEEP_DEFAULTS.items()}
    overrides = {**preset, **hparams.overrides_from_args(args)}
    swept = sorted({k for arm in ablation.arms.values() for k in arm} & set(hparams.overrides_from_args(args)))
    if swept:
        raise ValueError(f"--{swept[0].replace('_', '-')} is swept by this ablation (arms: "
                         f"{', '.join(ablation.arms)}); drop the flag")
    seeds = args.seeds if args.seeds is not None else settings["seeds"]
    lrs = args.learning_rates if args.learning_rates is not None else settings["learning_rates"]
    lr_range = args.lr_range if args.lr_range is not None else settings["lr_range"]
    if args.cpus_per_trial is None:
        args.cpus_per_trial = settings["cpus_per_trial"]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers, got {seeds}")
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"--learning-rates must be positive numbers, got {lrs}")
    if len(lr_range) != 2 or not 0 < lr_range[0] < lr_range[1]:
        raise ValueError(f"--lr-range must be LOW,HIGH with 0 < LOW < HIGH, got {lr_range}")
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples={args.num_samples} must be >= 1")
    if args.cpus_per_trial <= 0 or (args.gpus_per_trial is not None and args.gpus_per_trial < 0):
        raise ValueError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if args.gpus_per_trial and args.gpus_per_trial > 1 and args.gpus_per_trial != int(args.gpus_per_trial):
        raise ValueError(f"--gpus-per-trial={args.gpus_per_trial}: above 1 it must be a whole number")
    base = absolute_paths(hparams.trial_config(overrides))
    base = {k: v for k, v in base.items() if k not in ("seed", "learning_rate")}
    plan = SweepPlan(ablation, args, base, seeds, lrs, lr_range,
                     args.experiment or tracking.experiment_name(ablation.name))
    for arm in ablation.arms:  # every arm's config is valid (names, k <= N, ...)
        try:
            hparams.trial_config(plan.trial(arm, seeds[0], lrs[0]))
        except ValueError as e:
            raise ValueError(f"arm {arm!r}: {e}") from None
    return plan


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """Local paths made absolute: trials run in their own working directories (and on other nodes)."""
    cfg = dict(cfg)
    if cfg.get("data_dir"):
        cfg["data_dir"] = str(Path(cfg["data_dir"]).expanduser().resolve())
    if cfg.get("model") and Path(cfg["model"]).expanduser().exists():
        cfg["model"] = str(Path(cfg["model"]).expanduser().resolve())
    if cfg.get("ood"):
        cfg["ood"] = {k: str(Path(v).expanduser().resolve()) for k, v in cfg["ood"].items()}
    return cfg


def check_model_and_data(plan: SweepPlan) -> None:
    """Model-dependent checks (block indices, N against d_ff) on a weightless copy, and the data files."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from emoe.convert import plan_conversion, resolve_model
    from emoe.data import get_task, load_task

    name = plan.base["model"]
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=get_task(plan.base["task"]).num_labels)
    except Exception as e:  # OSError / ValueError / HTTP errors, depending on what is wrong
        raise ValueError(f"model {name!r} cannot be loaded ({str(e).strip().splitlines()[0][:200]})") from None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    for arm in plan.ablation.arms:
        cfg = hparams.trial_config(plan.trial(arm, plan.seeds[0], plan.learning_rates[0]))
        try:
            plan_conversion(model, hparams.emoe_config(cfg))
        except ValueError as e:
            raise ValueError(f"arm {arm!r}: {e}") from None
    if plan.base["data_dir"] is not None:
        load_task(plan.base["task"], plan.base["data_dir"], plan.base.get("ood"), max_train_samples=1,
                  max_eval_samples=1)


# ----------------------------------------------------------------------------------------------------- trial side


def trial_workdir(root: str, trial_id: str) -> Path:
    path = Path(root) / TRIALS_DIR / trial_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def tune_trainable(config: dict[str, Any], arms: dict[str, dict[str, Any]], root: str) -> None:
    """One Tune trial: resolve the flat trial config, train, report each evaluation with ``ray.tune.report``.

    A trial whose final metrics were saved (it finished before an interruption) reports them again and returns
    without retraining.
    """
    import ray
    import torch
    from ray import tune

    from emoe.convert import emoe_layers
    from emoe.train import train_and_evaluate

    quiet_libraries()
    trial_id = tune.get_context().get_trial_id()
    work = trial_workdir(root, trial_id)
    cpus = max(1, int(config.get("_cpus", 1)))
    torch.set_num_threads(cpus)
    placement = {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid(), "start": time.time(),
                 "node": ray.get_runtime_context().get_node_id(),
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    final_path = work / "final.json"
    if final_path.exists():
        tune.report(json.loads(final_path.read_text()))
        return
    trial_cfg = resolve_trial(config, arms)

    def save_partitions(model):
        import numpy as np

        layers = emoe_layers(model)
        if layers:
            np.savez(work / "partitions.npz", **{f"block{f.block}": f.labels.cpu().numpy() for f in layers})

    with open(work / "starts.log", "a") as f:  # one line per time this trial starts training: time, pid, node
        f.write(f"{time.time()} {os.getpid()} {placement['node']}\n")

    def report(metrics: dict[str, float]) -> None:
        # NOTE: the final evaluation is saved *before* it is reported: a scheduler may stop the trial on that very
        # report (ASHA stops every trial that reaches max_t), and the function never runs past it.
        if metrics[tracking.EPOCH] >= trial_cfg["epochs"] - 1e-9:
            placement["end"] = time.time()
            (work / "placement.json").write_text(json.dumps(placement))
            tmp = final_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(metrics))
            os.replace(tmp, final_path)
        tune.report(metrics)

    train_and_evaluate(trial_cfg, report, data=_task_data(trial_cfg), on_model=save_partitions)


_TASK_DATA: dict[str, Any] = {}


def _task_data(cfg: dict[str, Any]):
    """The trial's task data, loaded once per worker process: Tune reuses a trial's actor for the next trial
    (``reuse_actors``), so a sweep's trials on one worker share the loaded (read-only) datasets."""
    from emoe.train import load_trial_data

    key = json.dumps([cfg["task"], cfg["data_dir"], cfg.get("ood"), cfg["max_train_samples"],
                      cfg["max_eval_samples"]], sort_keys=True, default=str)
    if key not in _TASK_DATA:
        _TASK_DATA.clear()  # one task at a time: never hold several datasets in a worker
        _TASK_DATA[key] = load_trial_data(cfg)
    return _TASK_DATA[key]


def quiet_libraries() -> None:
    """Progress bars and load reports of every trial drown Tune's table; keep warnings and errors."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def resolve_trial(config: dict[str, Any], arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The flat trial config of a Tune config: its knobs plus its arm's knobs (private ``_`` keys dropped)."""
    flat = {k: v for k, v in config.items() if not k.startswith("_") and k != "arm"}
    flat.update(arms[config["arm"]])
    return hparams.trial_config(flat)


# ------------------------------------------------------------------------------------------------- driver side


def _scheduler(plan: SweepPlan):
    if plan.args.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = plan.base["epochs"]
    grace = plan.args.grace_period or epochs / 4

    def make():
        return ASHAScheduler(time_attr=tracking.EPOCH, max_t=epochs, grace_period=grace,
                             reduction_factor=plan.args.reduction_factor)

    return make() if plan.args.early_stop_scope == "global" else PerArmScheduler(make)


class PerArmScheduler(FIFOScheduler):
    """ASHA run separately within each (arm, seed): a trial is compared only with the other learning rates of its
    own arm and seed, so no arm is eliminated because another learns faster early.

    NOTE: seeds get brackets of their own because stopping a seed for trailing its sibling seeds of the same
    configuration would keep only the lucky replicates of that configuration, biasing its mean upwards.
    """

    def __init__(self, make_scheduler):
        super().__init__()
        self._make = make_scheduler
        self._arms: dict[str, Any] = {}
        self._metric = self._mode = None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return all(s.set_search_properties(metric, mode, **spec) for s in self._arms.values())

    def _for(self, trial):
        arm = (trial.config.get("arm"), trial.config.get("seed"))
        if arm not in self._arms:
            self._arms[arm] = self._make()
            self._arms[arm].set_search_properties(self._metric, self._mode)
        return self._arms[arm]

    def on_trial_add(self, tune_controller, trial):
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ASHA per arm and seed: " + ", ".join(f"{a}/{sd}: {s.debug_string()}"
                                                     for (a, sd), s in self._arms.items())


class ArmBalancedOptuna(Searcher):
    """One Optuna study per arm over a log-uniform learning rate; arms take turns, so every arm gets the same
    number of samples (an equal tuning budget). The i-th sample of an arm uses ``seeds[i % len(seeds)]``."""

    def __init__(self, arms: list[str], seeds: list[int], lr_range: list[float], samples_per_arm: int,
                 metric: str = tracking.ID_ACC, mode: str = "max", seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        self.arms, self.seeds, self.quota = list(arms), list(seeds), samples_per_arm
        space = {"learning_rate": tune.loguniform(*lr_range)}
        self.studies = {a: OptunaSearch(space, metric=metric, mode=mode, seed=seed + i)
                        for i, a in enumerate(self.arms)}
        self.count = dict.fromkeys(self.arms, 0)
        self.owner: dict[str, str] = {}

    def suggest(self, trial_id: str):
        open_arms = [a for a in self.arms if self.count[a] < self.quota]
        if not open_arms:
            return Searcher.FINISHED
        arm = min(open_arms, key=lambda a: (self.count[a], self.arms.index(a)))
        suggestion = self.studies[arm].suggest(trial_id)
        if suggestion is None:
            return None
        seed = self.seeds[self.count[arm] % len(self.seeds)]
        self.count[arm] += 1
        self.owner[trial_id] = arm
        return {**suggestion, "arm": arm, "seed": seed}

    def on_trial_result(self, trial_id, result):
        if trial_id in self.owner:
            self.studies[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self.owner:
            self.studies[self.owner.pop(trial_id)].on_trial_complete(trial_id, result, error)


_OUR_METRICS = (tracking.TRAIN_LOSS, tracking.ID_ACC, tracking.OOD_ACC, tracking.EPOCH, tracking.STEP,
                "load_entropy")


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if k.startswith(_OUR_METRICS) and isinstance(v, (int, float))}


class MlflowTrials(Callback):
    """Driver-side MLflow logging: one child run per trial under the sweep's parent run.

    A trial that restarts (resume, retry) continues its own run, found by its ``emoe.trial_id`` tag; MLflow errors
    are logged and never stop the sweep (Ray's own records keep every result; ``python -m emoe.sync`` backfills).
    """

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, arms: dict[str, dict[str, Any]],
                 root: str):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.arms, self.root = arms, root
        self._runs: dict[str, tracking.TrialRun] = {}
        self._client = None
        self._down_until = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_runs": {}, "_down_until": 0.0}

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.uri)
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

    def _run(self, trial) -> tracking.TrialRun | None:
        if trial.trial_id not in self._runs:
            run = self._safe("run lookup", open_trial_run, self.client, self.experiment_id, self.parent_run_id,
                             trial.trial_id, trial.config.get("arm"),
                             tracking.trial_run_name(trial.config.get("arm"), trial.config))
            if run is None:
                return None
            self._runs[trial.trial_id] = run
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run is not None:
            self._safe("params", run.log_params, resolve_trial(trial.config, self.arms))
            self._safe("config artifact", run.log_dict,
                       hparams.emoe_config(resolve_trial(trial.config, self.arms)).to_dict(), "emoe_config.json")
            self._safe("status", self.client.update_run, run.run_id, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self._run(trial)
        if run is not None:
            self._safe("metrics", run.log_metrics, trial_metrics(result), int(result.get(tracking.STEP, 0)))

    def _partitions(self, trial, run):
        path = Path(self.root) / TRIALS_DIR / trial.trial_id / "partitions.npz"
        if path.exists():
            self._safe("partitions artifact", self.client.log_artifact, run.run_id, str(path))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run is None:
            return
        last = trial.last_result or {}
        finished = last.get(tracking.EPOCH, 0) >= trial.config.get("epochs", 1) - 1e-9
        self._partitions(trial, run)
        outcome = "completed" if finished else "early_stopped"
        self._safe("outcome", run.finish, outcome,
                   name=tracking.trial_run_name(trial.config.get("arm"), trial.config, outcome, last))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A retry (--max-failures) continues the same run; its metrics restart from step 1 (see the README).
        run = self._run(trial)
        if run is not None:
            error = trial_error_text(trial).split("\n\n")[0]
            self._safe("restart", run.set_tags, {tracking.RESTARTS: trial.num_failures,
                                                 f"{tracking.RESTARTS}.last_error": error})

    def on_trial_error(self, iteration, trials, trial, **info):
        run = self._run(trial)
        if run is None:
            return
        error = trial_error_text(trial)
        self._safe("failure", run.finish, "failed", error,
                   name=tracking.trial_run_name(trial.config.get("arm"), trial.config, "failed"))


def trial_error_text(trial) -> str:
    try:
        err = trial.get_error()
        text = str(err) if err is not None else ""
    except Exception:
        text = ""
    if not text and trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text()
    lines = [l for l in text.strip().splitlines() if l.strip()]
    # The last line of a traceback is "Type: message": the part a person needs first.
    return (lines[-1] + "\n\n" + text) if lines else "trial failed (no error recorded)"


def open_trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str, arm: str | None,
                   name: str) -> tracking.TrialRun:
    """The child run of ``trial_id`` under ``parent_run_id``: the existing one, else a new one."""
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.`{tracking.TRIAL_ID}` = '{trial_id}' and tags.`{tracking.PARENT}` = '{parent_run_id}'"),
        max_results=1)
    if found:
        return tracking.TrialRun(client, experiment_id, name, run_id=found[0].info.run_id)
    return tracking.TrialRun(client, experiment_id, name, parent_run_id=parent_run_id,
                             tags={tracking.ARM: str(arm), tracking.TRIAL_ID: trial_id})


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def close_runs(client, experiment_id: str, parent_run_id: str, all_done: bool) -> None:
    """Leave no run RUNNING: unfinished child runs become KILLED (a resume continues them); the parent FINISHED
    when every trial ended, else KILLED."""
    children = client.search_runs([experiment_id], filter_string=f"tags.`{tracking.PARENT}` = '{parent_run_id}'",
                                  max_results=50000)
    for run in children:
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run.info.run_id, status="KILLED")
    client.set_terminated(parent_run_id, status="FINISHED" if all_done else "KILLED")


def summarize(results: list[dict[str, Any]], epochs: float) -> str:
    """Per arm: the learning rate with the best mean id_acc over seeds, and that rate's ID/OOD mean +- std.

    Only completed trials count: an early-stopped trial's metrics come from partial training.
    """
    import pandas as pd

    rows = [r for r in results if tracking.ID_ACC in r]
    if not rows:
        return "no trial reported a result"
    df = pd.DataFrame(rows)
    df["completed"] = df[tracking.EPOCH] >= epochs - 1e-9
    lines = [f"{'arm':<16} {'best lr':>9} {'seeds':>5} {'early-stopped':>13} {'id_acc':>15} {'ood_acc':>15}"]
    for arm, group in df.groupby("arm", sort=False):
        done = group[group["completed"]]
        stopped = int((~group["completed"]).sum())
        if done.empty:
            lines.append(f"{arm:<16} {'-':>9} {0:>5} {stopped:>13} {'n/a':>15} {'n/a':>15}")
            continue
        best_lr = done.groupby("learning_rate")[tracking.ID_ACC].mean().idxmax()
        sel = done[done["learning_rate"] == best_lr]

        def fmt(col):
            vals = sel[col].dropna() if col in sel else []
            return f"{vals.mean():.4f}+-{vals.std(ddof=1) if len(vals) > 1 else 0:.4f}" if len(vals) else "n/a"

        lines.append(f"{arm:<16} {best_lr:>9.2g} {len(sel):>5} {stopped:>13} {fmt(tracking.ID_ACC):>15} "
                     f"{fmt(tracking.OOD_ACC):>15}")
    return "\n".join(lines)


def _latest_experiment_dir(storage: Path, experiment: str) -> Path:
    candidates = sorted(p for p in storage.glob(f"{experiment}-*") if (p / SIDECAR).exists())
    if not candidates:
        raise ValueError(f"nothing to resume: no sweep of experiment {experiment!r} under {storage}")
    return candidates[-1]


def run_sweep(ablation: Ablation, argv: list[str] | None = None) -> int:
    """The whole sweep. Returns the process exit code (2 on bad input, before Ray starts)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    try:
        resume_dir = None
        probe = build_parser(ablation).parse_args(argv)
        if probe.resume:
            storage = Path(probe.storage_path).resolve()
            experiment = probe.experiment or tracking.experiment_name(ablation.name)
            resume_dir = (_latest_experiment_dir(storage, experiment) if probe.resume == "latest"
                          else Path(probe.resume).resolve())
            if not (resume_dir / SIDECAR).exists():
                raise ValueError(f"--resume {resume_dir}: not a sweep directory (no {SIDECAR})")
            saved = json.loads((resume_dir / SIDECAR).read_text())
            argv = saved["argv"]  # the interrupted sweep's own flags
        plan = make_plan(ablation, argv)
        tracking.check_tracking_uri(plan.args.tracking_uri)
        check_model_and_data(plan)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grid = plan.grid()
    samples = plan.args.num_samples
    if plan.args.search == "optuna":
        per_arm = samples or len(plan.seeds) * len(plan.learning_rates)
        n_trials = per_arm * len(ablation.arms)
    else:
        n_trials = len(grid) * (samples or 1)
    if plan.args.dry_run:
        print(dry_run_table(plan, n_trials))
        return 0
    try:
        connect_ray(plan.args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _run(plan, resume_dir, argv, n_trials)


def connect_ray(a: argparse.Namespace) -> None:
    """Join the cluster at ``--address``, else start a local Ray; ``ValueError`` (one line) if it cannot be
    reached. Runs before anything is written to MLflow."""
    import ray

    if not a.address:
        # NOTE: "local" always starts a fresh Ray: plain ray.init() would join (or, if its head died, hang on) the
        # cluster recorded in /tmp/ray/ray_current_cluster by an earlier `ray start`.
        ray.init(address="local", num_gpus=a.num_gpus, ignore_reinit_error=True, include_dashboard=False)
        return
    host, _, port = a.address.removeprefix("ray://").rpartition(":")
    if a.address != "auto":
        if not host or not port.isdigit():
            raise ValueError(f"--address {a.address!r}: expected HOST:PORT (the head's GCS port, e.g. 10.0.0.1:6379),"
                             " ray://HOST:PORT or auto")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise ValueError(f"--address {a.address!r}: no Ray head reachable there ({e.strerror or e}); start one "
                             "with ray start --head, or omit --address for a local Ray") from None
    try:
        ray.init(address=a.address, ignore_reinit_error=True, log_to_driver=True)
    except (ConnectionError, RuntimeError) as e:
        raise ValueError(f"--address {a.address!r}: cannot join the Ray cluster ({str(e).splitlines()[0]})") from None


def dry_run_table(plan: SweepPlan, n_trials: int) -> str:
    a = plan.args
    gpus = "auto (1 if the cluster has GPUs)" if a.gpus_per_trial is None else a.gpus_per_trial
    head = [f"ablation {plan.ablation.name}: {len(plan.ablation.arms)} arms x {len(plan.seeds)} seeds x "
            + (f"{len(plan.learning_rates)} learning rates" if a.search == "grid"
               else f"optuna lr in [{plan.lr_range[0]:g}, {plan.lr_range[1]:g}]") + f" = {n_trials} trials",
            f"resources per trial: cpu={a.cpus_per_trial} gpu={gpus}; max concurrent: {a.max_concurrent or 'auto'}",
            f"scheduler: {a.scheduler} (scope {a.early_stop_scope}, on {tracking.ID_ACC}); "
            f"MLflow: {a.tracking_uri} experiment {plan.experiment}",
            f"{'arm':<16} {'seed':>4} {'learning_rate':>13}  arm knobs"]
    rows = [f"{arm:<16} {s:>4} {lr:>13.3g}  {plan.ablation.arms[arm]}"
            for arm, s, lr in (plan.grid() if a.search == "grid" else
                               [(arm, s, float("nan")) for arm in plan.ablation.arms for s in plan.seeds])]
    return "\n".join(head + rows)


def _run(plan: SweepPlan, resume_dir: Path | None, argv: list[str], n_trials: int) -> int:
    import ray
    from ray import tune

    a = plan.args
    storage = Path(a.storage_path).resolve()
    client = tracking.client(a.tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, plan.experiment)
    if resume_dir is None:
        exp_dir = storage / f"{plan.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_dir.mkdir(parents=True, exist_ok=False)
        parent = client.create_run(experiment_id, run_name=f"{plan.ablation.name}-{exp_dir.name[-15:]}", tags={
            tracking.ROLE: "sweep", tracking.SWEEP: plan.ablation.name, tracking.FACTOR: plan.ablation.factor,
            "emoe.git_commit": _git_commit(), "emoe.command": tracking.redact(shlex.join([sys.argv[0], *argv])),
            "emoe.ray_dir": str(exp_dir)})
        parent_id = parent.info.run_id
        (exp_dir / SIDECAR).write_text(json.dumps({"argv": argv, "parent_run_id": parent_id,
                                                   "experiment_id": experiment_id, "experiment": plan.experiment,
                                                   "arms": plan.ablation.arms}, indent=2))
        tracking.TrialRun(client, experiment_id, "", run_id=parent_id).log_params(
            {"arms": ",".join(plan.ablation.arms), "seeds": plan.seeds, "learning_rates": plan.learning_rates,
             "search": a.search, "scheduler": a.scheduler, "early_stop_scope": a.early_stop_scope,
             "preset": a.preset or "", **{k: v for k, v in plan.base.items()}})
    else:
        exp_dir = resume_dir
        parent_id = json.loads((exp_dir / SIDECAR).read_text())["parent_run_id"]
        client.update_run(parent_id, "RUNNING")
        print(f"resuming {exp_dir} (MLflow parent run {parent_id})")

    gpus = a.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, arms=plan.ablation.arms, root=str(exp_dir)),
        {"cpu": a.cpus_per_trial, "gpu": gpus})
    callback = MlflowTrials(a.tracking_uri, experiment_id, parent_id, plan.ablation.arms, str(exp_dir))
    run_config = tune.RunConfig(name=exp_dir.name, storage_path=str(storage), callbacks=[callback],
                                failure_config=tune.FailureConfig(max_failures=a.max_failures),
                                verbose=1)
    constant = {**plan.base, "_cpus": a.cpus_per_trial}
    if a.search == "optuna":
        per_arm = a.num_samples or len(plan.seeds) * len(plan.learning_rates)
        search_alg = ArmBalancedOptuna(list(plan.ablation.arms), plan.seeds, plan.lr_range, per_arm)
        param_space = constant
        num_samples = per_arm * len(plan.ablation.arms)
    else:
        search_alg = None
        param_space = {**constant, "arm": tune.grid_search(list(plan.ablation.arms)),
                       "seed": tune.grid_search(plan.seeds), "learning_rate": tune.grid_search(plan.learning_rates)}
        num_samples = a.num_samples or 1
    tune_config = tune.TuneConfig(metric=tracking.ID_ACC, mode="max", scheduler=_scheduler(plan),
                                  search_alg=search_alg, num_samples=num_samples,
                                  max_concurrent_trials=a.max_concurrent,
                                  # NOTE: every trial asks for the same resources, so a finished trial's worker
                                  # (torch, transformers imported; data loaded) runs the next one.
                                  reuse_actors=True)
    all_done = False
    try:
        if resume_dir is not None and tune.Tuner.can_restore(str(exp_dir)):
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
        grid = tuner.fit()
        results = []
        for r in grid:
            if r.metrics and r.config:
                results.append({**r.metrics, "arm": r.config.get("arm"),
                                "learning_rate": r.config.get("learning_rate")})
        all_done = grid.num_terminated + grid.num_errors >= n_trials
        print("\nper arm, completed trials (learning rate chosen on mean id_acc over seeds):")
        print(summarize(results, plan.base["epochs"]))
        failed = sum(1 for r in grid if r.error is not None)
        if failed:
            print(f"{failed} trial(s) failed; their MLflow runs hold the error")
    finally:
        try:
            close_runs(client, experiment_id, parent_id, all_done)
        except Exception as e:
            log.warning("could not close MLflow runs (%s); run python -m emoe.sync after the server is back", e)
    uri = a.tracking_uri
    print(f"\nMLflow: mlflow ui --backend-store-uri {uri}   (experiment {plan.experiment}, parent run {parent_id})"
          if uri.startswith("sqlite") else f"\nMLflow: {uri} (experiment {plan.experiment}, parent run {parent_id})")
    if not all_done:
        print(f"sweep incomplete; continue with: {sys.argv[0]} --resume {exp_dir}")
    return 0


def main(ablation: Ablation) -> None:
    sys.exit(run_sweep(ablation))
