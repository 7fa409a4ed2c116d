"""Partition of an FFN's neurons into experts: one registry entry per clustering algorithm, plus an on-disk cache.

Every algorithm takes the L2-normalised keys ``[d_ff, d]`` (float32, normalised in float32 as the official code's
``F.normalize`` on the fp32 weight) and returns ``labels``: the expert of each neuron, ``[d_ff]`` int64 in
``0..N-1``. All are deterministic for a given seed and use every expert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Callable

import numpy as np
import torch

from emoe.cache import cache_dir, save_npy_atomic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    fit: Callable[..., np.ndarray]  # (normalised keys, num_experts, seed[, activations]) -> labels
    balanced: bool  # every expert gets exactly d_ff / N neurons (so N must divide d_ff)
    settings: str = ""  # the fit's fixed settings, part of the partition cache's key (a change is a new partition)
    # what fit also takes from a calibration set (``emoe.calibration``): "activations" (the layer's intermediate
    # activations, ``[T, d_ff]``), "importance" (the layer's ``LayerStats``, neuron importance included)
    needs_data: str = ""


def _parallel_jobs(n_init: int) -> int:
    """Workers for the restarts: at least 2 (the official seeds), at most one per restart or per thread torch may use
    here (a sweep trial's ``--cpus-per-trial``), so concurrent trials clustering at once do not oversubscribe."""
    return max(2, min(n_init, torch.get_num_threads()))


def _constrained(keys: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    import joblib
    from k_means_constrained import KMeansConstrained

    size = keys.shape[0] // num_experts
    # The official code's call (qiuzh20/EMoE Language/moe_utils.py): equal sizes, max_iter=1000, the library's
    # default n_init=10 and k-means++ initialisation, on the float32 L2-normalised key rows, with n_jobs=16.
    # NOTE: n_jobs is not only speed: with n_jobs=1 the library runs its restarts from the one random_state in turn,
    # with n_jobs > 1 it first draws one seed per restart from it; every n_jobs > 1 draws the same ones, so any
    # value from 2 up gives the official partition.
    km = KMeansConstrained(n_clusters=num_experts, size_min=size, size_max=size, random_state=seed, n_init=10,
                           max_iter=1000, n_jobs=_parallel_jobs(10))
    # Threads, not processes: the seeds are drawn before the restarts are dispatched, so the backend cannot change
    # the partition, and worker processes spawned inside a Ray trial leave loky's resource tracker complaining.
    with joblib.parallel_config(backend="threading"):
        return km.fit_predict(keys)


def _kmeans(keys: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    # The same restarts and iterations as the constrained (official) algorithm, so that the two differ only in balance.
    return KMeans(n_clusters=num_experts, random_state=seed, n_init=10, max_iter=1000).fit_predict(keys)


def _hierarchical(keys: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    # Ward linkage is deterministic; the seed has nothing to choose.
    return AgglomerativeClustering(n_clusters=num_experts, linkage="ward").fit_predict(keys)


def _spectral(keys: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    # keys are unit vectors, so keys @ keys.T is their cosine similarity; an affinity must be non-negative.
    affinity = np.clip(keys @ keys.T, 0.0, None)
    sc = SpectralClustering(n_clusters=num_experts, affinity="precomputed", random_state=seed,
                            assign_labels="cluster_qr")
    return sc.fit_predict(affinity)


def _random(keys: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    size = keys.shape[0] // num_experts
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_experts), size))


def _contiguous(keys: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    # The official --random_cluster: expert i holds neurons i*d/N .. (i+1)*d/N - 1, whatever the keys and the seed.
    return np.repeat(np.arange(num_experts), keys.shape[0] // num_experts)


def rebalance(labels: np.ndarray, num_experts: int, seed: int) -> np.ndarray:
    """Equal experts from an unequal split, as MoEfication's ``trans_gp.py``: each part above ``d_ff / N`` keeps a
    random ``d_ff / N`` of its neurons (seeded), and the others, shuffled, fill the parts below."""
    rng = np.random.default_rng(seed)
    size = len(labels) // num_experts
    labels = np.array(labels, dtype=np.int64)
    members = [list(rng.permutation(np.flatnonzero(labels == e))) for e in range(num_experts)]
    moving = list(rng.permutation([n for m in members for n in m[size:]]))
    for e in range(num_experts):
        kept = members[e][:size]
        need = size - len(kept)
        kept, moving = kept + moving[:need], moving[need:]
        labels[np.asarray(kept, dtype=np.int64)] = e
    return labels


def _coactivation(keys: np.ndarray, num_experts: int, seed: int, activations: np.ndarray) -> np.ndarray:
    """MoEfication's co-activation graph split (``moefication/adj.py``, then ``gpmetis``, then ``trans_gp.py``): the
    co-activation counts of the calibration tokens (``emoe.calibration.coactivation``), divided by 0.99 x their
    smallest non-zero decile (10th, 20th, ... percentile); an edge joins two neurons whose count reaches 1, weighted
    by its integer part; METIS (``pymetis``, seeded) cuts the graph into N parts; the parts are then made equal."""
    import pymetis
    import torch

    from emoe.calibration import coactivation

    adj = coactivation(torch.from_numpy(np.asarray(activations))).numpy()
    threshold, pos = 0.0, 10
    while threshold == 0:
        if pos > 100:
            raise ValueError("the calibration activations co-fire nowhere (every co-activation count is 0): the "
                             "co-activation split needs active neurons; use more calibration samples")
        threshold, pos = float(np.percentile(adj.reshape(-1), pos)), pos + 10
    adj = adj / (threshold * 0.99)
    np.fill_diagonal(adj, 0)
    xadj, adjncy, weights = [0], [], []
    for row in adj:
        (neighbours,) = np.nonzero(row >= 1)
        adjncy.extend(neighbours.tolist())
        weights.extend(row[neighbours].astype(np.int64).tolist())
        xadj.append(len(adjncy))
    if not adjncy:
        raise ValueError("the co-activation graph has no edge; use more calibration samples")
    parts = pymetis.part_graph(num_experts, xadj=xadj, adjncy=adjncy, eweights=weights,
                               options=pymetis.Options(seed=seed)).vertex_part
    return rebalance(np.asarray(parts), num_experts, seed)


CMOE_K_ACT = 10  # CMoE's --k-act default: a token marks its 10 largest absolute activations


def _cmoe(keys: np.ndarray, num_experts: int, seed: int, activations: np.ndarray) -> np.ndarray:
    """CMoE's routed split (``CMoE_utils.construct_experts_k_means``): each neuron's activation-marker column (its
    calibration tokens' top-10 marks); the N most often marked neurons' columns as centroids; one balanced
    assignment of every neuron to a centroid by L1 distance (each centroid repeated d/N times, a linear assignment:
    ``scipy.optimize.linear_sum_assignment`` where CMoE uses ``lap.lapjv``: both optimal). The shared experts, when
    asked for, are taken out before (``cluster_keys``)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    from emoe.calibration import markers

    marks = markers(torch.from_numpy(np.asarray(activations)), CMOE_K_ACT)
    rates = marks.mean(dim=0)
    size = marks.shape[1] // num_experts
    centroids = marks[:, torch.topk(rates, num_experts).indices]  # [T, N]
    distances = torch.cdist(marks.t(), centroids.t(), p=1).numpy()  # [d, N]
    _, slots = linear_sum_assignment(np.repeat(distances, size, axis=1))
    return slots // size


def _gradient(keys: np.ndarray, num_experts: int, seed: int, stats) -> np.ndarray:
    """LLaMA-MoE's gradient split (``GradientSplit.split_without_neuron_sharing``, criterion ``max``, after
    ``GradientSplitGetGrads`` with ``feature_change``, ``l1_norm``, ``sample``): the calibration data falls into N
    subsets; each neuron's importance on subset i is its mean ``|h * dL/dh|`` over the subset's tokens; then,
    greedily, the highest-scoring (subset, neuron) pair whose neuron is free and whose expert is not full puts the
    neuron in expert i (d_ff / N each). LLaMA-MoE's subsets are its corpus clustered beforehand by a sentence
    encoder; here the calibration sequences are clustered by k-means (scikit-learn, seeded, 10 restarts) on their
    mean FFN input at this block (the model's own view of each sequence)."""
    from sklearn.cluster import KMeans

    if stats is None or stats.importance is None or stats.sequences is None:
        raise ValueError("clustering 'gradient' needs the calibration set's neuron importance (labelled batches)")
    sequences = stats.sequences.numpy()
    ids, token_seq = np.unique(sequences, return_inverse=True)
    if len(ids) < num_experts:
        raise ValueError(f"clustering 'gradient' splits the calibration sequences into num_experts={num_experts} "
                         f"subsets, but there are {len(ids)}; use more calibration samples")
    x = stats.inputs.float().numpy()
    features = np.zeros((len(ids), x.shape[1]))
    np.add.at(features, token_seq, x)
    features /= np.bincount(token_seq, minlength=len(ids))[:, None]
    subset = KMeans(n_clusters=num_experts, random_state=seed, n_init=10).fit_predict(features)[token_seq]
    importance = stats.importance.float().numpy()
    scores = np.stack([importance[subset == e].mean(axis=0) for e in range(num_experts)])  # [N, d_ff]
    return greedy_split(scores)


def greedy_split(scores: np.ndarray) -> np.ndarray:
    """LLaMA-MoE's balanced greedy assignment: repeatedly the largest score of a free neuron in an expert not yet
    full (``d_ff / N`` neurons) puts that neuron there; on a tie the later expert wins, as its ``>=`` scan.
    ``scores``: ``[N, d_ff]``. Returns labels ``[d_ff]``."""
    num_experts, d_ff = scores.shape
    size = d_ff // num_experts
    expert, neuron = np.indices(scores.shape)
    order = np.lexsort((neuron.ravel(), -expert.ravel(), -scores.ravel()))  # by score, then the later expert
    labels = np.full(d_ff, -1, dtype=np.int64)
    filled = np.zeros(num_experts, dtype=np.int64)
    left = d_ff
    for pair in order:
        e, n = divmod(int(pair), d_ff)
        if labels[n] < 0 and filled[e] < size:
            labels[n], filled[e], left = e, filled[e] + 1, left - 1
            if not left:
                break
    return labels


CLUSTERING: dict[str, Algorithm] = {
    "constrained": Algorithm(_constrained, balanced=True, settings="ninit10-iter1000-parallel"),
    "kmeans": Algorithm(_kmeans, balanced=False, settings="ninit10-iter1000"),
    "hierarchical": Algorithm(_hierarchical, balanced=False),
    "spectral": Algorithm(_spectral, balanced=False),
    "random": Algorithm(_random, balanced=True),
    "contiguous": Algorithm(_contiguous, balanced=True),
    "coactivation": Algorithm(_coactivation, balanced=True, settings="moefication-b8", needs_data="activations"),
    "cmoe": Algorithm(_cmoe, balanced=True, settings="k10-lsa", needs_data="activations"),
    "gradient": Algorithm(_gradient, balanced=True, settings="llamamoe-max-l1", needs_data="importance"),
}
# Part of every partition's cache key: how the keys were prepared (v2: normalised in float32, as the official code;
# the float64 keys of earlier versions gave other partitions, which must never be served again).
KEYS_VERSION = "f32"


def get_algorithm(name: str) -> Algorithm:
    if name not in CLUSTERING:
        raise ValueError(f"unknown clustering {name!r}; valid choices: {', '.join(CLUSTERING)}")
    return CLUSTERING[name]


def check_partition_shape(name: str, d_ff: int, num_experts: int, where: str = "") -> None:
    """The checks that need the layer's size: raise ``ValueError`` before any clustering runs."""
    where = f" ({where})" if where else ""
    if num_experts > d_ff:
        raise ValueError(f"num_experts={num_experts} exceeds the layer's {d_ff} neurons{where}")
    if get_algorithm(name).balanced and d_ff % num_experts:
        raise ValueError(f"num_experts={num_experts} does not divide d_ff={d_ff}{where}: clustering {name!r} makes "
                         f"equal experts; use a divisor of {d_ff} or an unbalanced algorithm "
                         f"({', '.join(k for k, a in CLUSTERING.items() if not a.balanced)})")


def fingerprint(weight: torch.Tensor) -> str:
    """A content hash of a weight matrix (its float32 bytes and shape)."""
    w = weight.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(w.shape)).encode())
    h.update(w.numpy().tobytes())
    return h.hexdigest()[:20]


def cluster_keys(keys: torch.Tensor, algorithm: str, num_experts: int, seed: int = 0,
                 activations=None, shared: int = 0) -> np.ndarray:
    """Partition raw key rows ``[d_ff, d]`` into ``num_experts`` experts (no cache). Returns labels ``[d_ff]``.
    ``activations``: for the algorithms that need data, the layer's calibration statistics
    (``emoe.calibration.LayerStats``), or its intermediate activations ``[T, d_ff]`` alone.
    ``shared``: experts 0..shared-1 are CMoE's shared experts, the ``shared * d_ff / N`` neurons most often among
    the calibration tokens' top-10 absolute activations (split among them in order of that rate); the algorithm
    splits the other neurons into the other ``N - shared`` experts."""
    from emoe.calibration import LayerStats

    stats = activations if activations is None or isinstance(activations, LayerStats) else LayerStats(activations)
    d_ff = keys.shape[0]
    check_partition_shape(algorithm, d_ff, num_experts)
    if shared:
        from emoe.calibration import markers

        if stats is None:
            raise ValueError("shared experts need calibration activations (their neurons are the most often active)")
        if d_ff % num_experts:
            raise ValueError(f"shared experts need equal experts: num_experts={num_experts} must divide d_ff={d_ff}")
        size = d_ff // num_experts
        rates = markers(stats.activations, CMOE_K_ACT).mean(dim=0)
        order = torch.argsort(-rates, stable=True)
        labels = np.empty(d_ff, dtype=np.int64)
        labels[order[:shared * size].numpy()] = np.repeat(np.arange(shared), size)
        rest = order[shared * size:].sort().values
        labels[rest.numpy()] = shared + cluster_keys(keys[rest], algorithm, num_experts - shared, seed,
                                                     stats.columns(rest))
        return labels
    normalised = torch.nn.functional.normalize(keys.detach().to("cpu", torch.float32), dim=1).numpy()
    method = get_algorithm(algorithm)
    if method.needs_data:
        if stats is None:
            raise ValueError(f"clustering {algorithm!r} needs calibration activations (a calibration set of the "
                             "task's training data; emoe.calibration)")
        data = stats if method.needs_data == "importance" else stats.activations.detach().cpu().float().numpy()
        labels = method.fit(normalised, num_experts, seed, data)
    else:
        labels = method.fit(normalised, num_experts, seed)
    labels = np.asarray(labels, dtype=np.int64)
    used = np.bincount(labels, minlength=num_experts)
    if labels.shape != (d_ff,) or (used == 0).any():
        raise RuntimeError(f"clustering {algorithm!r} returned {int((used > 0).sum())} non-empty experts of "
                           f"{num_experts} requested for {d_ff} keys")
    return labels


def partition(keys: torch.Tensor, algorithm: str, num_experts: int, seed: int = 0, layer: int | None = None,
              use_cache: bool = True, activations=None, data: str = "",
              shared: int = 0) -> np.ndarray:
    """``cluster_keys`` through an on-disk cache keyed by (weights' fingerprint, layer, algorithm, N, seed; and for
    the algorithms that need data, ``data``: the calibration set's fingerprint).

    A grid of many trials over the same model computes each partition once; writes are atomic, so concurrent
    trials on a shared cache directory never read a partial file.
    """
    if not use_cache:
        return cluster_keys(keys, algorithm, num_experts, seed, activations, shared)
    settings = get_algorithm(algorithm).settings
    calibrated = f"-c{data}" if get_algorithm(algorithm).needs_data or shared else ""
    calibrated += f"-shared{shared}" if shared else ""
    name = (f"{fingerprint(keys)}-L{layer}-{algorithm}{'-' + settings if settings else ''}-N{num_experts}-s{seed}"
            f"{calibrated}-{KEYS_VERSION}.npy")
    path = cache_dir("partitions") / name
    if path.exists():
        try:
            labels = np.load(path)
            if labels.shape == (keys.shape[0],):
                return labels.astype(np.int64)
        except (OSError, ValueError):
            log.warning("ignoring unreadable cached partition %s", path)
    labels = cluster_keys(keys, algorithm, num_experts, seed, activations, shared)
    save_npy_atomic(path, labels)
    return labels
