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
                fits = [name for name in SETTINGS if all(PRESETS[name]["trial"].get(k, ok[0]) in ok
                                                         for k, ok in self.requires.items())]
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
    # The vision track offline in minutes: a tiny random ViT (emoe.convert.TINY_VIT) on the rotated-digits domains
    # (DomainBed's RotatedMNIST construction on scikit-learn's digits), every held-out domain in turn, DomainBed's
    # optimiser (Adam, constant rate) for 600 steps, evaluated every 200; EMoE's blocks at the official positions
    # (the second and fourth from the end), N 8, k 2. A check of the machinery, not of the claim (random weights).
    "vision-demo": {"trial": {"model": "tiny-vit", "num_experts": 8, "top_k": 2, "layers": (-4, -2),
                              "batch_size": 30, "max_steps": 600, "eval_steps": 200, "optimizer": "adam",
                              "lr_schedule": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0, "keep_best": True,
                              "max_grad_norm": None, "calibration_samples": 128},
                    "tasks": ("rotated_digits",), "seeds": (0, 1), "learning_rates": (1e-3,), "cpus_per_trial": 1.0},
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
# The official vision code (qiuzh20/EMoE Vision/, GMoE's DomainBed fork; its README's ViT-S commands): DeiT at 224
# pixels, DomainBed's train.py (Adam, no schedule, 5001 steps, a checkpoint every 300, batch 32 per training domain:
# 96 over PACS's three), its training-domain validation (keep_best on id_score), the EMoE router's settings as for
# text (capacity 1.5, gate noise 1.0, expert dropout 0.1, aux 0.01), PACS's learning rate and weight decay
# (hparams_registry.py; the other datasets' are in emoe.vision.DATASETS, printed by the dry run), seeds 0, 1, 2
# (n_trials 3), one hyperparameter setting (n_hparams 1).
_VISION = {"clustering": "constrained", "gate": "avg_keys", "cluster_seed": 0, "capacity_factor": 1.5,
           "gate_noise": 1.0, "expert_dropout": 0.1, "aux_loss_weight": 0.01, "expert_bias": "per_expert",
           "max_train_samples": None, "max_eval_samples": None, "batch_size": 96, "grad_accum_steps": 1,
           "max_steps": 5001, "eval_steps": 300, "optimizer": "adam", "lr_schedule": "constant", "warmup_ratio": 0.0,
           "weight_decay": 1e-6, "keep_best": True, "patience": None, "max_grad_norm": None, "precision": "fp32",
           "eval_batch_size": 64, "data_augmentation": True, "regime": "full"}
VISION_RATES = (3e-5,)  # PACS's (hparams_registry.py: GMOE on PACS and VLCS 3e-5, OfficeHome 1e-5, TerraInc 5e-5)

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
    # the vision README's EMoE command: MoE_from_ffn, router top, one_score_gate, num_experts 24, topk 4, num_inter 2
    # (every_moe: the last two alternating blocks of 12, 8 and 10); DeiT-S / DeiT-B (vit_type small / base)
    "paper-vit-s": {"model": "facebook/deit-small-patch16-224", "layers": (-4, -2), "num_experts": 24, "top_k": 4,
                    "script": "vision"},
    "paper-vit-b": {"model": "facebook/deit-base-patch16-224", "layers": (-4, -2), "num_experts": 24, "top_k": 4,
                    "script": "vision"},
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
    "vision": {  # the vision README's three commands (DomainBed's train.py, --algorithm GMOE)
        "dense": {"method": "dense"},  # vanilla_ViT
        # GMoE: num_experts 6 (full copies of the pre-trained FFN), topk 2, num_inter 1 (block 10), cosine router
        "gmoe": {"method": "gmoe", "gate": "learned", "num_experts": 6, "top_k": 2, "expert_repeat": 6,
                 "layers": (-2,)},
        "emoe": {"method": "emoe"},  # MoE_from_ffn, router top, one_score_gate
    },
}


def _setting_preset(name: str, setting: dict[str, Any], command: dict[str, Any]) -> dict[str, Any]:
    setting = dict(setting)
    script = setting.pop("script")
    if script == "vision":
        return {"trial": {**_VISION, **setting, **command}, "learning_rates": VISION_RATES, "scheduler": "none",
                "tasks": ("pacs",), "seeds": (0, 1, 2)}
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
