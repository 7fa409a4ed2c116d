"""The plan of a sweep: typed settings, and every check that can fail before Ray starts.

``SweepSettings`` is what a sweep is asked to do (from Python, or from the CLI's flags); ``make_plan`` checks it
against the design and returns a ``Plan`` (the shared trial config, seeds, learning rates, trial count) or raises a
one-line ``ValueError``. ``check_model_and_data`` and ``check_resources`` run the checks that need the model, the
data or the machine.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from emoe import hparams
from emoe.config import Interval, check_fields
from emoe.sweep.design import PRESETS, Ablation
from emoe.tracking import schema

SEARCHES = ("grid", "optuna")
SCHEDULERS = ("asha", "none")
SCOPES = ("arm", "global")


@dataclasses.dataclass
class SweepSettings:
    """Everything a sweep is asked to do besides its design. ``None`` means the declared default: seeds and
    learning rates from the ``seed`` and ``learning_rate`` knobs' grids, the Optuna range from the learning-rate
    knob's ``log_range``, the experiment ``emoe-<design>``, GPUs per trial 1 if the cluster has GPUs."""

    trial: dict[str, Any] = dataclasses.field(default_factory=dict)  # knobs shared by every trial
    tasks: tuple[str, ...] | None = None  # ID tasks crossed with the arms ("glue": GLUE-X's eight); None: trial's task
    seeds: tuple[int, ...] | None = None
    learning_rates: tuple[float, ...] | None = None
    lr_range: tuple[float, float] | None = None
    search: str = "grid"  # grid | optuna (a log-uniform learning rate per arm)
    num_samples: int | None = None  # optuna: trials per arm and task (default seeds x learning rates)
    scheduler: str = "asha"  # asha | none
    early_stop_scope: str = "arm"  # arm (ASHA per arm and seed) | global
    grace_period: float | None = None  # ASHA: epochs before a trial can be stopped (default: epochs / 2)
    reduction_factor: float = 2.0
    address: str | None = None  # a Ray cluster; None: a local Ray
    num_gpus: float | None = None  # local Ray only: GPUs to declare (default: detected)
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    max_failures: int = 0
    checkpoint_every: int | None = 1  # evaluations between trial checkpoints (retries and resumes continue there)
    storage_path: str = "./ray_results"
    tracking_uri: str = schema.DEFAULT_TRACKING_URI
    experiment: str | None = None
    preset: str | None = None
    # the one primary analysis, declared now (emoe.analysis.stats.Primary): the report leads with it
    primary_metric: str = schema.OOD_SCORE
    primary_blocks: str | None = None  # None: tasks with several tasks, seeds with one
    baseline: str | None = None  # None: the dense arm
    alpha: float = 0.05
    planned_looks: int = 1  # looks at the results (the first run, each --extend) the primary family's alpha covers
    verbose: bool = False  # Tune's status tables on the console besides emoe's lines

    @classmethod
    def from_preset(cls, preset: str | None, **overrides) -> "SweepSettings":
        """A preset's settings (``emoe.sweep.design.PRESETS``), then ``overrides`` (their ``trial`` knobs merged)."""
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid choices: {', '.join(PRESETS)}")
        values = dict(PRESETS.get(preset, {}))
        preset_trial = dict(values.pop("trial", {}))
        if overrides.get("tasks") is not None:  # --tasks replaces the preset's task(s)
            preset_trial.pop("task", None)
            values.pop("tasks", None)
        trial = {**preset_trial, **overrides.pop("trial", {})}
        return cls(**{**values, **overrides, "trial": trial, "preset": preset})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSettings":
        check_fields(cls, data, "sweep setting(s)")
        out = cls(**data)
        for name in ("seeds", "learning_rates", "lr_range", "tasks"):
            if getattr(out, name) is not None:
                setattr(out, name, tuple(getattr(out, name)))
        return out


@dataclasses.dataclass
class Plan:
    """A checked sweep: the design, its settings, and what they resolve to."""

    design: Ablation
    settings: SweepSettings
    base: dict[str, Any]  # the trial config shared by every trial (no task, seed, learning_rate or arm knobs;
    #                       epochs None: each task's own cap)
    tasks: list[str]
    seeds: list[int]
    learning_rates: list[float]
    lr_range: tuple[float, float]
    experiment: str

    def trial(self, arm: str, seed: int, learning_rate: float, task: str | None = None) -> dict[str, Any]:
        """A cell's config. An arm's value ``"=<knob>"`` is that knob's value in the same config (the all-experts
        control's ``top_k = "=num_experts"``: k = N whatever N the preset sets)."""
        cfg = {**self.base, "task": task or self.tasks[0], **self.design.arms[arm], "seed": seed,
               "learning_rate": learning_rate}
        return {k: cfg[v[1:]] if isinstance(v, str) and v.startswith("=") and v[1:] in cfg else v
                for k, v in cfg.items()}

    def epochs(self, task: str) -> int:
        """A task's training epochs: ``--epochs`` if given, else the task's official cap under the sweep's regime
        (``emoe.hparams.default_epochs``; the trials' own configs hold their arm's)."""
        return self.base["epochs"] or hparams.default_epochs(task, self.base["regime"])

    def grid(self) -> list[tuple[str, str, int, float]]:
        """Every (task, arm, seed, learning rate) cell of the grid."""
        return [(t, a, s, lr) for t in self.tasks for a in self.design.arms for s in self.seeds
                for lr in self.learning_rates]

    @property
    def samples_per_arm(self) -> int:
        """Optuna: trials per arm and task."""
        return self.settings.num_samples or len(self.seeds) * len(self.learning_rates)

    @property
    def n_trials(self) -> int:
        if self.settings.search == "optuna":
            return self.samples_per_arm * len(self.design.arms) * len(self.tasks)
        return len(self.grid())


def make_plan(design: Ablation, settings: SweepSettings) -> Plan:
    """Check ``settings`` against ``design`` and the knobs' declarations. ``ValueError`` (one line) on bad input."""
    s = settings
    preset = PRESETS.get(s.preset, {}).get("trial", {})  # a preset may set a swept knob: the arms override it
    swept = sorted(k for k in design.swept & set(s.trial) if k not in preset or preset[k] != s.trial[k])
    if swept:
        raise ValueError(f"--{swept[0].replace('_', '-')} is swept by this ablation (arms: "
                         f"{', '.join(design.arms)}); drop the flag")
    for name, value, choices in (("search", s.search, SEARCHES), ("scheduler", s.scheduler, SCHEDULERS),
                                 ("early_stop_scope", s.early_stop_scope, SCOPES)):
        if value not in choices:
            raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    seeds = list(s.seeds if s.seeds is not None else hparams.KNOBS["seed"].grid)
    lrs = list(s.learning_rates if s.learning_rates is not None else hparams.KNOBS["learning_rate"].grid)
    lr_range = tuple(s.lr_range if s.lr_range is not None else hparams.KNOBS["learning_rate"].log_range)
    if not seeds or len(set(seeds)) != len(seeds) or any(seed not in hparams.KNOBS["seed"].range for seed in seeds):
        raise ValueError(f"--seeds must be distinct integers {hparams.KNOBS['seed'].range}, got {seeds}")
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"--learning-rates must be positive numbers, got {lrs}")
    if len(lr_range) != 2 or not 0 < lr_range[0] < lr_range[1]:
        raise ValueError(f"--lr-range must be LOW,HIGH with 0 < LOW < HIGH, got {list(lr_range)}")
    if s.num_samples is not None and s.num_samples < 1:
        raise ValueError(f"--num-samples={s.num_samples} must be >= 1")
    if s.num_samples is not None and s.num_samples > 1 and s.search == "grid":
        raise ValueError(f"--num-samples {s.num_samples} with --search grid would repeat each cell, which (same "
                         "seed, same config) is the same trial: add seeds with --seeds instead")
    if s.cpus_per_trial <= 0 or (s.gpus_per_trial is not None and s.gpus_per_trial < 0):
        raise ValueError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if s.gpus_per_trial and s.gpus_per_trial > 1 and s.gpus_per_trial != int(s.gpus_per_trial):
        raise ValueError(f"--gpus-per-trial={s.gpus_per_trial}: above 1 it must be a whole number")
    if s.max_concurrent is not None and s.max_concurrent < 1:
        raise ValueError(f"--max-concurrent={s.max_concurrent} must be >= 1")
    if s.checkpoint_every is not None and s.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every={s.checkpoint_every} must be >= 1 (or none)")
    if s.max_failures < 0:
        raise ValueError(f"--max-failures={s.max_failures} must be >= 0")
    for flag, value, valid in (("--reduction-factor", s.reduction_factor, Interval(1, open_low=True)),
                               ("--grace-period", s.grace_period, Interval(0, open_low=True)),
                               ("--num-gpus", s.num_gpus, Interval(0))):
        if value is not None:
            valid.check(flag, value)
    primary(s).check(flags=True)
    if s.baseline is not None and s.baseline not in design.arms:
        raise ValueError(f"--baseline {s.baseline!r} is not an arm of this ablation; valid choices: "
                         f"{', '.join(design.arms)}")
    design.check_shared(s.trial, s.preset)
    tasks = resolve_tasks(s.tasks, s.trial.get("task"))
    base = absolute_paths(hparams.trial_config({**s.trial, "task": tasks[0]}))
    base = {k: v for k, v in base.items() if k not in ("task", "seed", "learning_rate")}
    if s.trial.get("epochs") is None:
        base["epochs"] = None  # each task's own cap
    if s.trial.get("noise_tuning") is None:
        base["noise_tuning"] = None  # each arm's method's own (NoisyTune's 0.15, else none)
    from emoe.data import check_ood_sets

    check_ood_sets(tasks, base["ood_sets"], base.get("ood"))
    plan = Plan(design, s, base, tasks, seeds, lrs, lr_range, s.experiment or schema.experiment_name(design.name))
    for arm in design.arms:  # every arm's config is valid (names, k <= N, ...), on every task
        for task in tasks:
            try:
                hparams.trial_config(plan.trial(arm, seeds[0], lrs[0], task))
            except ValueError as e:
                raise ValueError(f"{design.describe(arm)}: {e}") from None
    return plan


def primary(settings: SweepSettings):
    """The sweep's declared primary analysis (``emoe.analysis.stats.Primary``)."""
    from emoe.analysis.stats import Primary

    s = settings
    return Primary(s.primary_metric, s.primary_blocks, s.baseline, s.alpha, s.planned_looks)


def primary_params(settings: SweepSettings) -> dict[str, Any]:
    """The primary analysis as the parent run's ``primary.*`` params (None as ``auto``)."""
    from emoe.tracking.records import declared_primary

    return {f"{schema.PRIMARY_PREFIX}{k}": v for k, v in declared_primary(settings.to_dict()).items()}


def resolve_tasks(tasks, task: str | None) -> list[str]:
    """``--tasks`` (names; ``glue`` for GLUE-X's eight, ``boss`` for BOSS's three; an image dataset for each of its
    held-out domains, ``domainbed`` for the paper's four datasets: ``emoe.vision.expand``) or, without it, the one
    ``--task``."""
    from emoe.boss import BOSS
    from emoe.data import GLUE, get_task
    from emoe.vision import expand

    if tasks and task is not None:
        raise ValueError("--task and --tasks both given; use --tasks alone (e.g. --tasks sst2,rte)")
    suites = {"glue": GLUE, "boss": BOSS}
    names = [n for t in (tasks or [task or hparams.KNOBS["task"].default]) for n in suites.get(t, expand(t))]
    for name in names:
        get_task(name)  # unknown task: its one line, with the valid choices
    if len(set(names)) != len(names):
        raise ValueError(f"--tasks lists a task twice: {','.join(names)}")
    return names


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """Local paths made absolute (aliases such as ``demo`` resolved): trials run in their own working directories,
    and on other nodes."""
    from emoe.data import resolve_data_dir

    cfg = dict(cfg)
    if cfg.get("data_dir"):
        cfg["data_dir"] = str(resolve_data_dir(cfg["data_dir"]).expanduser().resolve())
    if cfg.get("model") and Path(cfg["model"]).expanduser().exists():
        cfg["model"] = str(Path(cfg["model"]).expanduser().resolve())
    if cfg.get("ood"):
        cfg["ood"] = {k: str(Path(v).expanduser().resolve()) for k, v in cfg["ood"].items()}
    return cfg


@dataclasses.dataclass
class Workload:
    """What one trial computes, for the dry run's estimate: the model's size and the data's."""

    params: int  # parameters of the transformer blocks (what each token passes through)
    train_examples: int
    epochs: int
    eval_examples: int  # ID validation and every OOD set, after --max-eval-samples
    train_tokens_per_example: float  # padded, as batches of batch_size see them
    eval_tokens_per_example: float  # padded, in length-sorted batches
    ood_sets: tuple[str, ...] = ()
    total_params: int = 0  # every parameter (embeddings and head too): what a kept model or a checkpoint holds


def check_model_and_data(plan: Plan) -> dict[str, Workload]:
    """Model-dependent checks (block indices, N against d_ff) on a weightless copy, and every task's data (local
    files or the Hub: data that cannot be loaded is refused here, before Ray starts). Returns each task's workload."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from emoe.convert import IMAGE_MODEL_TYPES, auto_class, check_model, plan_conversion
    from emoe.data import get_task
    from emoe.hub import cache_only
    from emoe.train import load_trial_data

    name = plan.base["model"]
    path = check_model(name)
    try:
        with cache_only(path):  # the Hub unreachable: its cache at once, not after half a minute of retries
            config = AutoConfig.from_pretrained(path)
            image = config.model_type in IMAGE_MODEL_TYPES
            tokenizer = None if image else AutoTokenizer.from_pretrained(path)
    except Exception as e:  # OSError / ValueError / HTTP errors, depending on what is wrong
        raise ValueError(f"model {name!r} cannot be loaded ({str(e).strip().splitlines()[0][:200]})") from None
    mismatched = [t for t in plan.tasks if bool(get_task(t).image) != image]
    if mismatched:
        raise ValueError(f"--model {name} is {'an image' if image else 'a text'} model ({config.model_type}) but task "
                         f"{mismatched[0]} is {'a text' if image else 'an image'} task; image tasks take ViT or DeiT "
                         f"models (e.g. --model tiny-vit), text tasks text models")
    with torch.device("meta"):
        model = auto_class(config).from_config(config)
    for arm in plan.design.arms:
        cfg = hparams.trial_config(plan.trial(arm, plan.seeds[0], plan.learning_rates[0]))
        try:
            plan_conversion(model, hparams.emoe_config(cfg))
            check_regime(model, cfg)
        except ValueError as e:
            raise ValueError(f"{plan.design.describe(arm)}: {e}") from None
    params = sum(p.numel() for n, p in model.base_model.named_parameters() if "embeddings" not in n)
    out = {}
    for task in plan.tasks:
        cfg = hparams.trial_config(plan.trial(next(iter(plan.design.arms)), plan.seeds[0], plan.learning_rates[0],
                                              task))
        data = load_trial_data(cfg)
        epochs = cfg["max_steps"] * cfg["batch_size"] / len(data.train) if cfg["max_steps"] else cfg["epochs"]
        if image:  # every image is (size / patch)^2 patches and the class token
            side = config.image_size // config.patch_size
            lengths = {"train_tokens_per_example": side * side + 1.0, "eval_tokens_per_example": side * side + 1.0}
        else:
            lengths = _padded_lengths(data, tokenizer, cfg, config)
        out[task] = Workload(params=params, total_params=sum(p.numel() for p in model.parameters()),
                             train_examples=len(data.train), epochs=epochs,
                             eval_examples=len(data.validation) + sum(map(len, data.ood.values()))
                             + (len(data.oracle) if data.oracle is not None else 0),
                             ood_sets=tuple(data.ood), **lengths)
    return out


def trainable_parameters(plan: Plan, config=None) -> dict[str, tuple[int, int]]:
    """Each arm's trainable and total parameters, counted on a weightless copy of the model (``config``: its
    transformers config, else the plan's model's) converted and set up under the arm's regime as a trial would (what
    the official LoRA script prints with ``print_trainable_parameters``)."""
    import numpy as np
    import torch
    from transformers import AutoConfig

    from emoe.convert import auto_class, check_model, convert, plan_conversion
    from emoe.hub import cache_only
    from emoe.regimes import apply_regime

    if config is None:
        path = check_model(plan.base["model"])
        with cache_only(path):
            config = AutoConfig.from_pretrained(path)
    out = {}
    for arm in plan.design.arms:
        cfg = hparams.trial_config(plan.trial(arm, plan.seeds[0], plan.learning_rates[0]))
        with torch.device("meta"):
            model = auto_class(config).from_config(config)
        emoe_config = hparams.emoe_config(cfg)
        sizes = {p["block"]: p["keys"].shape[0] for p in plan_conversion(model, emoe_config)}
        convert(model, emoe_config, partitions={b: np.arange(d) * emoe_config.num_experts // d
                                                for b, d in sizes.items()})  # counting only: any partition
        model = apply_regime(model, cfg["regime"], cfg["lora_r"], cfg["layers"])
        out[arm] = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                    sum(p.numel() for p in model.parameters()))
    return out


def check_regime(model, cfg: dict[str, Any]) -> None:
    """A regime's checks on a (weightless) model: LoRA's targets exist for its type; ``lora_block``'s blocks exist."""
    from emoe.architectures import find_blocks
    from emoe.convert import resolve_blocks
    from emoe.regimes import lora_targets

    if cfg["regime"] == "full":
        return
    lora_targets(model)
    if cfg["regime"] == "lora_block":
        resolve_blocks(cfg["layers"], len(find_blocks(model)[1]))


def _padded_lengths(data, tokenizer, cfg: dict[str, Any], model_config=None, sample: int = 256) -> dict[str, float]:
    """Tokens per example as the trainer's batches see them (padded to the longest of each batch), on a sample."""
    import numpy as np

    from emoe.train import ood_max_length

    def lengths(ds, max_length):
        ds = ds.select(range(min(sample, len(ds))))
        enc = tokenizer(*[list(ds[f]) for f in data.task.text_fields], truncation=True, max_length=max_length)
        return np.array([len(x) for x in enc["input_ids"]])

    batch = cfg["batch_size"] // cfg["grad_accum_steps"]
    train = lengths(data.train, cfg["max_length"])
    padded = [chunk.max() for chunk in np.array_split(train, max(1, math.ceil(len(train) / batch)))]
    ood_length = ood_max_length(cfg, tokenizer, model_config)
    evals = np.sort(np.concatenate([lengths(data.validation, cfg["max_length"]),
                                    *(lengths(ds, ood_length) for ds in data.ood.values())]))
    return {"train_tokens_per_example": float(np.mean(padded)), "eval_tokens_per_example": float(evals.mean())}


def local_nodes(num_gpus: float | None) -> list[dict[str, float]]:
    """The resources a local Ray will have: this machine's CPUs (as Ray counts them) and GPUs."""
    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except Exception:  # a private helper: fall back on the OS's view
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if num_gpus is None:
        import torch

        num_gpus = float(torch.cuda.device_count())
    return [{"CPU": cpus, "GPU": float(num_gpus)}]


def check_resources(settings: SweepSettings, nodes: list[dict[str, float]], gpus_per_trial: float) -> None:
    """Refuse trials that ask for more CPUs or GPUs than the largest node has: Ray would keep them PENDING for ever.

    Args:
        nodes: each node's resources (``CPU``, ``GPU``), e.g. from ``ray.nodes()`` or ``local_nodes``.
    """
    where = "this machine" if settings.address is None else f"the largest node of the cluster at {settings.address}"
    for key, flag, asked in (("CPU", "--cpus-per-trial", settings.cpus_per_trial),
                             ("GPU", "--gpus-per-trial", gpus_per_trial)):
        largest = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if asked > largest + 1e-9:
            raise ValueError(f"{flag}={asked:g} asks for more {key}s than any node has ({where}: {largest:g} "
                             f"{key}s); no trial could ever start: lower {flag} to at most {largest:g}")
