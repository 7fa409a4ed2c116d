"""Every knob of a trial, declared once: name, default, type, help, valid range and, where a sweep varies it, its
search domain.

Defaults, the CLIs' flags (a bool knob: ``--name`` / ``--no-name``) and help strings, the range checks, the sweeps'
seed and learning-rate grids and the Optuna range all derive from these declarations (DomainBed's
``hparams_registry`` shape). The EMoE construction knobs take their defaults and ranges from ``EmoeConfig``; a trial
config is the flat dict of all of them (every key becomes an MLflow param).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable

from emoe.config import EmoeConfig, Interval


def _int_tuple(text) -> tuple[int, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(int(i) for i in text)
    try:
        return tuple(int(i) for i in str(text).split(",") if i.strip())
    except ValueError:
        raise ValueError(f"layers must be comma-separated block indices such as -2,-1; got {text!r}") from None


def _optional_int(text):
    return None if text in (None, "", "none", "None") else int(text)


def _optional_str(text):
    return None if text in (None, "", "none", "None") else str(text)


def _optional_float(text):
    return None if text in (None, "", "none", "None") else float(text)


def _optional_names(text):
    """Comma-separated names (or a list) as a tuple; none/empty = None (all)."""
    if text is None or text in ("", "none", "None"):
        return None
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return tuple(str(i).strip() for i in items if str(i).strip())


NULLABLE = (_optional_int, _optional_str, _optional_float, _optional_names)


def _cluster_seed(text):
    return "trial" if text == "trial" else int(text)


def _bool(text) -> bool:
    if isinstance(text, bool):
        return text
    if str(text).lower() in ("true", "1", "yes", "on"):
        return True
    if str(text).lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


EVAL_METHODS = ("same", "dense", "emoe")
NOISYTUNE_LEVEL = 0.15  # the official --noise_tuning of the README's noisy-tuning command
# Knobs added after the first sweeps were recorded: at their default they stay out of a cell's hash
# (emoe.tracking.records.cell_name), so the cells of a sweep started before them keep their names and resume.
LATER_KNOBS = {"expert_repeat": 1, "noise_tuning": 0.0, "regime": "full", "lora_r": 8, "body_lr_ratio": None,
               "calibration_samples": 256, "shared_experts": 0, "dynamic_tau": 0.5, "data_seed": None,
               "dev_samples": None, "dev_seed": 0}


def default_epochs(task: str, regime: str = "full") -> int:
    """A task's official epoch cap under a training regime: the full fine-tuning script's (10; 3 for MNLI, QQP and
    QNLI) or the LoRA script's (``search_glue_no_trainer_peft.py``: 20; 5 for MNLI, QQP and QNLI)."""
    from emoe.data import get_task

    cap = get_task(task).epochs
    if regime == "full":
        return cap
    return 20 if cap == 10 else 5


@dataclasses.dataclass(frozen=True)
class Knob:
    """One trial knob. ``range``: its valid values (a numeric knob), checked by ``trial_config`` and shown in
    ``--help``; ``grid``: the values a sweep crosses by default (seeds, learning rates); ``log_range``: the
    (low, high) of a log-uniform search over it (``--search optuna``). A knob of type ``_bool`` is a flag pair,
    ``--name`` / ``--no-name``."""

    name: str
    default: Any
    help: str
    type: Callable = str
    choices: tuple | None = None
    range: Interval | None = None
    grid: tuple | None = None
    log_range: tuple[float, float] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def nullable(self) -> bool:
        return self.type in NULLABLE


def _emoe(name: str, help: str, type: Callable = str, choices=None, **domain) -> Knob:
    """A construction knob: its default and valid range are ``EmoeConfig``'s."""
    return Knob(name, getattr(EmoeConfig, name), help, type, choices, EmoeConfig.RANGES.get(name), **domain)


_POSITIVE, _COUNT = Interval(0, open_low=True), Interval(1)


def _knobs() -> dict[str, Knob]:
    from emoe.clustering import CLUSTERING
    from emoe.config import EXPERT_BIASES, INITS, METHODS, MLP_OUTPUT_DROPOUTS
    from emoe.data import TASKS
    from emoe.gating import GATES
    from emoe.protocols import OOD_PROTOCOLS
    from emoe.regimes import REGIMES
    from emoe.routing import SELECTIONS

    knobs = [
        Knob("task", "sst2", "ID task; its GLUE-X OOD sets, metrics and epoch cap come with it", str, tuple(TASKS)),
        Knob("ood_sets", None, "which of the task's OOD sets to evaluate, comma-separated; none = all of them",
             _optional_names),
        Knob("model", "minilm", "Hub id, local path, or 'minilm' (packaged all-MiniLM-L6-v2, offline)"),
        _emoe("init", "pre-trained weights or a random initialisation of the same architecture", str, INITS),
        _emoe("method", "emoe (the paper), dense (the baseline), gmoe (GMoE: experts copied from the FFN behind a "
              "router; with --expert-repeat) or noisytune (the dense model perturbed by NoisyTune before training)",
              str, METHODS),
        _emoe("clustering", "how neurons are split into experts", str, tuple(CLUSTERING)),
        _emoe("gate", "how each expert's gate vector is derived", str, tuple(GATES)),
        _emoe("num_experts", "experts per converted layer (N)", int),
        _emoe("top_k", "experts kept per token (k), at most num_experts", int),
        _emoe("layers", "blocks to convert, comma-separated, negative from the end", _int_tuple),
        _emoe("shared_experts", "CMoE's shared experts: experts 0..S-1 hold the neurons most often active on the "
              "calibration set, always on, never routed; top_k counts the routed ones (needs calibration data)",
              int),
        _emoe("expert_repeat", "GMoE only (official --expert_repeat): expert i copies clusters i..i+R-1 (mod N); "
              "R = N makes every expert a whole copy of the FFN (the official GMoE commands)", int),
        Knob("noise_tuning", None, "NoisyTune's noise level (official --noise_tuning): before training each "
             "parameter gets uniform noise in +-level*std/2 (its own std); none = the method's (0.15 for noisytune, "
             "0 otherwise); any method takes it (e.g. emoe with 0.15)", _optional_float, range=Interval(0)),
        Knob("regime", "full", "what trains: full (every parameter); lora (PEFT LoRA r, alpha 16, dropout 0.1 on the "
             "model's default targets, and the head; a converted block's FFN trains too, as in the official script); "
             "lora_block (LoRA plus the converted blocks in full: --tune_moe_layers_only); lora_gates (LoRA plus the "
             "converted blocks' learnable gates: --tune_gates_only)", str, REGIMES),
        Knob("lora_r", 8, "LoRA rank (official --lora_r 8); LoRA regimes only", int, range=_COUNT),
        Knob("body_lr_ratio", None, "learning rate of the parameters other than LoRA's and the head's, as a share "
             "of learning_rate; none = the regime's (1 under full; 0.1 under the LoRA regimes, as the official LoRA "
             "script's groups)", _optional_float, range=_POSITIVE),
        _emoe("cluster_seed", "seed of the clustering: an integer (one partition for every trial seed; official 0) or "
              "'trial' (re-clustered with each trial's seed)", _cluster_seed),
        _emoe("capacity_factor", "expert capacity factor (official 1.5): an expert takes at most "
              "top_k * int(factor * ceil(T / N)) of a batch's T tokens; none = exact, nothing dropped",
              _optional_float),
        _emoe("gate_noise", "training noise on the gate logits, gate_noise * randn / N (official 1.0)", float),
        _emoe("expert_dropout", "dropout on the experts' pre-activations, training only (official 0.1)", float),
        _emoe("aux_loss_weight", "weight of Tutel's load-importance loss, any gate (official 0.01; needs a gate "
              "noise)", float),
        _emoe("expert_selection", "which experts a token keeps: top k (the paper), bottom k, all but the top k; the "
              "controls of top's compute: static (the k experts most often selected on the calibration set, for "
              "every token: pruning) or random (k uniform experts per token, input-independent); dynamic: D2DMoE's "
              "dynamic k (gates norm_regression, analytic; --dynamic-tau)", str, SELECTIONS),
        _emoe("dynamic_tau", "D2DMoE's tau, for --expert-selection dynamic: a token keeps every expert scoring at "
              "least (1 - tau) x its best (1: every expert above 0)", float),
        _emoe("expert_bias", "shared: the dense output bias, each token keeping its experts' shares; per_expert "
              "(official): each expert its own trainable copy of bias / k", str, EXPERT_BIASES),
        _emoe("mlp_output_dropout", "keep: a converted block keeps its FFN's output dropout; official: as the "
              "official conversion, which replaces GPT-2's whole MLP and so drops its output dropout (resid_pdrop); "
              "BERT's lies outside the replaced layers and stays", str, MLP_OUTPUT_DROPOUTS),
        _emoe("seed", "seed of initialisation, dropout, gate noise and data order (and of the clustering with "
              "--cluster-seed trial)", int, grid=(0, 1, 2)),
        Knob("data_seed", None, "seed of the training data's order alone; none = the trial's seed (a variance study "
             "crosses it with seed and cluster_seed)", _optional_int, range=Interval(0, 2 ** 32 - 1)),
        # The paper's grid (qiuzh20/EMoE search_glue_no_trainer.py) and a log-uniform range around it.
        Knob("learning_rate", 5e-5, "peak AdamW learning rate", float, range=_POSITIVE, grid=(2e-5, 3e-5, 5e-5),
             log_range=(1e-5, 1e-4)),
        Knob("batch_size", 32, "examples per optimiser step (split over grad_accum_steps)", int, range=_COUNT),
        Knob("epochs", None, "training epochs; none = the task's official cap (10; 3 for MNLI, QQP and QNLI; under a "
             "LoRA regime the LoRA script's: 20; 5 for MNLI, QQP and QNLI)",
             _optional_int, range=_COUNT),
        Knob("max_steps", None, "optimiser steps in all, the training data cycled through as often as needed, "
             "evaluating every eval_steps and at the last step (DomainBed: 5001, every 300); none = epochs govern",
             _optional_int, range=_COUNT),
        Knob("optimizer", "adamw", "adamw (decoupled weight decay, biases and norms exempt: the EMoE scripts') or adam "
             "(torch.optim.Adam, weight decay an L2 term on every parameter: DomainBed's)", str, ("adamw", "adam")),
        Knob("lr_schedule", "linear", "linear: warm-up over warmup_ratio, then linear decay to 0 (the EMoE scripts'); "
             "constant: the learning rate throughout (DomainBed's)", str, ("linear", "constant")),
        Knob("data_augmentation", True, "image tasks: DomainBed's training transform on its photo datasets (random "
             "resized crop, flip, colour jitter, grayscale); off: resize only", _bool),
        Knob("max_length", 128, "tokens per example (longer ones are truncated)", int, range=_COUNT),
        Knob("max_train_samples", None, "fixed random subset of the training set (seed 0); none = all",
             _optional_int, range=_COUNT),
        Knob("dev_samples", None, "the clean selection rule's development split: this many training examples (a "
             "fixed random subset, --dev-seed; the same rows for every arm) held out of training and scored at each "
             "evaluation as dev_score; none = no development split (only the oracle rule)", _optional_int,
             range=_COUNT),
        Knob("dev_seed", 0, "seed of the development split's rows (fixed per sweep)", int,
             range=Interval(0, 2 ** 32 - 1)),
        Knob("calibration_samples", 256, "training examples (a fixed random subset) the data-driven constructions, "
             "routers and controls read: the coactivation and cmoe splits, shared experts, the analytic router, the "
             "static pruning control", int, range=_COUNT),
        Knob("max_eval_samples", None, "cap on each evaluation set (ID and OOD); none = all", _optional_int,
             range=_COUNT),
        Knob("eval_batch_size", None, "examples per evaluation batch (official: 8, which matters with a capacity: "
             "a token's experts depend on its batch); none = twice the training micro-batch", _optional_int,
             range=_COUNT),
        Knob("ood_protocol", "gluex", "how OOD sets are scored: gluex (GLUE-X: the ID task's metrics, its split "
             "concatenations, a task's sets weighted by size, max length 512) or emoe (the official EMoE OOD script: "
             "accuracy, one split per set, a plain mean, max length 128, batch 32)", str, tuple(OOD_PROTOCOLS)),
        Knob("ood_max_length", None, "tokens per OOD example; none = the OOD protocol's (gluex 512, emoe 128)",
             _optional_int, range=_COUNT),
        Knob("eval_steps", None, "evaluate every this many optimiser steps (and at each epoch end); none = per epoch",
             _optional_int, range=_COUNT),
        Knob("eval_method", "same", "same: evaluate as trained; dense: train EMoE, evaluate with every expert on; "
             "emoe: train with routing off (dense), evaluate as EMoE", str, EVAL_METHODS),
        Knob("keep_best", False, "report the metrics of the best ID evaluation so far (the official protocol keeps "
             "the best epoch) instead of the latest", _bool),
        Knob("patience", None, "evaluations without ID improvement before training stops (official: 4, with one "
             "evaluation per epoch); none = off", _optional_int, range=_COUNT),
        Knob("keep_model", "best", "best: keep the trial's best-ID model (float16, partitions and gates included) with "
             "its files, for re-evaluation on new sets without retraining; none: keep no model", str,
             ("best", "none")),
        Knob("warmup_ratio", 0.06, "share of steps with linear warm-up", float, range=Interval(0, 1)),
        Knob("weight_decay", 0.01, "AdamW weight decay", float, range=Interval(0)),
        Knob("grad_accum_steps", 1, "micro-batches per optimiser step", int, range=_COUNT),
        Knob("max_grad_norm", 1.0, "gradient clipping norm; none = no clipping (the official script never clips)",
             _optional_float, range=_POSITIVE),
        Knob("precision", "auto", "auto = bf16 (or fp16) autocast on GPU, fp32 on CPU; fp32 everywhere is the "
             "official command (its --use_fp16 is off)", str, ("auto", "fp32", "bf16", "fp16")),
        Knob("data_dir", None, "read the task from local JSON lines laid out as DIR/<set>/<split>.jsonl instead of "
             "the Hub; 'demo' = the packaged demo slice (SST-2 and its OOD sets, offline)", _optional_str),
    ]
    return {k.name: k for k in knobs}


KNOBS = _knobs()
EMOE_FIELDS = tuple(f.name for f in dataclasses.fields(EmoeConfig))


def defaults() -> dict[str, Any]:
    return {name: knob.default for name, knob in KNOBS.items()}


def trial_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full flat trial config: defaults, then ``overrides``; types coerced and every name checked."""
    cfg = defaults()
    extra = {}
    for key, value in (overrides or {}).items():
        if key in KNOBS:
            knob = KNOBS[key]
            cfg[key] = value if value is None and knob.default is None else knob.type(value)
            if knob.choices and cfg[key] not in knob.choices:
                raise ValueError(f"unknown {key} {cfg[key]!r}; valid choices: {', '.join(knob.choices)}")
        elif key == "ood":
            extra[key] = dict(value or {})
        else:
            raise ValueError(f"unknown trial config key {key!r}; valid keys: {', '.join(KNOBS)}, ood")
    cfg.update(extra)
    if cfg["epochs"] is None:
        cfg["epochs"] = default_epochs(cfg["task"], cfg["regime"])
    if cfg["noise_tuning"] is None:
        cfg["noise_tuning"] = NOISYTUNE_LEVEL if cfg["method"] == "noisytune" else 0.0
    emoe_config(cfg)  # validates the construction knobs (their ranges are EmoeConfig's)
    for name, knob in KNOBS.items():
        if knob.range is not None and name not in EMOE_FIELDS and cfg[name] is not None:
            knob.range.check(name, cfg[name], none="" if knob.nullable else None)
    if cfg["batch_size"] % cfg["grad_accum_steps"]:
        raise ValueError(f"batch_size={cfg['batch_size']} is not divisible by grad_accum_steps="
                         f"{cfg['grad_accum_steps']}")
    check_combination(cfg)
    if cfg["eval_method"] != "same" and cfg["method"] != "emoe":
        raise ValueError(f"eval_method={cfg['eval_method']!r} needs method='emoe' (it switches the converted layers "
                         f"between EMoE and dense), got method={cfg['method']!r}")
    return cfg


def check_combination(cfg: dict[str, Any]) -> None:
    """Refuse, in one line, the pairs of methods, regimes and their knobs that name no model of their own."""
    if cfg["method"] == "noisytune" and not cfg["noise_tuning"]:
        raise ValueError("method noisytune with noise_tuning=0 is the dense model: use method dense, or a noise level "
                         f"(official {NOISYTUNE_LEVEL})")
    if cfg["method"] == "dense" and cfg["noise_tuning"]:
        raise ValueError(f"method dense with noise_tuning={cfg['noise_tuning']} is NoisyTune: use method noisytune")


def from_param(name: str, text: str) -> Any:
    """A knob's value from its MLflow param (``emoe.tracking.param_value`` wrote it: a tuple as ``a,b``, None as
    ``None``, a bool as ``True``/``False``), parsed by the knob's own type: the inverse of the logging, exact for
    every knob (``tests/test_config.py`` checks each one)."""
    knob = KNOBS[name]
    if text in ("None", "") and (knob.default is None or knob.type in NULLABLE):
        return None
    return knob.type(text)


def config_from_params(params: dict[str, str]) -> dict[str, Any]:
    """A trial run's flat config from its MLflow params (strings; other params ignored), each knob parsed by
    ``from_param`` and the whole checked by ``trial_config``."""
    cfg = {k: from_param(k, v) for k, v in params.items() if k in KNOBS}
    if params.get("ood") not in (None, "", "None", "{}"):  # extra OOD sets, logged as JSON
        import json

        cfg["ood"] = json.loads(params["ood"])
    return trial_config(cfg)


def emoe_config(cfg: dict[str, Any]) -> EmoeConfig:
    return EmoeConfig(**{k: cfg[k] for k in EMOE_FIELDS if k in cfg})


class BooleanFlag(argparse.BooleanOptionalAction):
    """A bool knob's flags: ``--keep-best`` / ``--no-keep-best`` (argparse's ``BooleanOptionalAction``), and, as
    before it, ``--keep-best true|false``: the value is optional."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.nargs, self.metavar = "?", "true|false"

    def __call__(self, parser, namespace, values, option_string=None):
        negated = option_string.startswith("--no-")
        if negated and values is not None:
            raise argparse.ArgumentError(self, f"{option_string} takes no value (got {values!r})")
        try:
            value = True if values is None else _bool(values)
        except ValueError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        setattr(namespace, self.dest, value != negated)


def add_argument(parser, name: str, default=None, help: str | None = None) -> None:
    """The flag of knob ``name`` (a flag pair for a bool knob); its value is parsed by ``trial_config``. ``help``
    defaults to the knob's, with its choices, its valid range and ``default``."""
    knob = KNOBS[name]
    if help is None:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        choices = f" {{{','.join(knob.choices)}}}" if knob.choices else ""
        valid = f"; {name} {knob.range}{' or none' if knob.nullable else ''}" if knob.range else ""
        help = f"{knob.help}{choices}{valid} (default: {shown})"
    if knob.type is _bool:
        parser.add_argument(knob.flag, dest=name, default=None, action=BooleanFlag, help=help)
    else:
        parser.add_argument(knob.flag, dest=name, default=None, metavar=name.upper(), help=help)


def add_arguments(parser: argparse.ArgumentParser, names=None, defaults_from: dict | None = None) -> None:
    """One ``--flag`` per knob (default: all); help shows the default (``defaults_from``'s, else the knob's)."""
    for name in names or KNOBS:
        add_argument(parser, name, (defaults_from or {}).get(name, KNOBS[name].default))


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in KNOBS and value is not None}
