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


def calibration_activations(d_ff: int = 96, tokens: int = 400, seed: int = 0) -> torch.Tensor:
    """Activations of a layer on calibration tokens, for the data-driven splits: GELU of random pre-activations."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.gelu(torch.randn(tokens, d_ff, generator=g))


def calibration_stats(d_ff: int = 96, tokens: int = 400, seed: int = 0):
    """A layer's calibration statistics for the splits that read importance: random inputs, activations and
    importance, 50 sequences of 8 tokens."""
    from emoe.calibration import LayerStats

    g = torch.Generator().manual_seed(seed)
    return LayerStats(calibration_activations(d_ff, tokens, seed), torch.randn(tokens, 16, generator=g),
                      torch.rand(tokens, d_ff, generator=g), torch.arange(tokens) // 8)


@pytest.mark.parametrize("algorithm", list(CLUSTERING))
def test_partition_covers_every_neuron_once(algorithm):
    keys = torch.randn(96, 16, generator=torch.Generator().manual_seed(0))
    data = {"": None, "activations": calibration_activations(),
            "importance": calibration_stats()}[CLUSTERING[algorithm].needs_data]
    labels = cluster_keys(keys, algorithm, num_experts=8, seed=0, activations=data)
    assert labels.shape == (96,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(8))
    if CLUSTERING[algorithm].balanced:
        assert np.all(np.bincount(labels, minlength=8) == 12)
    np.testing.assert_array_equal(labels, cluster_keys(keys, algorithm, num_experts=8, seed=0, activations=data))


def planted_coactivation(d_ff: int = 64, groups: int = 4, tokens: int = 2000, seed: int = 0):
    """Neurons in planted groups that fire together: each token activates one group (and a little noise), while
    the neurons' keys are random (no structure a key clustering could find)."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(groups), d_ff // groups))
    group = rng.integers(0, groups, tokens)
    acts = (truth[None, :] == group[:, None]) * rng.uniform(0.5, 1.5, (tokens, d_ff))
    acts = acts + (rng.uniform(size=(tokens, d_ff)) < 0.05) * 0.3
    keys = torch.from_numpy(rng.standard_normal((d_ff, 16))).float()
    return keys, torch.from_numpy(acts).float(), truth


def test_coactivation_split_recovers_planted_co_firing_groups_that_key_clustering_misses():
    keys, acts, truth = planted_coactivation()
    found = cluster_keys(keys, "coactivation", num_experts=4, seed=0, activations=acts)
    assert adjusted_rand_score(truth, found) >= 0.9
    assert adjusted_rand_score(truth, cluster_keys(keys, "constrained", num_experts=4, seed=0)) < 0.2
    with pytest.raises(ValueError, match="needs calibration activations"):
        cluster_keys(keys, "coactivation", num_experts=4, seed=0)


def test_rebalance_makes_parts_equal_moving_only_the_excess():
    from emoe.clustering import rebalance

    labels = np.array([0] * 10 + [1] * 4 + [2] * 2)  # sizes 10, 4, 2 -> 16 / 2 ... with N = 4: 4 each
    out = rebalance(np.concatenate([labels, [3] * 0]), 4, seed=0)
    assert np.all(np.bincount(out, minlength=4) == 4)
    assert np.all(out[10:14] == 1)  # a part of exactly the size keeps every neuron


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
    ("louvain", 4, "unknown clustering 'louvain'; valid choices: constrained, kmeans, hierarchical, spectral, random, "
                       "contiguous"),
])
def test_bad_partition_requests(algorithm, n, message):
    with pytest.raises(ValueError) as err:
        cluster_keys(torch.randn(96, 8), algorithm, n)
    assert message in str(err.value)


def _same_partition_up_to_renaming(a: np.ndarray, b: np.ndarray) -> bool:
    """Each expert of ``a`` is exactly one expert of ``b`` (the contingency table is a permutation matrix)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.slow
def test_constrained_is_the_official_partition_of_minilm():
    """The official call (qiuzh20/EMoE Language/moe_utils.py), written here from the library's public API, on the
    packaged MiniLM's block 4 at N=64: the same experts, up to their names."""
    import joblib
    from k_means_constrained import KMeansConstrained

    model, _ = emoe.load_model("minilm", num_labels=2)
    weight = model.bert.encoder.layer[4].intermediate.dense.weight.data  # [1536, 384] fp32 keys
    with joblib.parallel_config(max_nbytes=None):  # no read-only memory maps for the workers
        official = KMeansConstrained(n_clusters=64, size_min=24, size_max=24, random_state=0, n_init=10,
                                     max_iter=1000, n_jobs=2).fit(
            torch.nn.functional.normalize(weight, dim=1, p=2).numpy()).labels_
    ours = cluster_keys(weight, "constrained", num_experts=64, seed=0)
    assert _same_partition_up_to_renaming(ours, official)
    # The test has teeth: the restarts drawn with n_jobs=1 give another partition.
    serial = KMeansConstrained(n_clusters=64, size_min=24, size_max=24, random_state=0, n_init=10, max_iter=1000,
                               n_jobs=1).fit(torch.nn.functional.normalize(weight, dim=1, p=2).numpy()).labels_
    assert not _same_partition_up_to_renaming(serial, official)


def test_contiguous_is_the_official_random_cluster():
    """``--random_cluster``: ``range(N)`` repeated ``d/N`` times each, i.e. expert i holds neurons i*d/N.."""
    keys, _ = planted_keys()
    labels = cluster_keys(keys, "contiguous", num_experts=4, seed=3)
    expected = torch.arange(0, 4).unsqueeze(1).repeat(1, 24).view(-1).numpy()  # the official expression
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(labels, cluster_keys(keys * -2.0, "contiguous", num_experts=4, seed=0))


def test_cache_key_names_the_key_preparation(tmp_path, monkeypatch):
    """A partition cached by an earlier version (float64 keys, serial restarts) is never served under the new one."""
    monkeypatch.setenv("EMOE_CACHE_DIR", str(tmp_path))
    keys, _ = planted_keys(seed=4)
    labels = partition(keys, "constrained", 4, seed=0, layer=1)
    (entry,) = (tmp_path / "partitions").iterdir()
    assert entry.name.endswith("-f32.npy") and "parallel" in entry.name
    from emoe.clustering import fingerprint

    old = tmp_path / "partitions" / f"{fingerprint(keys)}-L1-constrained-ninit10-iter1000-N4-s0.npy"
    np.save(old, (labels + 1) % 4)  # what the old version would have named its entry: a different partition
    np.testing.assert_array_equal(partition(keys, "constrained", 4, seed=0, layer=1), labels)
