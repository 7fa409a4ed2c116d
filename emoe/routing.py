"""Routing as a pure function: the FFN input and the gate vectors in, each token's experts and weights out.

Computed in fp32 whatever the model's dtype (autocast is turned off inside), so the top-k choice of a bf16 model is
the choice its fp32 weights make. The layer (``emoe.layer``) consumes the result; nothing here holds state.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Routing:
    """What the router decided for one forward pass (leading dimensions ``...`` are the tokens').

    Attributes:
        scores: ``[..., num_experts]`` fp32 token-expert scores ``x . G_i``.
        experts: ``[..., top_k]`` chosen experts of each token, best first.
        weights: ``[..., top_k]`` fp32 weight of each chosen expert (1 for binary gates).
        counts: ``[num_experts]`` selections each expert got.
        aux_loss: the load-balancing loss (weighted gates in training), else None.
    """

    scores: torch.Tensor
    experts: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    aux_loss: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.scores.shape[-1]

    @property
    def load(self) -> torch.Tensor:
        """``[num_experts]`` share of the selections each expert got (sums to 1)."""
        return self.counts.float() / self.counts.sum()

    def table(self) -> torch.Tensor:
        """``[..., num_experts]``: each token's weight per expert, 0 for the experts it does not use."""
        return torch.zeros_like(self.scores).scatter(-1, self.experts, self.weights)


def route(x: torch.Tensor, gate_vectors: torch.Tensor, top_k: int, weighted: bool = False,
          training: bool = False) -> Routing:
    """Score every expert for every token and keep the top-k.

    Args:
        x: ``[..., d]`` the FFN input.
        gate_vectors: ``[num_experts, d]`` one vector per expert.
        top_k: experts kept per token.
        weighted: weight the kept experts by their softmaxed scores (the ``learned`` gate), scaled by ``top_k`` so
            that equal scores reproduce the binary mask (and the dense FFN when ``top_k == num_experts``); else
            every kept expert has weight 1.
        training: compute the load-balancing loss (weighted gates only).

    Returns:
        A ``Routing``; ``weights`` carry gradient to the scores only when ``weighted`` and grad mode is on.
    """
    num_experts = gate_vectors.shape[0]
    with torch.autocast(x.device.type, enabled=False), torch.set_grad_enabled(torch.is_grad_enabled() and weighted):
        scores = x.float() @ gate_vectors.float().t()  # [..., num_experts]
        top_scores, experts = scores.topk(top_k, dim=-1)  # [..., top_k]
        weights = top_scores.softmax(-1) * top_k if weighted else torch.ones_like(top_scores)
    counts = torch.bincount(experts.reshape(-1), minlength=num_experts)
    aux = None
    if weighted and training:
        with torch.autocast(x.device.type, enabled=False):
            probs = scores.softmax(-1).reshape(-1, num_experts).mean(0)  # [num_experts] mean router probability
            # Switch-style balance: N * sum_i (share of selections_i) * (mean router probability_i); 1 when uniform.
            aux = num_experts * (counts.float() / counts.sum() * probs).sum()
    return Routing(scores, experts, weights, counts, aux)
