"""The EMoE FFN: keeps the intermediate activations of each token's top-k experts and zeroes the rest.

``EmoeFFN`` takes the place of the FFN's value (second) projection and wraps it, so the mask acts on the true
intermediate activations ``h = act(keys x)`` (or ``act(gate x) * up x``) of any architecture. A forward pre-hook on
the key (first) projection sees the FFN input ``x`` and routes it: ``scores = x @ G.T``, top-k experts per token.
No parameter is added (except by the ``learned`` gate); the output projection and its bias are unchanged.

Two executions, equal within float tolerance:
- ``masked`` (default; training and inference): the full FFN runs and the mask zeroes the unselected neurons.
- ``sparse`` (inference): each token computes only its top-k experts' neurons. The key (and, for gated MLPs, up)
  projection returns the selected experts' pre-activations grouped by expert, ``[..., k * m]`` (``m``: neurons per
  expert, padded with zero neurons to the largest expert), the model's own elementwise activation runs on that, and
  this module multiplies each group by its expert's value vectors and adds the results back per token. Works for
  any architecture whose activation is elementwise between the two projections (all of ``ARCHITECTURES``).
"""

from __future__ import annotations

import torch
from torch import nn

from emoe.architectures import key_matrix, value_matrix
from emoe.gating import GATES


EXECUTIONS = ("masked", "sparse")


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
                 num_experts: int, top_k: int, seed: int = 0, transposed: bool = False, block: int | None = None,
                 up_proj: nn.Module | None = None):
        super().__init__()
        self.values = values_proj
        # NOTE: a list keeps the key projection out of this module's children: it stays registered (once) where it
        # was, and this module reads its current weight for the gate.
        self._keys_proj = [keys_proj]
        self._up_proj = [up_proj] if up_proj is not None else []
        self.execution = "masked"
        self._sparse: dict | None = None  # the current forward's token grouping (sparse execution)
        self._packed: tuple | None = None  # (weight versions, packed key/up/value weights)
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
        with torch.no_grad():
            counts = torch.bincount(top.reshape(-1), minlength=self.num_experts)
            self.last_load = counts.float() / counts.sum()
        if self.execution == "sparse":  # the grouping replaces the dense routing table
            self._sparse = self._group(top, weights, counts)
            routing = None
        else:
            routing = torch.zeros_like(scores).scatter(-1, top, weights)  # [..., num_experts]
        if weighted and self.training:
            probs = scores.float().softmax(-1).reshape(-1, self.num_experts).mean(0)
            # Switch-style balance: N * sum_i (share of selections_i) * (mean router probability_i); 1 when uniform.
            self.aux_loss = self.num_experts * (self.last_load * probs).sum()
        self._routing = routing

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: [..., d_ff] intermediate activations
        if self.execution == "sparse":
            return self._sparse_values(h)
        if self._routing is None:
            raise RuntimeError("EmoeFFN ran without routing: its key projection must run first in the same forward")
        routing, self._routing = self._routing, None
        # NOTE: the per-neuron mask as routing @ one-hot(labels): a thin matmul, several times faster on CPU than
        # gathering along the last dimension (index_select), and exact (one non-zero term per neuron).
        expand = nn.functional.one_hot(self.labels, self.num_experts).t().to(h.dtype)  # [num_experts, d_ff]
        # NOTE: not in place, even without autograd: hooks of the caller may hold the activations.
        h = h * (routing.to(h.dtype) @ expand)  # [..., d_ff]
        return self.values(h)

    # --- sparse execution -------------------------------------------------------------------------------------

    def set_execution(self, mode: str) -> None:
        """``masked`` or ``sparse`` (inference only: the module must be in eval mode when it runs)."""
        if mode not in EXECUTIONS:
            raise ValueError(f"unknown execution {mode!r}; valid choices: {', '.join(EXECUTIONS)}")
        for proj in self._keys_proj + self._up_proj:
            # NOTE: an instance attribute shadows the class's forward, so the projection (and its hooks, such as
            # the routing pre-hook) stays where it is; deleting it restores the dense projection.
            if mode == "sparse":
                proj.forward = self._sparse_projection(proj)
            elif "forward" in proj.__dict__:
                del proj.forward
        self.execution, self._sparse, self._packed = mode, None, None

    def _pack(self) -> dict[str, torch.Tensor]:
        """Key, up and value weights grouped by expert, ``[N, m, d]`` (biases ``[N, m]``), padded with zero neurons;
        rebuilt whenever a weight changed (its tensor version moved)."""
        projs = self._keys_proj + self._up_proj + [self.values]
        version = tuple((p.weight._version, p.weight.data_ptr()) for p in projs) + (self.labels._version,)
        if self._packed is not None and self._packed[0] == version:
            return self._packed[1]
        with torch.no_grad():
            d_ff = self.labels.numel()
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_experts)
            m = int(counts.max())
            slot = torch.arange(d_ff, device=order.device) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts)  # position of each (sorted) neuron within its expert
            index = torch.full((self.num_experts, m), d_ff, dtype=torch.long, device=order.device)
            index[self.labels[order], slot] = order  # [N, m] neuron ids; d_ff = a zero padding neuron

            def rows(matrix):  # [d_ff, d] -> [N, m, d]
                return torch.cat([matrix, matrix.new_zeros(1, matrix.shape[1])])[index].contiguous()

            def bias(proj):
                b = getattr(proj, "bias", None)
                return None if b is None else torch.cat([b, b.new_zeros(1)])[index].contiguous()

            packed = {"keys": rows(self.keys), "keys_bias": bias(self._keys_proj[0]),
                      "values": rows(self.values_matrix)}
            if self._up_proj:
                up = self._up_proj[0]
                packed["up"] = rows(key_matrix(up, self.transposed))
                packed["up_bias"] = bias(up)
        self._packed = (version, packed)
        return packed

    def _group(self, top: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor) -> dict:
        """Token-expert pairs sorted by expert: each expert's tokens are one contiguous run."""
        order = torch.argsort(top.reshape(-1), stable=True)
        return {"tokens": order // self.top_k, "counts": counts.tolist(), "weights": weights.reshape(-1)[order],
                "n_tokens": top.numel() // self.top_k}

    def _sparse_projection(self, proj: nn.Module):
        which = "keys" if proj is self._keys_proj[0] else "up"

        def forward(x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., k * m], grouped by expert
            if self.training or self._sparse is None:
                raise RuntimeError("sparse execution is for inference: call model.eval() (or use 'masked')")
            packed, g = self._pack(), self._sparse
            w, b = packed[which], packed[f"{which}_bias"]
            flat = x.reshape(-1, x.shape[-1])
            out = flat.new_empty(len(g["tokens"]), w.shape[1])
            start = 0
            for e, n in enumerate(g["counts"]):
                if n:
                    rows = flat.index_select(0, g["tokens"][start:start + n])
                    out[start:start + n] = rows @ w[e].t() if b is None else torch.addmm(b[e], rows, w[e].t())
                    start += n
            return out.view(*x.shape[:-1], -1)

        return forward

    def _sparse_values(self, h: torch.Tensor) -> torch.Tensor:
        g, packed = self._sparse, self._pack()
        if g is None:
            raise RuntimeError("EmoeFFN ran without routing: its key projection must run first in the same forward")
        self._sparse = self._routing = None
        v = packed["values"]  # [N, m, d_out]
        lead = h.shape[:-1]
        h = h.reshape(-1, v.shape[1])  # [pairs, m]
        if self.gate.weighted:
            h = h * g["weights"].to(h.dtype)[:, None]
        out = h.new_zeros(g["n_tokens"], v.shape[2])
        start = 0
        for e, n in enumerate(g["counts"]):
            if n:
                out.index_add_(0, g["tokens"][start:start + n], h[start:start + n] @ v[e])
                start += n
        bias = getattr(self.values, "bias", None)
        if bias is not None:
            out += bias
        return out.view(*lead, v.shape[2])

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
