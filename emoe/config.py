"""EmoeConfig: every construction choice of an EMoE model, validated against the registries."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

INITS = ("pretrained", "random")
METHODS = ("emoe", "dense")


def check_choice(kind: str, value: Any, choices) -> None:
    """Raise a one-line ``ValueError`` naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(map(str, choices))}")


@dataclasses.dataclass(frozen=True)
class EmoeConfig:
    """How one model is turned into emergent experts (or left dense).

    Args:
        init: ``pretrained`` weights or a ``random`` initialisation of the same architecture.
        method: ``emoe`` converts the chosen blocks; ``dense`` is the baseline (no conversion).
        clustering: key of ``emoe.CLUSTERING``: how a layer's neurons are split into experts.
        gate: key of ``emoe.GATES``: how each expert's gate vector is derived.
        num_experts: N, experts per converted layer.
        top_k: experts kept per token.
        layers: block indices to convert; negative counts from the end (default: the last two).
        seed: seeds clustering and random gates.
        aux_loss_weight: weight of the load-balancing loss of the ``learned`` gate (0 disables it).
    """

    init: str = "pretrained"
    method: str = "emoe"
    clustering: str = "constrained"
    gate: str = "avg_keys"
    num_experts: int = 16
    top_k: int = 4
    layers: tuple[int, ...] = (-2, -1)
    seed: int = 0
    aux_loss_weight: float = 0.0

    def __post_init__(self):
        from emoe.clustering import CLUSTERING
        from emoe.gating import GATES

        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        check_choice("init", self.init, INITS)
        check_choice("method", self.method, METHODS)
        check_choice("clustering", self.clustering, tuple(CLUSTERING))
        check_choice("gate", self.gate, tuple(GATES))
        for name in ("num_experts", "top_k", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.num_experts < 1:
            raise ValueError(f"num_experts={self.num_experts} must be >= 1")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}")
        if not self.layers:
            raise ValueError("layers is empty; give at least one block index (negative counts from the end)")
        if self.aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight} must be >= 0")
        if self.aux_loss_weight and self.gate != "learned":
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight} needs gate='learned', got gate={self.gate!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmoeConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown EmoeConfig field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EmoeConfig":
        return cls.from_dict(json.loads(text))
