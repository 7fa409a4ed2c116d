"""Routing as a pure function: each token's expert logits in, its experts, weights and kept slots out.

The logits come from the gate (``emoe.gating``), computed in fp32 with autocast off; everything here stays fp32, so
the choice of a bf16 model is the one its fp32 weights make. The layer (``emoe.layer``) consumes the result; nothing
here holds state. It implements the official EMoE code's router (qiuzh20/EMoE's bundled Tutel: ``moe_layer.py``,
``fast_dispatch.py``, ``losses.py``) with each of its departures from the idealised EMoE as a knob:

- ``gate_noise``: in training, ``logits + gate_noise * randn / num_experts`` before softmax and top-k;
- ``capacity_factor``: each expert takes at most ``n * int(capacity_factor * ceil(T / N))`` (token, expert) pairs of
  the T token positions (padding included; ``n`` experts per token); tokens claim slots in order of their largest
  softmax probability, every token's first choice before any second choice (batch-prioritised routing); a pair past
  capacity is dropped: the token loses that expert, and with it that expert's share of the output bias;
- ``aux``: Tutel's ``load_importance_loss``;
- ``selection``: ``top`` (the paper), ``bottom`` (the k lowest-scoring experts), ``not_top`` (all but the top k);
  ``dynamic``: D2DMoE's dynamic k (``MoeficationMoE.gate``, ``forward_mode='dynk_max'``): a token keeps every
  expert whose score reaches ``(1 - tau)`` times its largest score (at least one; k varies per token).
"""

from __future__ import annotations

import dataclasses
import math

import torch

# top (the paper), bottom, not_top (the paper's Fig. 3); and two controls of the same compute as top: static (the same
# k experts for every token: the k most often selected on a calibration set, a pruning control) and random (k experts
# drawn uniformly for each token, independent of the input); and dynamic (D2DMoE's: as many experts per token as
# reach (1 - tau) of its best score; for the gates whose scores are non-negative, emoe.gating.Gate.nonnegative)
SELECTIONS = ("top", "bottom", "not_top", "static", "random", "dynamic")
# How the kept experts' outputs are weighted: binary (EMoE's avg-k mask), softmax (EMoE-learn: the chosen experts'
# softmax probabilities renormalised to sum to 1), binary_st (binary forward, gradient through k * softmax of the
# chosen scores: a straight-through learned gate that starts as the binary mask).
COMBINES = ("binary", "softmax", "binary_st")


@dataclasses.dataclass
class Routing:
    """What the router decided for one forward pass (leading dimensions ``...`` are the tokens').

    Attributes:
        scores: ``[..., num_experts]`` fp32 logits the choice was made on (noisy in training with gate noise).
        experts: ``[..., n]`` chosen experts of each token (``n`` = top_k, or num_experts - top_k for not_top).
        weights: ``[..., n]`` fp32 weight of each chosen expert; 0 where the pair was dropped for capacity.
        counts: ``[num_experts]`` kept selections each expert got.
        bias_share: ``[...]`` share of the output bias each token keeps (1 unless pairs were dropped or the weights
            do not sum to ``n``): each expert carries ``bias / n`` and contributes it times its weight.
        aux_loss: Tutel's load-importance loss, when asked for, else None.
    """

    scores: torch.Tensor
    experts: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    bias_share: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.scores.shape[-1]

    @property
    def load(self) -> torch.Tensor:
        """``[num_experts]`` share of the kept selections each expert got (sums to 1)."""
        return self.counts.float() / self.counts.sum().clamp_min(1)

    def table(self) -> torch.Tensor:
        """``[..., num_experts]``: each token's weight per expert, 0 for the experts it does not use."""
        return torch.zeros_like(self.scores).scatter(-1, self.experts, self.weights)


def active_neurons(routing: Routing, sizes: torch.Tensor) -> float:
    """Mean over the tokens of the neurons each keeps: the sizes of its experts with a non-zero weight."""
    kept = (routing.table() != 0).float()
    return float((kept @ sizes.float().to(kept.device)).mean()) if kept.numel() else 0.0


def capacity_slots(probs: torch.Tensor, experts: torch.Tensor, capacity_factor: float) -> torch.Tensor:
    """Which (token, choice) pairs fit in their expert's capacity (batch-prioritised routing).

    Args:
        probs: ``[T, N]`` softmax probabilities (their maximum orders the tokens, highest first; ties by position).
        experts: ``[T, n]`` each token's chosen experts, in choice order (first choice first).
        capacity_factor: capacity = ``n * int(capacity_factor * ceil(T / N))`` pairs per expert.

    Returns:
        ``[T, n]`` bool: the pair got a slot.
    """
    num_tokens, num_experts = probs.shape
    n = experts.shape[1]
    capacity = n * int(capacity_factor * math.ceil(num_tokens / num_experts))
    order = torch.argsort(-probs.max(dim=-1).values, stable=True)  # tokens by priority
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(num_tokens, device=order.device)
    taken = torch.zeros(num_experts, dtype=torch.long, device=experts.device)  # slots used by earlier choices
    keep = torch.empty_like(experts, dtype=torch.bool)
    for j in range(n):  # all first choices, then all second choices, ...
        onehot = torch.nn.functional.one_hot(experts[order, j], num_experts)  # [T, N] in priority order
        slot = (onehot.cumsum(0) - 1).gather(1, experts[order, j, None]).squeeze(1) + taken[experts[order, j]]
        keep[:, j] = (slot < capacity)[rank_of]
        taken += onehot.sum(0)
    return keep


def load_importance_loss(clean_logits: torch.Tensor, kth_noisy_logit: torch.Tensor, gate_noise: float) -> torch.Tensor:
    """Tutel's ``load_importance_loss``: the mean of the squared coefficients of variation of the experts'
    importance (summed clean softmax probabilities) and load (summed probabilities that an expert is chosen under
    noise: ``Normal(0, gate_noise / N).cdf(p - threshold)``, with the token's k-th largest noisy logit as threshold,
    as Tutel writes it).

    Args:
        clean_logits: ``[T, N]`` logits without noise.
        kth_noisy_logit: ``[T]`` each token's k-th largest noisy logit.
    """
    num_experts = clean_logits.shape[1]
    probs = clean_logits.softmax(-1)
    importance = probs.sum(0)
    l_importance = importance.var() / (importance.mean() ** 2 + 1e-10)
    normal = torch.distributions.Normal(torch.zeros((), device=probs.device),
                                        torch.full((), gate_noise / num_experts, device=probs.device))
    load = normal.cdf(probs - kth_noisy_logit[:, None]).sum(0)
    l_load = load.var() / (load.mean() ** 2 + 1e-10)
    return (l_importance + l_load) / 2


def route(logits: torch.Tensor, top_k: int, combine: str = "binary", training: bool = False,
          gate_noise: float = 0.0, capacity_factor: float | None = None, selection: str = "top",
          aux: bool = False, static: torch.Tensor | None = None, tau: float = 0.5) -> Routing:
    """Choose each token's experts from its gate logits.

    Args:
        logits: ``[..., num_experts]`` fp32 gate logits (``x . G_i`` for the vector gates).
        top_k: k.
        combine: one of ``COMBINES``.
        training: noise and the aux loss act in training only.
        gate_noise: scale of the training noise (std ``gate_noise / num_experts``); 0 = none.
        capacity_factor: ``None`` = exact (no pair dropped), else the capacity rule of the module docstring.
        selection: one of ``SELECTIONS``.
        static: ``[k]`` the experts every token keeps, for ``selection='static'``.
        aux: compute Tutel's load-importance loss (training; needs ``gate_noise > 0``).
        tau: ``selection='dynamic'``'s threshold: the experts scoring at least ``(1 - tau)`` x the token's best are
            kept (``experts`` then lists all N, best first, and ``weights`` is 0 for the ones left out).
    """
    lead, num_experts = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, num_experts).float()  # [T, N]
    with torch.autocast(flat.device.type, enabled=False):
        noisy = flat + gate_noise * torch.randn_like(flat) / num_experts if training and gate_noise else flat
        top_values, top = noisy.topk(top_k, dim=-1)  # [T, k], best first
        if selection == "top":
            experts = top
        elif selection == "bottom":
            experts = (-noisy).topk(top_k, dim=-1).indices  # the k lowest, lowest first
        elif selection == "not_top":
            rest = noisy.scatter(-1, top, float("-inf"))
            experts = rest.topk(num_experts - top_k, dim=-1).indices
        elif selection == "static":
            if static is None or static.numel() != top_k:
                raise ValueError("expert_selection 'static' needs its k experts (fixed on a calibration set)")
            experts = static.to(flat.device).expand(flat.shape[0], top_k)
        elif selection == "random":  # uniform k of N per token, from the global generator alone: input-independent
            experts = torch.rand(flat.shape, device="cpu").topk(top_k, dim=-1).indices.to(flat.device)
        elif selection == "dynamic":
            if combine != "binary" or capacity_factor is not None:
                raise ValueError("expert_selection 'dynamic' keeps a variable number of experts with weight 1: it "
                                 f"needs a binary gate and exact routing (got combine {combine!r}, capacity_factor "
                                 f"{capacity_factor})")
            ranked = noisy.sort(dim=-1, descending=True)
            experts = ranked.indices  # [T, N], best first
            kept = ranked.values >= ranked.values[:, :1] * (1.0 - tau)  # D2DMoE's dynk_max
        else:
            raise ValueError(f"unknown expert_selection {selection!r}; valid choices: {', '.join(SELECTIONS)}")
        n = experts.shape[-1]
        probs = noisy.softmax(-1)
        chosen = probs.gather(-1, experts)  # [T, n]
        if combine == "binary":
            weights = kept.float() if selection == "dynamic" else torch.ones_like(chosen)
        elif combine == "softmax":
            weights = chosen / chosen.sum(-1, keepdim=True).clamp_min(torch.finfo(chosen.dtype).eps)
        elif combine == "binary_st":
            st = noisy.gather(-1, experts).softmax(-1) * n
            weights = 1.0 + (st - st.detach())  # exactly 1 forward; k * softmax's gradient backward
        else:
            raise ValueError(f"unknown combine {combine!r}; valid choices: {', '.join(COMBINES)}")
        bias_share = None
        if capacity_factor is not None:
            keep = capacity_slots(probs.detach(), experts, capacity_factor)
            weights = weights * keep
            counts = torch.bincount(experts[keep], minlength=num_experts)
        elif selection == "dynamic":
            counts = torch.bincount(experts[kept], minlength=num_experts)
        else:
            counts = torch.bincount(experts.reshape(-1), minlength=num_experts)
        if capacity_factor is not None or combine == "softmax":
            bias_share = (weights.sum(-1) / n).reshape(lead)
        aux_loss = load_importance_loss(flat, top_values[:, -1], gate_noise) if aux and training else None
    return Routing(noisy.reshape(*lead, num_experts), experts.reshape(*lead, n), weights.reshape(*lead, n), counts,
                   bias_share, aux_loss)
