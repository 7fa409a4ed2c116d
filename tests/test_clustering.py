"""Partitions: coverage, balance, determinism, planted structure, and the on-disk cache."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import emoe
from emoe.clustering import CLUSTERING, cluster_keys, partition


def planted_keys(num_experts=4, size=24, dim=16, noise=0.15, seed=0):
    """Keys drawn around ``num_experts`` random directions (shuffled), with the true labels; raw norms vary."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_experts, dim))
    labels = np.repeat(np.arange(num_experts), size)
    keys = centres[labels] + noise * rng.standard_normal((labels.size, dim)) * np.linalg.norm(centres[labels], axis=1,
                                                                                                keepdims=True)
    keys *= rng.uniform(0.5, 3.0, size=(labels.size, 1))  # clustering must see directions, not lengths
    order = rng.permutation(labels.size)
    return torch.tensor(keys[order], dtype=torch.float32), labels[order]


@pytest.mark.parametrize("algorithm", list(CLUSTERING))
def test_partition_covers_every_neuron_once(algorithm):
    keys = torch.randn(96, 16, generator=torch.Generator().manual_seed(0))
    labels = cluster_keys(keys, algorithm, num_experts=8, seed=0)
    assert labels.shape == (96,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(8))
    if CLUSTERING[algorithm].balanced:
        assert np.all(np.bincount(labels, minlength=8) == 12)
    np.testing.assert_array_equal(labels, cluster_keys(keys, algorithm, num_experts=8, seed=0))


@pytest.mark.parametrize("algorithm", ["constrained", "kmeans", "hierarchical", "spectral"])
def test_planted_clusters_recovered(algorithm):
    keys, truth = planted_keys()
    assert adjusted_rand_score(truth, cluster_keys(keys, algorithm, num_experts=4, seed=0)) >= 0.9


def test_random_partition_ignores_structure_and_follows_seed():
    keys, truth = planted_keys()
    labels = cluster_keys(keys, "random", num_experts=4, seed=0)
    assert adjusted_rand_score(truth, labels) < 0.2
    assert not np.array_equal(labels, cluster_keys(keys, "random", num_experts=4, seed=1))


def test_cache_computes_each_partition_once(monkeypatch):
    keys, _ = planted_keys(seed=1)
    first = partition(keys, "kmeans", 4, seed=0, layer=3)
    calls = []
    original = CLUSTERING["kmeans"]
    monkeypatch.setitem(CLUSTERING, "kmeans", dataclasses.replace(
        original, fit=lambda *a: calls.append(a) or original.fit(*a)))
    np.testing.assert_array_equal(partition(keys, "kmeans", 4, seed=0, layer=3), first)
    assert not calls  # served from disk
    partition(keys * 1.001 + 0.01, "kmeans", 4, seed=0, layer=3)  # other weights: another entry
    partition(keys, "kmeans", 4, seed=1, layer=3)  # other seed: another entry
    assert len(calls) == 2
    monkeypatch.setitem(CLUSTERING, "kmeans", dataclasses.replace(CLUSTERING["kmeans"], settings="ninit3"))
    partition(keys, "kmeans", 4, seed=0, layer=3)  # other fit settings: another entry, never a stale partition
    assert len(calls) == 3


def test_corrupt_cache_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOE_CACHE_DIR", str(tmp_path))
    keys, _ = planted_keys(seed=2)
    labels = partition(keys, "random", 4, seed=0, layer=0)
    (entry,) = (tmp_path / "partitions").iterdir()
    entry.write_bytes(b"not numpy")
    np.testing.assert_array_equal(partition(keys, "random", 4, seed=0, layer=0), labels)


@pytest.mark.parametrize("algorithm, n, message", [
    ("kmeans", 200, "num_experts=200 exceeds the layer's 96 neurons"),
    ("constrained", 7, "num_experts=7 does not divide d_ff=96"),
    ("louvain", 4, "unknown clustering 'louvain'; valid choices: constrained, kmeans, hierarchical, spectral, random"),
])
def test_bad_partition_requests(algorithm, n, message):
    with pytest.raises(ValueError) as err:
        cluster_keys(torch.randn(96, 8), algorithm, n)
    assert message in str(err.value)
