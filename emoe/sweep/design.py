"""The design of a sweep: its arms (each a set of knobs) and the presets a sweep starts from.

A sweep script declares only its design (``Ablation.over("clustering", [...])``); the rest of ``emoe.sweep`` runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DENSE = "dense"


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

    @property
    def swept(self) -> set[str]:
        """The knobs an arm sets: the sweep owns them, a flag may not."""
        return {k for arm in self.arms.values() for k in arm}


# Sweep settings a preset changes (fields of ``emoe.sweep.plan.SweepSettings``; ``trial`` holds trial knobs).
PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a laptop CPU: the packaged MiniLM and the packaged SST-2 slice, 2 seeds, 1 learning rate.
    "demo": {"trial": {"model": "minilm", "task": "sst2", "data_dir": "demo", "max_train_samples": 1000,
                       "max_eval_samples": 200, "max_length": 64, "batch_size": 16, "epochs": 1, "eval_steps": 32},
             "seeds": (0, 1), "learning_rates": (1e-4,), "cpus_per_trial": 2.0},
    # The official EMoE command (qiuzh20/EMoE Language/README.md, search_glue_no_trainer.py) for BERT-base, data
    # from the Hub; seeds and learning rates: the knobs' grids, which are the official ones (3 x 3).
    "paper": {"trial": {"model": "bert-base-cased", "task": "sst2", "layers": (10,), "num_experts": 64, "top_k": 16,
                        "clustering": "constrained", "gate": "avg_keys", "cluster_seed": 0, "capacity_factor": 1.5,
                        "gate_noise": 1.0, "expert_dropout": 0.1, "aux_loss_weight": 0.01,
                        "max_train_samples": None, "max_eval_samples": None, "max_length": 128, "batch_size": 32,
                        "eval_batch_size": 8, "epochs": 10, "eval_steps": None, "weight_decay": 0.0,
                        "warmup_ratio": 0.0, "keep_best": True, "patience": 4}},
}
