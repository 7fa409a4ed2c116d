"""The EMoE FFN: keeps the intermediate activations of each token's top-k experts and zeroes the rest.

``EmoeFFN`` takes the place of the FFN's value (second) projection and wraps it, so the mask acts on the true
intermediate activations ``h = act(keys x)`` (or ``act(gate x) * up x``) of any architecture. A forward pre-hook on
the key (first) projection sees the FFN input ``x`` and routes it (``emoe.routing.route``: ``scores = x @ G.T`` in
fp32, top-k experts per token). No parameter is added (except by the learned gates, and ``expert_bias='per_expert'``:
each expert's copy of the output bias); the output projection and its bias are unchanged.

Two executions, equal within float tolerance:
- ``masked`` (default; training and inference): the full FFN runs and the mask zeroes the unselected neurons.
- ``sparse`` (inference): each token computes only its top-k experts' neurons (``emoe.sparse``).
"""

from __future__ import annotations

import torch
from torch import nn

from emoe.architectures import key_matrix, value_matrix
from emoe.gating import GATES
from emoe.routing import Routing, active_neurons, route
from emoe.sparse import SparseExecution


EXECUTIONS = ("masked", "sparse")


def with_shared(routed: Routing, logits: torch.Tensor, shared: int) -> Routing:
    """A routing over the routed experts (numbered from 0) as one over all: the shared experts 0..shared-1 kept by
    every token with weight 1, the routed ones shifted by ``shared``."""
    lead = routed.experts.shape[:-1]
    always = torch.arange(shared, device=routed.experts.device).expand(*lead, shared)
    tokens = routed.experts[..., 0].numel()
    return Routing(logits.float(), torch.cat([always, routed.experts + shared], -1),
                   torch.cat([torch.ones_like(always, dtype=routed.weights.dtype), routed.weights], -1),
                   torch.cat([torch.full((shared,), tokens, device=routed.counts.device), routed.counts]),
                   routed.bias_share, routed.aux_loss)


def load_entropy(load: torch.Tensor) -> float:
    """Entropy (nats) of expert loads (any non-negative weights, normalised here): log(N) when balanced."""
    p = load / load.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


class EmoeFFN(nn.Module):
    """Wraps one FFN's value projection (``self.values``) and routes tokens over ``num_experts`` experts.

    Attributes:
        labels: ``[d_ff]`` expert of each neuron (a buffer, saved in the state dict).
        last_load: ``[num_experts]`` share of the kept selections each expert got in the last forward pass.
        aux_loss: the load-importance loss of the last training forward pass (None unless asked for).
        bypass: when True the layer is its dense FFN (every expert on, no routing): ``emoe.set_bypass``.
    """

    def __init__(self, keys_proj: nn.Module, values_proj: nn.Module, labels: torch.Tensor, gate: str,
                 num_experts: int, top_k: int, seed: int = 0, transposed: bool = False, block: int | None = None,
                 up_proj: nn.Module | None = None, capacity_factor: float | None = None, gate_noise: float = 0.0,
                 expert_dropout: float = 0.0, aux: bool = False, expert_selection: str = "top",
                 expert_bias: str = "shared", shared: int = 0, activation: nn.Module | None = None,
                 tau: float = 0.5):
        super().__init__()
        self.values = values_proj
        # NOTE: a list keeps the key projection out of this module's children: it stays registered (once) where it
        # was, and this module reads its current weight for the gate.
        self._keys_proj = [keys_proj]
        self._up_proj = [up_proj] if up_proj is not None else []
        self.execution = "masked"
        self._sparse = SparseExecution(self)
        self.transposed = transposed
        self.num_experts = num_experts
        self.top_k = top_k
        self.block = block
        self.capacity_factor, self.gate_noise, self.aux = capacity_factor, gate_noise, aux
        self.expert_selection = expert_selection
        self.tau = tau  # expert_selection 'dynamic': keep the experts scoring >= (1 - tau) x the token's best
        self.bypass = False
        sizes = torch.bincount(torch.as_tensor(labels, dtype=torch.long).cpu(), minlength=num_experts)
        labels = torch.as_tensor(labels, dtype=torch.long, device=values_proj.weight.device)
        self.register_buffer("labels", labels)
        self.shared = shared  # experts 0..shared-1: always on, never routed (CMoE's shared experts)
        self.gate = GATES[gate](self.keys, self.values_matrix, labels, num_experts, seed)
        if hasattr(self.gate, "bind"):  # a router that reads the FFN's own activation (and up projection)
            self.gate.bind(activation, up_proj)
        bias = getattr(values_proj, "bias", None)
        self.expert_bias = None
        if expert_bias == "per_expert" and bias is not None:
            # The official code's experts each carry a trainable copy of bias / n (n experts per token): equal to the
            # dense bias at conversion, free to drift apart in training. The dense bias then gets no gradient.
            n = num_experts - top_k if expert_selection == "not_top" else top_k
            self.expert_bias = nn.Parameter(bias.detach().clone().unsqueeze(0).repeat(num_experts, 1) / n)
        self.gate_name = gate
        self.expert_dropout = nn.Dropout(expert_dropout)
        self._routing: Routing | None = None
        if expert_selection == "static":  # the pruning control's k experts (convert fixes them on calibration data)
            self.register_buffer("static_experts", torch.arange(top_k, device=labels.device))
        self.register_buffer("expert_sizes", sizes.to(labels.device), persistent=False)
        self.last_active: float | None = None
        self.last_chosen: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        keys_proj.register_forward_pre_hook(self._route)
        if expert_dropout:
            keys_proj.register_forward_hook(self._drop)

    @property
    def keys(self) -> torch.Tensor:  # [d_ff, d]
        return key_matrix(self._keys_proj[0], self.transposed)

    @property
    def values_matrix(self) -> torch.Tensor:  # [d_ff, d]
        return value_matrix(self.values, self.transposed)

    def gate_vectors(self) -> torch.Tensor:  # [num_experts, d]
        return self.gate.vectors(self.keys, self.values_matrix)

    def _route(self, module: nn.Module, args: tuple) -> None:
        if self.bypass:
            return
        logits = self.gate.logits(args[0], self.keys, self.values_matrix)  # [..., num_experts] fp32
        if self.shared:
            routed = route(logits[..., self.shared:], self.top_k, self.gate.combine, self.training, self.gate_noise,
                           self.capacity_factor, self.expert_selection, self.aux,
                           getattr(self, "static_experts", None), self.tau)
            routing = with_shared(routed, logits, self.shared)
        else:
            routing = route(logits, self.top_k, self.gate.combine, self.training, self.gate_noise,
                            self.capacity_factor, self.expert_selection, self.aux,
                            getattr(self, "static_experts", None), self.tau)
        self.last_load = routing.load
        self.last_active = active_neurons(routing, self.expert_sizes)
        self.last_chosen = None if self.training else routing.table() != 0  # [..., N]: evaluation's choices
        self.aux_loss = routing.aux_loss
        if self.execution == "sparse":
            self._sparse.group(routing)
        self._routing = routing

    def _drop(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # Expert dropout on the pre-activations (the key projection's output), before the activation; training only.
        return output if self.bypass else self.expert_dropout(output)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: [..., d_ff] intermediate activations
        if self.bypass:
            return self.values(h)
        routing, self._routing = self._routing, None
        if routing is None:
            raise RuntimeError("EmoeFFN ran without routing: its key projection must run first in the same forward")
        if self.execution == "sparse":
            return self._sparse.values(h, routing)
        # NOTE: the per-neuron mask as routing @ one-hot(labels): a thin matmul, several times faster on CPU than
        # gathering along the last dimension (index_select), and exact (one non-zero term per neuron).
        expand = nn.functional.one_hot(self.labels, self.num_experts).t().to(h.dtype)  # [num_experts, d_ff]
        # NOTE: not in place, even without autograd: hooks of the caller may hold the activations.
        out = self.values(h * (routing.table().to(h.dtype) @ expand))  # [..., d_out]
        return out + self.bias_correction(routing, out.dtype)

    def bias_correction(self, routing: Routing, dtype: torch.dtype) -> torch.Tensor | float:
        """What to add to the value projection's output (which holds the dense bias) for the token's own output bias.

        Shared bias: what it loses where a token keeps less than its whole share (dropped pairs, weights that sum to
        less than the number of experts), ``(bias_share - 1) * bias``; 0 when nothing is lost. Per-expert biases:
        ``sum_e weight_e * expert_bias_e - bias`` over the token's kept experts."""
        bias = getattr(self.values, "bias", None)
        if self.expert_bias is not None:
            own = routing.table().float() @ self.expert_bias.float()  # [..., d_out]
            return (own - bias.float()).to(dtype)
        if routing.bias_share is None or bias is None:
            return 0.0
        return ((routing.bias_share - 1).unsqueeze(-1) * bias.float()).to(dtype)

    @torch.no_grad()
    def fix_static_experts(self, inputs: torch.Tensor | None) -> None:
        """The pruning control's experts: the ``top_k`` experts the gate selects most often over the calibration
        tokens' FFN inputs ``[T, d]`` (ties to the lower index); None keeps the first k."""
        if inputs is None:
            return
        logits = self.gate.logits(inputs.to(self.labels.device), self.keys, self.values_matrix)[..., self.shared:]
        routed = self.num_experts - self.shared  # static picks among the routed experts (numbered from 0)
        counts = torch.bincount(logits.topk(self.top_k, dim=-1).indices.reshape(-1), minlength=routed)
        order = sorted(range(routed), key=lambda e: (-int(counts[e]), e))
        self.static_experts.copy_(torch.tensor(sorted(order[:self.top_k]), device=self.static_experts.device))

    def flops_per_token(self, active: float) -> float:
        """FFN FLOPs per token for ``active`` kept neurons, as a sparse execution computes them: each neuron's key
        (and up) row and value column, plus the router."""
        d, d_out = self.keys.shape[1], self.values_matrix.shape[1]
        per_neuron = 2 * d * (2 if self._up_proj else 1) + 2 * d_out
        return active * per_neuron + self.gate.flops(d)

    def set_execution(self, mode: str) -> None:
        """``masked`` or ``sparse`` (inference only: the module must be in eval mode when it runs)."""
        if mode not in EXECUTIONS:
            raise ValueError(f"unknown execution {mode!r}; valid choices: {', '.join(EXECUTIONS)}")
        self._sparse.detach()
        self._sparse = SparseExecution(self)
        if mode == "sparse":
            self._sparse.attach()
        self.execution = mode

    def load_entropy(self) -> float:
        """Entropy (nats) of the last forward's expert loads: log(N) when perfectly balanced."""
        return float("nan") if self.last_load is None else load_entropy(self.last_load)

    def extra_repr(self) -> str:
        return (f"block={self.block}, num_experts={self.num_experts}, top_k={self.top_k}, gate={self.gate_name}, "
                f"d_ff={self.labels.numel()}, capacity_factor={self.capacity_factor}, gate_noise={self.gate_noise}, "
                f"expert_selection={self.expert_selection}"
                f"{f', tau={self.tau}' if self.expert_selection == 'dynamic' else ''}, "
                f"expert_bias={'per_expert' if self.expert_bias is not None else 'shared'}")
