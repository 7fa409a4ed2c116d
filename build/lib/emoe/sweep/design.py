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

    def __post_init__(self):
        if not self.arms:
            raise ValueError(f"ablation {self.name!r} has no arms")

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
                       "max_eval_samples": 200, "max_length": 64, "batch_size": 16, "epochs": 1, "eval_steps": 32,
                       "ood_max_length": 64},
             "seeds": (0, 1), "learning_rates": (1e-4,), "cpus_per_trial": 2.0},
    # The official EMoE command (qiuzh20/EMoE Language/README.md, search_glue_no_trainer.py) for BERT-base, data
    # from the Hub; seeds and learning rates: the knobs' grids, which are the official ones (3 x 3); epochs: each
    # task's official cap (10; 3 for MNLI, QQP, QNLI). --tasks glue runs all eight GLUE-X tasks. Every rate runs to
    # its end or to patience (no ASHA), without gradient clipping, in fp32 (no --use_fp16); OOD sets are scored as
    # the official test_glue_no_trainer.py does. mlp_output_dropout official changes nothing for BERT; a GPT-2
    # converted under this preset loses its MLP output dropout as in gpt_to_MoE (the official GPT-2 runs themselves
    # are the LoRA script's, another protocol).
    "paper": {"trial": {"model": "bert-base-cased", "task": "sst2", "layers": (10,), "num_experts": 64, "top_k": 16,
                        "clustering": "constrained", "gate": "avg_keys", "cluster_seed": 0, "capacity_factor": 1.5,
                        "gate_noise": 1.0, "expert_dropout": 0.1, "aux_loss_weight": 0.01, "expert_bias": "per_expert",
                        "mlp_output_dropout": "official",
                        "max_train_samples": None, "max_eval_samples": None, "max_length": 128, "batch_size": 32,
                        "eval_batch_size": 8, "epochs": None, "eval_steps": None, "weight_decay": 0.0,
                        "warmup_ratio": 0.0, "keep_best": True, "patience": 4, "max_grad_norm": None,
                        "precision": "fp32", "ood_protocol": "emoe", "ood_max_length": None},
              "scheduler": "none"},
    # A multi-task sweep on a 2-core CPU in about an hour: the packaged MiniLM and the packaged slices of the GLUE-X
    # tasks whose train, validation and OOD data exist offline (emoe/demo_data), with the OOD sets that exist there
    # (not HANS, Twitter). 2 seeds, 1 learning rate.
    "glue-small": {"trial": {"model": "minilm", "data_dir": "demo", "max_train_samples": 1000,
                             "max_eval_samples": 200, "max_length": 96, "batch_size": 16, "epochs": 2,
                             "eval_steps": None, "ood_max_length": 96,
                             "ood_sets": ("imdb", "yelp", "amazon", "flipkart", "mrpc", "qqp", "rte", "scitail",
                                          "sick")},
                   "tasks": ("sst2", "rte", "mrpc", "stsb"), "seeds": (0, 1), "learning_rates": (1e-4,),
                   "cpus_per_trial": 2.0},
}
