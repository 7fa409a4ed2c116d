"""Gates: one registry entry per way of scoring a token against each expert.

Every gate is a small module built from the layer's current keys and values (both ``[d_ff, d]``: one row per
neuron) and the partition ``labels``. ``logits(x, keys, values)`` gives the fp32 logits ``[..., num_experts]`` of a
forward pass; the vector gates score ``x . G_i`` with ``vectors(keys, values)`` = ``G`` ``[num_experts, d]``.
``combine`` says how the router weights the chosen experts (``emoe.routing.COMBINES``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def expert_means(rows: torch.Tensor, labels: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Mean of the rows of each expert. rows: [d_ff, d], labels: [d_ff] -> [num_experts, d]."""
    sums = torch.zeros(num_experts, rows.shape[1], dtype=rows.dtype, device=rows.device)
    sums.index_add_(0, labels, rows)
    counts = torch.zeros(num_experts, dtype=rows.dtype, device=rows.device)  # (index_add: also on the meta device)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=rows.dtype)).clamp_(min=1)
    return sums / counts[:, None]


class Gate(nn.Module):
    """Base gate: a binary mask over the chosen experts, scores ``x . G_i``."""

    combine = "binary"
    nonnegative = False  # every score >= 0 (what D2DMoE's dynamic k, expert_selection 'dynamic', thresholds)

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, labels: torch.Tensor, num_experts: int, seed: int):
        super().__init__()
        self.num_experts = num_experts
        self.register_buffer("labels", labels, persistent=False)

    def vectors(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def flops(self, d: int) -> int:
        """The router's FLOPs per token (multiply-adds count 2): a ``[d] x [d, N]`` product."""
        return 2 * d * self.num_experts

    def logits(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[..., num_experts]`` fp32 (autocast off): the official code's ``fp32_gate``."""
        with torch.autocast(x.device.type, enabled=False):
            return x.float() @ self.vectors(keys, values).float().t()


class AvgKeysGate(Gate):
    """The paper's avg-k: mean of the expert's current (raw) key rows, frozen (no gradient), re-derived at every
    forward pass so that it follows fine-tuning, as the official code's ``update_one_score_gate`` does after every
    step. Like the official gate it ignores the first projection's bias."""

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


class CosineGate(Gate):
    """EMoE-learn (the official code's ``cosine_top``, GMoE's router): a random projection to ``proj_dim``, cosine
    similarity against a random ``[proj_dim, N]`` matrix, times a learnable temperature (starting at 1/0.5, at most
    1/0.01); the chosen experts' softmax probabilities, renormalised to sum to 1, weight their outputs. Randomly
    initialised (seeded), trainable; it ignores the keys."""

    combine = "softmax"

    def __init__(self, keys, values, labels, num_experts, seed, proj_dim: int = 256, init_t: float = 0.5):
        super().__init__(keys, values, labels, num_experts, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cosine_projector = nn.Linear(keys.shape[1], proj_dim, device="cpu")
            sim_matrix = torch.empty(proj_dim, num_experts, device="cpu").normal_(0, 0.01)
        self.cosine_projector.to(device=keys.device)
        self.sim_matrix = nn.Parameter(sim_matrix.to(keys.device))
        self.temperature = nn.Parameter(torch.log(torch.full([1], 1.0 / init_t, device=keys.device)))
        self.clamp_max = math.log(1.0 / 0.01)

    def flops(self, d):
        proj = self.sim_matrix.shape[0]
        return 2 * d * proj + 2 * proj * self.num_experts

    def logits(self, x, keys, values):
        with torch.autocast(x.device.type, enabled=False):
            proj = nn.functional.linear(x.float(), self.cosine_projector.weight.float(),
                                        self.cosine_projector.bias.float())
            cosine = nn.functional.normalize(proj, dim=-1) @ nn.functional.normalize(self.sim_matrix.float(), dim=0)
            return cosine * self.temperature.clamp(max=self.clamp_max).exp().float()


class LearnedAvgKeysGate(Gate):
    """A trainable linear gate initialised from avg-k (emoe's former ``learned``). Its forward weights are exactly
    1 (the binary mask: the model equals the ``avg_keys`` model at initialisation); the gradient reaches the gate
    through k * softmax of the chosen scores (straight-through), so training moves which experts are chosen."""

    combine = "binary_st"

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        self.weight = nn.Parameter(expert_means(keys.detach().clone(), labels, num_experts))

    def vectors(self, keys, values):
        return self.weight


class AnalyticGate(Gate):
    """CMoE's analytic router (``CMoE_model.Router``, no training): each expert is scored by its representative
    neuron (the member whose calibration activation markers are closest to the expert's mean; ``emoe.calibration``)
    as that neuron would fire on the token with its weight rows L2-normalised: ``|act(x . k_r)|``, or for gated
    MLPs ``|(x . u_r) * act(x . g_r)|``; the top-k of these (CMoE's softmax keeps their order) are kept with weight
    1 (its learnable scale starts at 0). The rows are the current ones (the keys may be fine-tuned; the router
    itself has no parameter)."""

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        # until the calibration set fixes them (convert): each expert's first neuron
        first = torch.stack([(labels == e).nonzero()[0, 0] if (labels == e).any() else torch.tensor(0)
                             for e in range(num_experts)]) if labels.device.type != "meta" else \
            torch.zeros(num_experts, dtype=torch.long, device=labels.device)
        self.register_buffer("representatives", first.to(labels.device))
        self._act, self._up = [nn.GELU()], []

    nonnegative = True

    def bind(self, activation: nn.Module | None, up_proj: nn.Module | None) -> None:
        """The FFN's own activation and (gated MLPs) up projection, which the representative neurons apply."""
        self._act = [activation if activation is not None else nn.GELU()]
        self._up = [up_proj] if up_proj is not None else []

    def calibrate(self, inputs: torch.Tensor, activations: torch.Tensor, keys: torch.Tensor,
                  labels: torch.Tensor, top_k: int | None = None, cache=None, values=None) -> None:
        """Fix the representatives from the calibration tokens' activations ``[T, d_ff]`` (cheap: no cache)."""
        from emoe.calibration import markers, representatives

        self.representatives.copy_(representatives(markers(activations), labels.cpu(), self.num_experts)
                                   .to(self.representatives.device))

    def logits(self, x, keys, values):
        with torch.autocast(x.device.type, enabled=False):
            rows = nn.functional.normalize(keys.detach()[self.representatives].float(), dim=1)
            h = self._act[0](x.float() @ rows.t())
            if self._up:
                up = self._up[0].weight.detach()[self.representatives].float()
                h = h * (x.float() @ nn.functional.normalize(up, dim=1).t())
            return h.abs()


class FittedGate(Gate):
    """A router fitted at conversion on the calibration tokens (the first 90%; the last 10% held out), then frozen:
    its weights are buffers. ``fitted`` names them; ``target`` is what it learns per token, ``loss`` how far its
    prediction is; ``held_out_accuracy``: the mean overlap of its top-k with the top-k experts of the target on the
    held-out tokens. ``calibrate``'s ``cache`` (a file path, keyed by ``emoe.convert``) holds an earlier fit, read
    instead of fitting again, or written after the fit."""

    epochs, lr, batch = 30, 0.01, 512
    min_steps = 0  # at least this many optimiser steps (epochs of a small calibration set are few steps)
    fitted: tuple[str, ...] = ()

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        self.seed, self.held_out_accuracy = seed, float("nan")

    def predict(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def target(self, x, activations, keys, values, labels) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x, keys, values):
        with torch.autocast(x.device.type, enabled=False):
            return self.predict(x)

    def calibrate(self, inputs, activations, keys, labels, top_k: int | None = None, cache=None,
                  values: torch.Tensor | None = None) -> None:
        """Fit on the calibration tokens' FFN inputs ``[T, d]`` and intermediate activations ``[T, d_ff]``."""
        import numpy as np

        from emoe.cache import save_npy_atomic

        buffers = [getattr(self, name) for name in self.fitted]
        if cache is not None and cache.exists():
            try:  # every fitted buffer flattened, in order, then the held-out accuracy
                saved, at = np.load(cache), 0
                if saved.size == sum(b.numel() for b in buffers) + 1:
                    for b in buffers:
                        b.copy_(torch.from_numpy(saved[at:at + b.numel()]).view_as(b).to(b))
                        at += b.numel()
                    self.held_out_accuracy = float(saved[-1])
                    return
            except (OSError, ValueError):
                pass
        self._calibrate(inputs, activations, keys, values, labels, top_k)
        if cache is not None:
            save_npy_atomic(cache, np.concatenate([b.detach().float().cpu().reshape(-1).numpy() for b in buffers]
                                                  + [np.array([self.held_out_accuracy], dtype=np.float32)]))

    def _calibrate(self, inputs, activations, keys, values, labels, top_k: int | None) -> None:
        x = inputs.float().cpu()
        with torch.no_grad():
            target = self.target(x, activations.float().cpu(), keys.detach().float().cpu(),
                                 None if values is None else values.detach().float().cpu(), labels.cpu())
        split = x.shape[0] // 10 * 9
        params = {name: nn.Parameter(getattr(self, name).detach().float().cpu().clone()) for name in self.fitted}
        optimiser = torch.optim.Adam(params.values(), lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        with torch.enable_grad():  # conversion may run under no_grad; the fit is a small training of its own
            epoch = steps = 0
            while epoch < self.epochs or steps < self.min_steps:
                epoch += 1
                order = torch.randperm(split, generator=g)
                for start in range(0, split, self.batch):
                    rows = order[start:start + self.batch]
                    loss = self.loss(self.predict(x[rows], params), target[rows])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    steps += 1
        for name, value in params.items():
            getattr(self, name).copy_(value.detach().to(getattr(self, name)))
        k = top_k or max(1, self.num_experts // 4)
        if x.shape[0] > split:
            with torch.no_grad():
                pred = self.predict(x[split:]).topk(k, dim=-1).indices
                true = target[split:].topk(k, dim=-1).indices
            self.held_out_accuracy = float(torch.tensor([len(set(p.tolist()) & set(t.tolist())) / k
                                                         for p, t in zip(pred, true)]).mean())


class MlpGate(FittedGate):
    """MoEfication's MLP predictor (``moefication/utils.py``, ``MLPCenter``): on the L2-normalised FFN input, a
    ``Linear(d, N)`` (initialised from the mean of each expert's L2-normalised keys), tanh, ``Linear(N, N)``
    (initialised to the identity), no biases. Fitted as MoEfication's: targets each expert's summed ``relu(x . k)``
    activation over the batch's largest, binary cross-entropy on the logits, Adam at 0.01, batches of 512, 30
    epochs."""

    fitted = ("w1", "w2")

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        self.register_buffer("w1", expert_means(nn.functional.normalize(keys.detach().float(), dim=1), labels,
                                                num_experts).to(keys.dtype))
        self.register_buffer("w2", torch.eye(num_experts, device=keys.device, dtype=keys.dtype))

    def predict(self, x, params=None):
        w1, w2 = (self.w1, self.w2) if params is None else (params["w1"], params["w2"])
        return torch.tanh(nn.functional.normalize(x.float(), dim=-1) @ w1.float().t()) @ w2.float().t()

    def flops(self, d):
        return 2 * d * self.num_experts + 2 * self.num_experts * self.num_experts

    def target(self, x, activations, keys, values, labels):
        patterns = nn.functional.one_hot(labels, self.num_experts).float()  # [d_ff, N]
        return torch.relu(nn.functional.normalize(x, dim=-1) @ keys.t()) @ patterns  # [T, N]

    def loss(self, prediction, target):
        return nn.functional.binary_cross_entropy_with_logits(prediction, target / target.max().clamp_min(1e-12))


class NormRegressionGate(FittedGate):
    """D2DMoE's router (``MoeficationRouter`` with its ``dsti_router`` settings): a regression of the norm each
    expert's output would have, ``||sum_{j in e} h_j v_j||_2`` (the second projection restricted to the expert,
    without bias), from the FFN input: ``Linear(d, 128)``, ReLU, ``Linear(128, N)``, absolute value, no biases (torch's
    default initialisation, seeded). Fitted by mean squared error, Adam at 0.001, 10 epochs (D2DMoE's), in batches of
    64 tokens (D2DMoE's are 64 sequences) and at least 2000 steps (D2DMoE's 10 epochs run over a whole training set;
    a calibration set's are far fewer steps). Its scores are non-negative, for D2DMoE's dynamic k
    (``expert_selection='dynamic'``); under top-k it keeps the k experts predicted to write the most."""

    epochs, lr, batch, min_steps, width = 10, 0.001, 64, 2000, 128
    fitted = ("w1", "w2")
    nonnegative = True

    def __init__(self, keys, values, labels, num_experts, seed):
        super().__init__(keys, values, labels, num_experts, seed)
        d = keys.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            first, second = nn.Linear(d, self.width, bias=False), nn.Linear(self.width, num_experts, bias=False)
        self.register_buffer("w1", first.weight.detach().to(keys.device, keys.dtype))
        self.register_buffer("w2", second.weight.detach().to(keys.device, keys.dtype))

    def predict(self, x, params=None):
        w1, w2 = (self.w1, self.w2) if params is None else (params["w1"], params["w2"])
        return (torch.relu(x.float() @ w1.float().t()) @ w2.float().t()).abs()

    def flops(self, d):
        return 2 * d * self.width + 2 * self.width * self.num_experts

    def target(self, x, activations, keys, values, labels):
        if values is None:
            raise ValueError("the norm-regression router's targets need the FFN's value vectors")
        return expert_output_norms(activations, values, labels, self.num_experts)

    def loss(self, prediction, target):
        return nn.functional.mse_loss(prediction, target)


def expert_output_norms(activations: torch.Tensor, values: torch.Tensor, labels: torch.Tensor,
                        num_experts: int) -> torch.Tensor:
    """``[T, N]``: for each token, the L2 norm of each expert's share of the FFN output, ``||h_e V_e||``
    (activations ``[T, d_ff]``, values ``[d_ff, d_out]``)."""
    out = torch.empty(activations.shape[0], num_experts)
    for e in range(num_experts):
        members = (labels == e).nonzero().squeeze(1)
        out[:, e] = torch.linalg.vector_norm(activations[:, members] @ values[members], dim=-1)
    return out


GATES: dict[str, type[Gate]] = {
    "avg_keys": AvgKeysGate,
    "centroid": CentroidGate,
    "avg_values": AvgValuesGate,
    "random": RandomGate,
    "learned": CosineGate,
    "learned_avg_keys": LearnedAvgKeysGate,
    "analytic": AnalyticGate,
    "mlp": MlpGate,
    "norm_regression": NormRegressionGate,
}
