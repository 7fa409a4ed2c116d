"""Calibration: what a dense model's FFNs compute on a sample of the task's training data, for the constructions,
routers and controls that need data (the co-activation, CMoE and gradient splits, the fitted routers, the static
pruning control).

``collect`` runs the (not yet converted) model on calibration batches and keeps, for each chosen block, the FFN's
input ``x [T, d]`` and its intermediate activations ``h [T, d_ff]`` (the value projection's input: ``act(keys x)``,
or ``act(gate x) * up x``) of the T non-padding tokens; with ``importance=True`` also each token's neuron
importance for the task loss, ``|h * dL/dh|`` (LLaMA-MoE's ``feature_change`` score with its ``l1_norm`` kernel: a
first-order Taylor estimate of the loss change if the neuron were removed), and the calibration sequence each token
belongs to. ``fingerprint`` names a calibration set for the caches: the token ids (and labels) it holds.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch
from torch import nn

from emoe.architectures import find_blocks


@dataclasses.dataclass
class Calibration:
    """Per block: the FFN inputs (``inputs[b]``, ``[T, d]``) and intermediate activations (``activations[b]``,
    ``[T, d_ff]``) of the calibration tokens, float32 on the CPU; ``name``: the calibration set's fingerprint."""

    inputs: dict[int, torch.Tensor]
    activations: dict[int, torch.Tensor]
    name: str
    importance: dict[int, torch.Tensor] | None = None  # [T, d_ff] per block, with importance=True
    sequences: torch.Tensor | None = None  # [T]: the calibration sequence of each token

    def layer(self, block: int) -> "LayerStats":
        return LayerStats(self.activations[block], self.inputs[block],
                          None if self.importance is None else self.importance[block], self.sequences)


@dataclasses.dataclass
class LayerStats:
    """One block's calibration statistics (the rows are the calibration tokens): intermediate ``activations``
    ``[T, d_ff]``, FFN ``inputs`` ``[T, d]``, neuron ``importance`` ``[T, d_ff]`` and each token's ``sequences``
    ``[T]`` (the last two only where importance was collected)."""

    activations: torch.Tensor
    inputs: torch.Tensor | None = None
    importance: torch.Tensor | None = None
    sequences: torch.Tensor | None = None

    def columns(self, neurons: torch.Tensor) -> "LayerStats":
        """The statistics of some of the neurons only."""
        return LayerStats(self.activations[:, neurons], self.inputs,
                          None if self.importance is None else self.importance[:, neurons], self.sequences)


def fingerprint(batches: list[dict[str, torch.Tensor]]) -> str:
    """A content hash of calibration batches (every tensor: token ids, masks, pixels)."""
    h = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            h.update(key.encode())
            h.update(batch[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def collect(model: nn.Module, batches: list[dict[str, torch.Tensor]], blocks: list[int],
            importance: bool = False) -> Calibration:
    """Run ``model`` (dense, in eval mode for the call) on ``batches`` and record each block's FFN inputs and
    intermediate activations on the non-padding tokens. ``importance``: also each token's ``|h * dL/dh|`` for the
    model's own loss on the batches' ``labels`` (a model with a task head; the weights are not changed) and the
    sequence of each token; the calibration's name then covers the model's weights too (the importance depends on
    all of them, the head's initialisation included)."""
    layout, modules = find_blocks(model)
    inputs: dict[int, list] = {b: [] for b in blocks}
    acts: dict[int, list] = {b: [] for b in blocks}
    scores: dict[int, list] = {b: [] for b in blocks}
    live: dict[int, torch.Tensor] = {}
    keep: list[torch.Tensor] = []
    sequences: list[torch.Tensor] = []
    hooks = []
    for b in blocks:
        def grab(store, b=b, track=False):
            def hook(module, args):
                store[b].append(args[0].detach().float().reshape(-1, args[0].shape[-1]).cpu())
                if track:
                    live[b] = args[0]
            return hook
        hooks.append(modules[b].get_submodule(layout.keys).register_forward_pre_hook(grab(inputs)))
        hooks.append(modules[b].get_submodule(layout.values).register_forward_pre_hook(grab(acts, track=importance)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            labels = batch.get("labels")
            if importance and labels is None:
                raise ValueError("the gradient split's importance needs labelled calibration batches (the task "
                                 "loss's gradient)")
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels" or importance}
            before = sum(len(x) for x in inputs[blocks[0]])
            with torch.set_grad_enabled(importance):
                out = model(**batch)
                if importance:
                    loss = getattr(out, "loss", None)
                    if loss is None:
                        raise ValueError("the gradient split's importance needs a model with a task head that "
                                         "returns a loss for the calibration labels")
                    grads = torch.autograd.grad(loss, [live[b] for b in blocks])
                    for b, g in zip(blocks, grads):
                        scores[b].append((live[b].detach() * g).abs().float().reshape(-1, g.shape[-1]).cpu())
                    live.clear()
            rows = sum(len(x) for x in inputs[blocks[0]]) - before
            mask = batch.get("attention_mask")  # padding left out; every position of an image
            keep.append(mask.reshape(-1).bool().cpu() if mask is not None and mask.numel() == rows
                        else torch.ones(rows, dtype=torch.bool))
            n_seq = next(iter(batch.values())).shape[0]
            sequences.append(seen + torch.arange(n_seq).repeat_interleave(rows // n_seq))
            seen += n_seq
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    tokens = torch.cat(keep)
    name = fingerprint(batches)
    if importance:
        name += "-m" + model_fingerprint(model)
    return Calibration({b: torch.cat(inputs[b])[tokens] for b in blocks},
                       {b: torch.cat(acts[b])[tokens] for b in blocks}, name,
                       {b: torch.cat(scores[b])[tokens] for b in blocks} if importance else None,
                       torch.cat(sequences)[tokens])


def model_fingerprint(model: nn.Module) -> str:
    """A content hash of every parameter of ``model`` (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def coactivation(activations: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """MoEfication's co-activation counts (``moefication/adj.py``): for each batch of ``batch`` tokens, the products
    of the neurons' ReLU'd activations summed over the batch and clamped at 1, added up over the batches.
    Returns ``[d_ff, d_ff]`` (symmetric, float32)."""
    relu = torch.relu(activations.float())
    d_ff = relu.shape[1]
    adj = torch.zeros(d_ff, d_ff)
    for start in range(0, relu.shape[0] - batch + 1, batch):
        chunk = relu[start:start + batch]
        adj += torch.clamp(chunk.t() @ chunk, max=1)
    return adj


def markers(activations: torch.Tensor, k: int = 10) -> torch.Tensor:
    """CMoE's activation markers (``CMoE_utils.analyze_neuron_activations``): 1 where a neuron is among a token's
    ``k`` largest absolute activations. ``[T, d_ff]`` float32."""
    acts = activations.float().abs()
    out = torch.zeros_like(acts)
    out.scatter_(1, acts.topk(min(k, acts.shape[1]), dim=1).indices, 1.0)
    return out


def representatives(marks: torch.Tensor, labels: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Each expert's representative neuron, as CMoE's: the member whose marker column is closest (L1) to the mean of
    its members' columns. ``[num_experts]`` neuron indices."""
    labels = torch.as_tensor(labels)
    out = torch.zeros(num_experts, dtype=torch.long)
    for e in range(num_experts):
        members = (labels == e).nonzero().squeeze(1)
        columns = marks[:, members]  # [T, m]
        centroid = columns.mean(dim=1, keepdim=True)
        out[e] = members[(columns - centroid).abs().sum(dim=0).argmin()]
    return out
