"""Gate derivations: one registry entry per way of deriving expert i's gate vector G_i (token score = x . G_i).

Every gate is a small module built from the layer's current keys and values (both ``[d_ff, d]``: one row per
neuron) and the partition ``labels``; ``vectors(keys, values)`` gives ``G`` ``[num_experts, d]`` for a forward pass.
"""

from __future__ import annotations

import torch
from torch import nn


def expert_means(rows: torch.Tensor, labels: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Mean of the rows of each expert. rows: [d_ff, d], labels: [d_ff] -> [num_experts, d]."""
    sums = torch.zeros(num_experts, rows.shape[1], dtype=rows.dtype, device=rows.device)
    sums.index_add_(0, labels, rows)
    counts = torch.bincount(labels, minlength=num_experts).clamp_min(1).to(rows.dtype)
    return sums / counts[:, None]


class Gate(nn.Module):
    """Base gate. ``weighted`` gates weight the top-k experts by softmaxed scores; the others keep a binary mask."""

    weighted = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, labels: torch.Tensor, num_experts: int, seed: int):
        super().__init__()
        self.num_experts = num_experts
        self.register_buffer("labels", labels, persistent=False)

    def vectors(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AvgKeysGate(Gate):
    """The paper's avg-k: mean of the expert's current (raw) key rows, so the gate follows fine-tuning."""

    def vectors(self, keys, values):
        return expert_means(keys.detach(), self.labels, self.num_experts)


class AvgValuesGate(Gate):
    """Mean of the expert's current value vectors (the second projection's columns its neurons write to)."""

    def vectors(self, keys, values):
        return expert_means(values.detach(), self.labels, self.num_experts)


class FixedGate(Gate):
    """Gate vectors fixed at construction and never trained (a buffer)."""

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        self.register_buffer("gate_vectors", self.initial_vectors(keys.detach(), labels, num_experts, seed))

    def initial_vectors(self, keys, labels, num_experts, seed) -> torch.Tensor:
        raise NotImplementedError

    def vectors(self, keys, values):
        return self.gate_vectors


class CentroidGate(FixedGate):
    """The clustering's centroid: mean of the expert's L2-normalised keys at construction."""

    def initial_vectors(self, keys, labels, num_experts, seed):
        return expert_means(nn.functional.normalize(keys, dim=1), labels, num_experts)


class RandomGate(FixedGate):
    """Seeded random Gaussian gate vectors."""

    def initial_vectors(self, keys, labels, num_experts, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(num_experts, keys.shape[1], generator=g).to(keys.dtype).to(keys.device)


class LearnedGate(Gate):
    """EMoE-learn: a trainable gate initialised from avg-k; the top-k experts are weighted by softmaxed scores."""

    weighted = True

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        self.weight = nn.Parameter(expert_means(keys.detach().clone(), labels, num_experts))

    def vectors(self, keys, values):
        return self.weight


GATES: dict[str, type[Gate]] = {
    "avg_keys": AvgKeysGate,
    "centroid": CentroidGate,
    "avg_values": AvgValuesGate,
    "random": RandomGate,
    "learned": LearnedGate,
}
