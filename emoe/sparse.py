"""Sparse execution of an EMoE FFN (inference): each token computes only its top-k experts' neurons.

The key (and, for gated MLPs, up) projection returns the selected experts' pre-activations grouped by expert,
``[..., k * m]`` (``m``: neurons per expert, padded with zero neurons to the largest expert); the model's own
elementwise activation runs on that; the layer then multiplies each group by its expert's value vectors and adds
the results back per token. A pair with weight 0 (an expert left out by dynamic k, a pair dropped for capacity) is
not computed: the pre-activations are then ``[pairs, m]``, which an elementwise activation takes alike. Works for
any architecture whose activation is elementwise between the two projections (all of ``emoe.ARCHITECTURES``). Equal to masked execution within float tolerance.
"""

from __future__ import annotations

import torch
from torch import nn

from emoe.architectures import key_matrix
from emoe.routing import Routing


class SparseExecution:
    """The sparse path of one ``EmoeFFN``: packed per-expert weights, the current forward's token grouping, and the
    replacement ``forward`` of its key (and up) projections."""

    def __init__(self, layer):
        self.layer = layer
        self.grouping: dict | None = None  # the current forward's token-expert pairs, sorted by expert
        self._packed: tuple | None = None  # (weight versions, packed key/up/value weights)

    def attach(self) -> None:
        for proj in self._projections():
            # NOTE: an instance attribute shadows the class's forward, so the projection (and its hooks, such as
            # the routing pre-hook) stays where it is; deleting it restores the dense projection.
            proj.forward = self._projection_forward(proj)

    def detach(self) -> None:
        for proj in self._projections():
            if "forward" in proj.__dict__:
                del proj.forward

    def _projections(self) -> list[nn.Module]:
        return self.layer._keys_proj + self.layer._up_proj

    def pack(self) -> dict[str, torch.Tensor]:
        """Key, up and value weights grouped by expert, ``[N, m, d]`` (biases ``[N, m]``), padded with zero neurons;
        rebuilt whenever a weight changed (its tensor version moved)."""
        layer = self.layer
        projs = self._projections() + [layer.values]
        version = tuple((p.weight._version, p.weight.data_ptr()) for p in projs) + (layer.labels._version,)
        if self._packed is not None and self._packed[0] == version:
            return self._packed[1]
        with torch.no_grad():
            labels, num_experts = layer.labels, layer.num_experts
            d_ff = labels.numel()
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=num_experts)
            m = int(counts.max())
            slot = torch.arange(d_ff, device=order.device) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts)  # position of each (sorted) neuron within its expert
            index = torch.full((num_experts, m), d_ff, dtype=torch.long, device=order.device)
            index[labels[order], slot] = order  # [N, m] neuron ids; d_ff = a zero padding neuron

            def rows(matrix):  # [d_ff, d] -> [N, m, d]
                return torch.cat([matrix, matrix.new_zeros(1, matrix.shape[1])])[index].contiguous()

            def bias(proj):
                b = getattr(proj, "bias", None)
                return None if b is None else torch.cat([b, b.new_zeros(1)])[index].contiguous()

            packed = {"keys": rows(layer.keys), "keys_bias": bias(layer._keys_proj[0]),
                      "values": rows(layer.values_matrix)}
            if layer._up_proj:
                up = layer._up_proj[0]
                packed["up"] = rows(key_matrix(up, layer.transposed))
                packed["up_bias"] = bias(up)
        self._packed = (version, packed)
        return packed

    def group(self, routing: Routing) -> None:
        """Token-expert pairs sorted by expert: each expert's tokens are one contiguous run. Where a token keeps a
        variable number of experts (``expert_selection='dynamic'``: ``routing.weights`` 0 for the ones left out),
        only the kept pairs are computed, and the pre-activations are ragged (``[pairs, m]``)."""
        width = routing.experts.shape[-1]
        experts, weights = routing.experts.reshape(-1), routing.weights.reshape(-1)
        pair = torch.arange(experts.numel(), device=experts.device)
        ragged = bool((weights == 0).any())  # a pair left out (dynamic k) or dropped for capacity: not computed
        if ragged:
            pair = pair[weights != 0]
        order = pair[torch.argsort(experts[pair], stable=True)]
        self.grouping = {"tokens": order // width, "counts": torch.bincount(experts[pair],
                                                                            minlength=routing.num_experts).tolist(),
                         "weights": weights[order], "weighted": bool((weights[pair] != 1).any()),
                         "n_tokens": experts.numel() // width, "ragged": ragged}

    def _projection_forward(self, proj: nn.Module):
        which = "keys" if proj is self.layer._keys_proj[0] else "up"

        def forward(x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., k * m], grouped by expert
            if self.layer.training or self.grouping is None:
                raise RuntimeError("sparse execution is for inference: call model.eval() (or use 'masked')")
            packed, g = self.pack(), self.grouping
            w, b = packed[which], packed[f"{which}_bias"]
            flat = x.reshape(-1, x.shape[-1])
            out = flat.new_empty(len(g["tokens"]), w.shape[1])
            start = 0
            for e, n in enumerate(g["counts"]):
                if n:
                    rows = flat.index_select(0, g["tokens"][start:start + n])
                    out[start:start + n] = rows @ w[e].t() if b is None else torch.addmm(b[e], rows, w[e].t())
                    start += n
            return out if g["ragged"] else out.view(*x.shape[:-1], -1)

        return forward

    def values(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        """``h`` ``[..., k * m]`` activations grouped by expert -> the FFN output ``[..., d_out]``."""
        g, packed = self.grouping, self.pack()
        if g is None:
            raise RuntimeError("EmoeFFN ran without routing: its key projection must run first in the same forward")
        self.grouping = None
        v = packed["values"]  # [N, m, d_out]
        lead = routing.experts.shape[:-1]  # the tokens' (h is [pairs, m] when ragged)
        h = h.reshape(-1, v.shape[1])  # [pairs, m]
        if g["weighted"]:
            h = h * g["weights"].to(h.dtype)[:, None]
        out = h.new_zeros(g["n_tokens"], v.shape[2])
        start = 0
        for e, n in enumerate(g["counts"]):
            if n:
                out.index_add_(0, g["tokens"][start:start + n], h[start:start + n] @ v[e])
                start += n
        bias = getattr(self.layer.values, "bias", None)
        if bias is not None:
            out += bias
        out = out.view(*lead, v.shape[2])
        return out + self.layer.bias_correction(routing, out.dtype)
