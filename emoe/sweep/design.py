"""The design of a sweep: its arms (each a set of knobs) and the presets a sweep starts from.

A sweep script declares only its design (``Ablation.over("clustering", [...])``); the rest of ``emoe.sweep`` runs it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

DENSE = "dense"


def _value_name(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One ablation: its name (``emoe-<name>`` experiment), its arms (each a name and the knobs it sets) and the swept
    factor (recorded as the sweep's ``emoe.factor`` tag for the analysis). Dict order is table order."""

    name: str
    arms: dict[str, dict[str, Any]]
    factor: str
    # knobs whose shared value (a preset's, a flag's) must be one of these: an ablation of one official script's
    # commands refuses the other script's presets (their learning rates, batch and precision are not its own)
    requires: dict[str, tuple] = dataclasses.field(default_factory=dict)
    hint: str = ""  # added to the refusal: where the other presets belong

    def __post_init__(self):
        if not self.arms:
            raise ValueError(f"ablation {self.name!r} has no arms")

    def check_shared(self, trial: dict[str, Any], preset: str | None) -> None:
        """``ValueError`` (one line) when a shared trial knob (a preset's, a flag's) breaks ``requires``."""
        for knob, allowed in self.requires.items():
            value = trial.get(knob, allowed[0])
            if value not in allowed:
                fits = [name for name in SETTINGS if PRESETS[name]["trial"].get(knob) in allowed]
                raise ValueError(f"ablation {self.name} runs the commands of {knob} {'/'.join(allowed)}; "
                                 f"{'preset ' + preset if preset else 'this sweep'} sets {knob} {value!r}: use "
                                 f"--preset {' or '.join(fits)}{self.hint}")

    @classmethod
    def over(cls, factor: str, values, name: str | None = None, baseline: bool = True) -> "Ablation":
        """One arm per value of one knob, plus the dense baseline arm; ``name`` defaults to the factor."""
        arms = {str(v): {factor: v} for v in values}
        if baseline:
            if DENSE in arms:
                raise ValueError(f"a value of {factor} is named {DENSE!r}, the baseline arm's name; declare the arms "
                                 "with names of their own")
            arms[DENSE] = {"method": DENSE}
        return cls(name or factor, arms, factor)

    @classmethod
    def cross(cls, factors: dict[str, list], name: str | None = None, baseline: bool = True) -> "Ablation":
        """One arm per combination of the factors' values (their product, first factor outermost), plus the dense
        baseline arm; an arm is named by its values joined with ``+`` (e.g. ``kmeans+centroid``)."""
        import itertools

        if not factors or any(not values for values in factors.values()):
            raise ValueError(f"a crossing needs at least one factor, each with values; got {dict(factors)}")
        names = list(factors)
        arms = {"+".join(_value_name(v) for v in combo): dict(zip(names, combo))
                for combo in itertools.product(*factors.values())}
        if len(arms) != math.prod(len(v) for v in factors.values()):
            raise ValueError(f"the factors' values give two arms the same name: {dict(factors)}")
        if baseline:
            if DENSE in arms:
                raise ValueError(f"an arm would be named {DENSE!r}, the baseline arm's name")
            arms[DENSE] = {"method": DENSE}
        return cls(name or "-x-".join(names), arms, ",".join(names))

    def describe(self, arm: str) -> str:
        """An arm and the knobs it sets, for error messages (a crossing's invalid pair is named)."""
        knobs = ", ".join(f"{k}={_value_name(v)}" for k, v in self.arms.get(arm, {}).items())
        return f"arm {arm!r} ({knobs})" if knobs else f"arm {arm!r}"

    @property
    def swept(self) -> set[str]:
        """The knobs an arm sets: the sweep owns them, a flag may not."""
        return {k for arm in self.arms.values() for k in arm}


# Knobs that a crossing may not take as a factor: the sweep owns them (--seeds, --learning-rates, --tasks).
NOT_FACTORS = ("seed", "learning_rate", "task", "data_dir", "model")


def parse_factor(text: str) -> tuple[str, list]:
    """``knob=v1,v2,...`` (a ``--factor`` flag) as ``(knob, [values])``, each value parsed by the knob's type; a
    ``layers`` value is one block list, so its values are separated by ``;`` (``layers=-1;-2,-1``)."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise ValueError(f"--factor expects KNOB=V1,V2,..., got {text!r}")
    name = name.strip().replace("-", "_")
    items = values.split(";") if name == "layers" else values.split(",")
    return name, [v.strip() for v in items if v.strip()]


def check_factors(factors: dict[str, list]) -> dict[str, list]:
    """Factors with known knob names and values of the knob's type and choices; ``ValueError`` (one line) if not."""
    from emoe import hparams

    out = {}
    for name, values in factors.items():
        if name in NOT_FACTORS or name not in hparams.KNOBS:
            valid = ", ".join(k for k in hparams.KNOBS if k not in NOT_FACTORS)
            hint = " (seeds, learning rates and tasks have flags of their own: --seeds, --learning-rates, --tasks)" \
                if name in NOT_FACTORS else ""
            raise ValueError(f"unknown factor {name!r}{hint}; valid choices: {valid}")
        knob, parsed = hparams.KNOBS[name], []
        for v in values if isinstance(values, (list, tuple)) else [values]:
            try:
                value = knob.type(v)
            except (TypeError, ValueError) as e:
                raise ValueError(f"factor {name}: bad value {v!r} ({e})") from None
            if knob.choices and value not in knob.choices:
                raise ValueError(f"factor {name}: unknown value {value!r}; valid choices: {', '.join(knob.choices)}")
            parsed.append(value)
        if len(set(map(repr, parsed))) != len(parsed):
            raise ValueError(f"factor {name} lists a value twice: {values}")
        out[name] = parsed
    return out


def crossing_from_file(path: str) -> tuple[dict[str, list], str | None, bool]:
    """A design file (TOML): ``name`` (optional), ``baseline`` (optional, default true) and a ``[factors]`` table
    of knob = [values]. Returns ``(factors, name, baseline)``."""
    import tomllib
    from pathlib import Path

    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"design file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"name", "baseline", "factors"})
    if unknown or not isinstance(data.get("factors"), dict):
        raise ValueError(f"{path}: expected keys name, baseline and a [factors] table; got {', '.join(data) or 'none'}")
    return dict(data["factors"]), data.get("name"), bool(data.get("baseline", True))


# Sweep settings a preset changes (fields of ``emoe.sweep.plan.SweepSettings``; ``trial`` holds trial knobs).
PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a laptop CPU: the packaged MiniLM and the packaged SST-2 slice, 2 seeds, 1 learning rate; OOD
    # sets at the training length, not GLUE-X's 512 (a CPU-sized check, not a reproduction).
    "demo": {"trial": {"model": "minilm", "task": "sst2", "data_dir": "demo", "max_train_samples": 1000,
                       "dev_samples": 200,
                       "max_eval_samples": 200, "max_length": 64, "batch_size": 16, "epochs": 1, "eval_steps": 32,
                       "ood_max_length": 64},
             "seeds": (0, 1), "learning_rates": (1e-4,), "cpus_per_trial": 2.0},
    # A multi-task sweep on a 2-core CPU in about an hour: the packaged MiniLM and the packaged slices of the GLUE-X
    # tasks whose train, validation and OOD data exist offline (emoe/demo_data), with the OOD sets that exist there
    # (not HANS, Twitter). 2 seeds, 1 learning rate.
    "glue-small": {"trial": {"model": "minilm", "data_dir": "demo", "max_train_samples": 1000, "dev_samples": 100,
                             "max_eval_samples": 200, "max_length": 96, "batch_size": 16, "epochs": 2,
                             "eval_steps": None, "ood_max_length": 96,
                             "ood_sets": ("imdb", "yelp", "amazon", "flipkart", "mrpc", "qqp", "rte", "scitail",
                                          "sick")},
                   "tasks": ("sst2", "rte", "mrpc", "stsb"), "seeds": (0, 1), "learning_rates": (1e-4,),
                   "cpus_per_trial": 2.0},
}


# The official settings (qiuzh20/EMoE Language/README.md): what both official scripts share (their EMoE conversion,
# the Tutel router's defaults, the protocol of search_glue_no_trainer.py and its LoRA twin), then each script's own.
# Every rate runs to its end or to patience (no ASHA), without gradient clipping; OOD sets are scored as the official
# test_glue_no_trainer.py does; data from the Hub; seeds 0, 1, 2 (the seed knob's grid).
_OFFICIAL = {"clustering": "constrained", "gate": "avg_keys", "cluster_seed": 0, "capacity_factor": 1.5,
             "gate_noise": 1.0, "expert_dropout": 0.1, "aux_loss_weight": 0.01, "expert_bias": "per_expert",
             "mlp_output_dropout": "official", "max_train_samples": None, "max_eval_samples": None,
             "max_length": 128, "eval_batch_size": 8, "epochs": None, "eval_steps": None, "weight_decay": 0.0,
             "warmup_ratio": 0.0, "keep_best": True, "patience": 4, "max_grad_norm": None, "ood_protocol": "emoe",
             "ood_max_length": None, "task": "sst2"}
# search_glue_no_trainer.py: batch 32, fp32 (no --use_fp16), learning rates {2,3,5}e-5, epochs 10 (3 for MNLI, QQP,
# QNLI: the task's cap), every parameter trained
_FULL = {**_OFFICIAL, "batch_size": 32, "grad_accum_steps": 1, "precision": "fp32", "regime": "full"}
# search_glue_no_trainer_peft.py: --use_fp16, learning rates {2,3,5}e-4, epochs 20 (5 for MNLI, QQP, QNLI: the LoRA
# regimes' cap), LoRA r 8; the README's GPT2-XL commands: batch 8 x 2 accumulation steps
_LORA = {**_OFFICIAL, "batch_size": 16, "grad_accum_steps": 2, "precision": "fp16", "regime": "lora_gates"}
FULL_RATES, LORA_RATES = (2e-5, 3e-5, 5e-5), (2e-4, 3e-4, 5e-4)

# One entry per official setting: (preset name, model, blocks, N, k, script). The README gives the BERT-base full
# fine-tuning and the GPT2-XL LoRA commands; the other settings are the paper's (GPT-2 and BERT-large full
# fine-tuning, BERT-large under LoRA) with the blocks chosen as the README's are (BERT-base block 10 of 12: the
# second from the end; GPT2-XL block 44 of 48) and the same N and k: an assumption the README states.
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"model": "bert-base-cased", "layers": (10,), "num_experts": 64, "top_k": 16, "script": "full"},
    "paper-bert-large": {"model": "bert-large-cased", "layers": (22,), "num_experts": 64, "top_k": 16,
                         "script": "full"},
    "paper-gpt2": {"model": "gpt2", "layers": (10,), "num_experts": 64, "top_k": 16, "script": "full"},
    "paper-bert-large-lora": {"model": "bert-large-cased", "layers": (22,), "num_experts": 64, "top_k": 32,
                              "script": "lora", "batch_size": 32, "grad_accum_steps": 1},
    "paper-gpt2-xl-lora": {"model": "gpt2-xl", "layers": (44,), "num_experts": 64, "top_k": 32, "script": "lora"},
}

# Each official command of a script: its name (a preset suffix and an arm of the comparison ablations) and the knobs
# it sets over its setting (EMoE, the setting itself, has none). NOTE: GMoE's N, k and R are the commands' own.
COMMANDS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {  # search_glue_no_trainer.py
        "dense": {"method": "dense"},  # vanilla fine-tuning
        "noisytune": {"method": "noisytune"},  # --noise_tuning 0.15
        "gmoe": {"method": "gmoe", "gate": "learned", "num_experts": 6, "top_k": 1, "expert_repeat": 6},
        "emoe": {"method": "emoe"},  # --to_MoE --gate_type top --one_score --key_gate
        "emoe-learn": {"method": "emoe", "gate": "learned"},  # --to_MoE --gate_type cosine_top
    },
    "lora": {  # search_glue_no_trainer_peft.py
        "dense": {"method": "dense", "regime": "lora"},  # vanilla LoRA
        "block": {"method": "dense", "regime": "lora_block"},  # LoRA + Block: --tune_moe_layers_only
        "gmoe": {"method": "gmoe", "gate": "learned", "num_experts": 8, "top_k": 2, "expert_repeat": 8,
                 "regime": "lora_block"},
        "emoe": {"method": "emoe", "regime": "lora_gates"},  # --tune_moe_layers_only --tune_gates_only --one_score
        "emoe-learn": {"method": "emoe", "gate": "learned", "regime": "lora_gates"},
    },
}


def _setting_preset(name: str, setting: dict[str, Any], command: dict[str, Any]) -> dict[str, Any]:
    setting = dict(setting)
    script = setting.pop("script")
    trial = {**(_FULL if script == "full" else _LORA), **setting, **command}
    return {"trial": trial, "learning_rates": FULL_RATES if script == "full" else LORA_RATES, "scheduler": "none"}


def official_presets() -> dict[str, dict[str, Any]]:
    """A preset per official command: ``<setting>`` for its EMoE command, ``<setting>-<command>`` for the others
    (``paper-gmoe``, ``paper-gpt2-xl-lora-block``, ...)."""
    out = {}
    for name, setting in SETTINGS.items():
        for command, knobs in COMMANDS[setting["script"]].items():
            out[name if command == "emoe" else f"{name}-{command}"] = _setting_preset(name, setting, knobs)
    return out


PRESETS.update(official_presets())
