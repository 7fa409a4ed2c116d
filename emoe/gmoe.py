"""GMoE: the FFN's neurons copied into experts of their own behind a router (the official EMoE code's GMoE command,
``--gate_type cosine_top --expert_repeat R``; Li et al., "Sparse Mixture-of-Experts are Domain Generalizable
Learners").

The construction (qiuzh20/EMoE ``Language/moe_utils.py``): the FFN's keys are partitioned into N clusters (the same
partition EMoE uses); expert i holds the neurons of clusters i, i+1, ..., i+R-1 (mod N), in the FFN's neuron order,
as its own trainable copy (first-projection rows and bias, value rows); each expert carries a copy of the output bias
divided by the experts a token keeps (``expert_bias='per_expert'``). With R = N every expert is a whole copy of the
FFN. Unlike EMoE, the experts do not share weights: they drift apart in training. The router is any gate of
``emoe.gating`` (GMoE's is ``learned``, the cosine router), scored on the experts' own keys, with the same routing
(``emoe.routing.route``: top-k, gate noise, capacity, load-importance loss).

Execution dispatches: each expert computes only the tokens routed to it (a loop over the N experts).
"""

from __future__ import annotations

import torch
from torch import nn

from emoe.gating import GATES
from emoe.routing import active_neurons, route


def expert_neurons(labels: torch.Tensor, num_experts: int, repeat: int) -> list[torch.Tensor]:
    """The neurons of each expert: those of clusters ``i .. i+repeat-1`` (mod N), in the FFN's own order."""
    out = []
    for i in range(num_experts):
        member = torch.zeros_like(labels, dtype=torch.bool)
        for j in range(repeat):
            member |= labels == (i + j) % num_experts
        out.append(member.nonzero().squeeze(1))
    return out


class GmoeFFN(nn.Module):
    """A GMoE layer in place of one FFN: input the FFN's input ``x [..., d]``, output the FFN's output.

    Attributes:
        labels: ``[d_ff]`` the partition of the FFN's neurons the experts were built from (a buffer).
        fc1_weight, fc1_bias, up_weight, up_bias, fc2_weight: every expert's rows, experts one after another
            (``expert_of`` says whose; ``offsets`` where each starts); ``fc2_weight`` holds value rows ``[M, d_out]``.
        expert_bias: ``[num_experts, d_out]`` each expert's output bias (``per_expert``), else ``bias``: the one
            output bias, which a token keeps in the share of its routing weights (``shared``).
        last_load, aux_loss, bypass: as ``emoe.layer.EmoeFFN``'s (bypass is not supported: GMoE has no dense form).
    """

    def __init__(self, keys: torch.Tensor, keys_bias: torch.Tensor | None, values: torch.Tensor,
                 values_bias: torch.Tensor | None, activation: nn.Module, labels: torch.Tensor, gate: str,
                 num_experts: int, top_k: int, repeat: int = 1, seed: int = 0, block: int | None = None,
                 up: torch.Tensor | None = None, up_bias: torch.Tensor | None = None,
                 capacity_factor: float | None = None, gate_noise: float = 0.0, expert_dropout: float = 0.0,
                 aux: bool = False, expert_selection: str = "top", expert_bias: str = "shared",
                 output_dropout: nn.Module | None = None):
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()  # the experts' neurons worked out on the CPU
        neurons = expert_neurons(labels, num_experts, repeat)
        index = torch.cat(neurons).to(keys.device)
        sizes = torch.tensor([len(n) for n in neurons])
        self.register_buffer("labels", labels.to(keys.device))
        self.register_buffer("expert_of", torch.repeat_interleave(torch.arange(num_experts), sizes).to(keys.device))
        self.offsets = [0, *torch.cumsum(sizes, 0).tolist()]

        def copy(rows):
            return None if rows is None else nn.Parameter(rows.detach()[index].clone())

        self.fc1_weight, self.fc1_bias = copy(keys), copy(keys_bias)
        self.up_weight, self.up_bias = copy(up), copy(up_bias)
        self.fc2_weight = copy(values)
        self.act = activation
        self.expert_dropout = nn.Dropout(expert_dropout)
        self.output_dropout = output_dropout
        self.num_experts, self.top_k, self.repeat, self.block = num_experts, top_k, repeat, block
        self.capacity_factor, self.gate_noise, self.aux = capacity_factor, gate_noise, aux
        self.expert_selection = expert_selection
        self.gate_name = gate
        self.gate = GATES[gate](self.fc1_weight, self.fc2_weight, self.expert_of, num_experts, seed)
        self.expert_bias = self.bias = None
        if values_bias is not None:
            n = num_experts - top_k if expert_selection == "not_top" else top_k
            if expert_bias == "per_expert":  # the official copy of bias / n per expert
                self.expert_bias = nn.Parameter(values_bias.detach().clone().unsqueeze(0).repeat(num_experts, 1) / n)
            else:
                self.bias = nn.Parameter(values_bias.detach().clone())
        self.bypass = False
        self.register_buffer("expert_sizes", sizes.to(keys.device), persistent=False)
        self.last_active: float | None = None
        self.last_chosen: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on the tokens ``x [t, d]`` (no output bias): ``act(x W1_e + b1_e) V_e``."""
        rows = slice(self.offsets[e], self.offsets[e + 1])
        bias = None if self.fc1_bias is None else self.fc1_bias[rows]
        h = self.act(self.expert_dropout(nn.functional.linear(x, self.fc1_weight[rows], bias)))
        if self.up_weight is not None:
            up_bias = None if self.up_bias is None else self.up_bias[rows]
            h = h * nn.functional.linear(x, self.up_weight[rows], up_bias)
        return h @ self.fc2_weight[rows].to(h.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            raise RuntimeError("a GMoE layer has no dense form to bypass to (eval_method needs method emoe)")
        lead, d = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, d)
        logits = self.gate.logits(flat, self.fc1_weight, self.fc2_weight)  # [T, N] fp32
        routing = route(logits, self.top_k, self.gate.combine, self.training, self.gate_noise,
                        self.capacity_factor, self.expert_selection, self.aux)
        self.last_load, self.aux_loss = routing.load, routing.aux_loss
        self.last_active = active_neurons(routing, self.expert_sizes)
        self.last_chosen = None if self.training else routing.table() != 0  # [..., N]: evaluation's choices
        table = routing.table()  # [T, N]: each token's weight per expert, 0 where unused or dropped
        out = torch.zeros(flat.shape[0], self.fc2_weight.shape[1], dtype=torch.float32, device=x.device)
        for e in range(self.num_experts):
            tokens = (table[:, e] != 0).nonzero().squeeze(1)
            if tokens.numel():
                y = self.expert(e, flat[tokens])
                out = out.index_add(0, tokens, y.float() * table[tokens, e, None])
        if self.expert_bias is not None:
            out = out + table @ self.expert_bias.float()
        elif self.bias is not None:
            share = routing.bias_share.reshape(-1, 1) if routing.bias_share is not None else 1.0
            out = out + share * self.bias.float()
        out = out.reshape(*lead, -1).to(x.dtype if x.is_floating_point() else out.dtype)
        return self.output_dropout(out) if self.output_dropout is not None else out

    def flops_per_token(self, active: float) -> float:
        """FFN FLOPs per token for ``active`` kept neurons (their first-projection, up and value rows) and the
        router."""
        d, d_out = self.fc1_weight.shape[1], self.fc2_weight.shape[1]
        return active * (2 * d * (2 if self.up_weight is not None else 1) + 2 * d_out) + self.gate.flops(d)

    def set_execution(self, mode: str) -> None:
        """GMoE always dispatches (each expert computes only its tokens): ``masked`` and ``sparse`` are the same."""
        from emoe.layer import EXECUTIONS

        if mode not in EXECUTIONS:
            raise ValueError(f"unknown execution {mode!r}; valid choices: {', '.join(EXECUTIONS)}")

    def extra_repr(self) -> str:
        return (f"block={self.block}, num_experts={self.num_experts}, top_k={self.top_k}, repeat={self.repeat}, "
                f"gate={self.gate_name}, expert_size={self.offsets[1]}, capacity_factor={self.capacity_factor}, "
                f"gate_noise={self.gate_noise}")
