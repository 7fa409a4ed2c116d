"""The EMoE FFN: keeps the intermediate activations of each token's top-k experts and zeroes the rest.

``EmoeFFN`` takes the place of the FFN's value (second) projection and wraps it, so the mask acts on the true
intermediate activations ``h = act(keys x)`` (or ``act(gate x) * up x``) of any architecture. A forward pre-hook on
the key (first) projection sees the FFN input ``x`` and routes it: ``scores = x @ G.T``, top-k experts per token.
No parameter is added (except by the ``learned`` gate); the output projection and its bias are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from emoe.architectures import key_matrix, value_matrix
from emoe.gating import GATES


def load_entropy(load: torch.Tensor) -> float:
    """Entropy (nats) of expert loads (any non-negative weights, normalised here): log(N) when balanced."""
    p = load / load.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


class EmoeFFN(nn.Module):
    """Wraps one FFN's value projection (``self.values``) and routes tokens over ``num_experts`` experts.

    Attributes:
        labels: ``[d_ff]`` expert of each neuron (a buffer, saved in the state dict).
        last_load: ``[num_experts]`` share of the top-k selections each expert got in the last forward pass.
        aux_loss: the learned gate's load-balancing loss of the last forward pass (None for other gates).
    """

    def __init__(self, keys_proj: nn.Module, values_proj: nn.Module, labels: torch.Tensor, gate: str,
                 num_experts: int, top_k: int, seed: int = 0, transposed: bool = False, block: int | None = None):
        super().__init__()
        self.values = values_proj
        # NOTE: a list keeps the key projection out of this module's children: it stays registered (once) where it
        # was, and this module reads its current weight for the gate.
        self._keys_proj = [keys_proj]
        self.transposed = transposed
        self.num_experts = num_experts
        self.top_k = top_k
        self.block = block
        labels = torch.as_tensor(labels, dtype=torch.long, device=values_proj.weight.device)
        self.register_buffer("labels", labels)
        self.gate = GATES[gate](self.keys, self.values_matrix, labels, num_experts, seed)
        self.gate_name = gate
        self._routing: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self._hook = keys_proj.register_forward_pre_hook(self._route)

    @property
    def keys(self) -> torch.Tensor:  # [d_ff, d]
        return key_matrix(self._keys_proj[0], self.transposed)

    @property
    def values_matrix(self) -> torch.Tensor:  # [d_ff, d]
        return value_matrix(self.values, self.transposed)

    def gate_vectors(self) -> torch.Tensor:  # [num_experts, d]
        return self.gate.vectors(self.keys, self.values_matrix)

    def _route(self, module: nn.Module, args: tuple) -> None:
        x = args[0]  # [..., d]
        weighted = self.gate.weighted
        with torch.set_grad_enabled(torch.is_grad_enabled() and weighted):
            scores = x @ self.gate_vectors().to(x.dtype).t()  # [..., num_experts]
            top_scores, top = scores.topk(self.top_k, dim=-1)  # [..., top_k]
            if weighted:
                # NOTE: softmax weights scaled by top_k, so equal scores reproduce the binary mask (and the dense
                # FFN when top_k == num_experts): fine-tuning starts from the pre-trained function.
                weights = top_scores.float().softmax(-1).to(x.dtype) * self.top_k
            else:
                weights = torch.ones_like(top_scores)
            routing = torch.zeros_like(scores).scatter(-1, top, weights)  # [..., num_experts]
        with torch.no_grad():
            counts = torch.bincount(top.reshape(-1), minlength=self.num_experts).float()
            self.last_load = counts / counts.sum()
        if weighted and self.training:
            probs = scores.float().softmax(-1).reshape(-1, self.num_experts).mean(0)
            # Switch-style balance: N * sum_i (share of selections_i) * (mean router probability_i); 1 when uniform.
            self.aux_loss = self.num_experts * (self.last_load * probs).sum()
        self._routing = routing

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: [..., d_ff] intermediate activations
        if self._routing is None:
            raise RuntimeError("EmoeFFN ran without routing: its key projection must run first in the same forward")
        routing, self._routing = self._routing, None
        # NOTE: the per-neuron mask as routing @ one-hot(labels): a thin matmul, several times faster on CPU than
        # gathering along the last dimension (index_select), and exact (one non-zero term per neuron).
        expand = nn.functional.one_hot(self.labels, self.num_experts).t().to(h.dtype)  # [num_experts, d_ff]
        h = h * (routing.to(h.dtype) @ expand)  # [..., d_ff]
        return self.values(h)

    def load_entropy(self) -> float:
        """Entropy (nats) of the last forward's expert loads: log(N) when perfectly balanced."""
        return float("nan") if self.last_load is None else load_entropy(self.last_load)

    def remove(self) -> nn.Module:
        """Detach the routing hook and give back the wrapped value projection."""
        self._hook.remove()
        return self.values

    def extra_repr(self) -> str:
        return (f"block={self.block}, num_experts={self.num_experts}, top_k={self.top_k}, gate={self.gate_name}, "
                f"d_ff={self.labels.numel()}")
