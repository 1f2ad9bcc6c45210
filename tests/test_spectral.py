"""Batched spectral clustering: planted partitions, both eigensolvers, degenerate inputs."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import uis_d2  # noqa: F401
from uis_d2.proposals import spectral
from uis_d2.proposals.spectral import (
    canonical_labels,
    kmeans,
    spectral_clustering,
    spectral_embedding,
)


def _planted(batch: int, n: int, k: int, noise: float = 0.05, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(16)[:k] * 3 + 1  # distinct, positively correlated directions
    truth = torch.randint(0, k, (batch, n), generator=generator)
    features = centres[truth] + noise * torch.randn(batch, n, 16, generator=generator)
    return features, truth


@pytest.mark.parametrize("solver", ["eigh", "subspace", "krylov"])
def test_planted_clusters_are_recovered_exactly_for_every_k(solver):
    features, truth = _planted(batch=2, n=200, k=4)
    labels = spectral_clustering(features, [2, 3, 4], restarts=4, iters=30, solver=solver)
    for b in range(2):
        assert adjusted_rand_score(truth[b], labels[4][b]) == 1.0
        assert set(labels[2][b].tolist()) == {0, 1}
        assert labels[4][b, 0] == 0  # canonical order: the first patch is cluster 0


@pytest.mark.parametrize("solver", ["subspace", "krylov"])
def test_iterative_solvers_match_the_exact_eigenvectors(solver):
    features, _ = _planted(batch=2, n=200, k=5, noise=1.0)
    exact = spectral_embedding(features, 5, solver="eigh")
    iterative = spectral_embedding(features, 5, solver=solver, tol=1e-5)
    assert torch.allclose(exact.eigenvalues, iterative.eigenvalues, atol=1e-4)
    assert torch.allclose(exact.vectors, iterative.vectors, atol=1e-3)


def test_clustering_is_deterministic_for_a_seed():
    features, _ = _planted(batch=1, n=120, k=3, noise=2.0)
    first = spectral_clustering(features, [3, 5], seed=7)
    second = spectral_clustering(features, [3, 5], seed=7)
    assert all(torch.equal(first[k], second[k]) for k in (3, 5))


def test_constant_features_give_a_single_cluster():
    labels = spectral_clustering(torch.ones(2, 50, 8), [2, 3, 5])
    assert all(int(v.max()) == 0 for v in labels.values())


def test_fewer_distinct_features_than_k_leaves_clusters_empty():
    features = torch.tensor([[1.0, 0.2], [0.2, 1.0]])[torch.arange(40) % 2][None]
    labels = spectral_clustering(features, [4])[4][0]
    assert torch.equal(labels, torch.arange(40) % 2)


def test_nan_inf_and_zero_features_are_defined_and_do_not_disturb_the_rest():
    features, truth = _planted(batch=1, n=100, k=3)
    features[0, 5] = float("nan")
    features[0, 6] = float("inf")
    features[0, 7] = 0.0
    labels = spectral_clustering(features, [3])[3][0]
    assert labels.min() >= 0 and labels.max() < 3
    clean = torch.ones(100, dtype=torch.bool)
    clean[5:8] = False
    assert adjusted_rand_score(truth[0, clean], labels[clean]) == 1.0
    all_bad = spectral_clustering(torch.full((1, 30, 4), float("nan")), [2, 3])
    assert all(int(v.max()) == 0 for v in all_bad.values())


def test_kmeans_on_two_points_with_three_clusters_and_canonical_order():
    points = torch.tensor([[5.0], [0.0]])[torch.tensor([0, 0, 1, 1, 0])][None]
    generator = torch.Generator().manual_seed(0)
    labels = kmeans(points, [3, 2], restarts=3, iters=10, generator=generator)
    assert labels[3][0].tolist() == labels[2][0].tolist() == [0, 0, 1, 1, 0]
    assert canonical_labels(torch.tensor([[2, 2, 0, 1]]), 3).tolist() == [[0, 0, 1, 2]]


def test_invalid_solver_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="solver"):
        spectral_embedding(torch.ones(1, 4, 2), 2, solver="lanczos")
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        spectral_clustering(torch.ones(4, 2), [2])


def test_cpu_chunks_give_the_same_clusters_as_one_batch(monkeypatch):
    features, truth = _planted(batch=3, n=300, k=4, noise=0.5)
    whole = spectral_clustering(features, [2, 4], restarts=4)
    # One image per eigensolver chunk, and k-means++ seeding in slices of 5 of the 24 runs (a
    # 4-wide run takes 3 * 4 * 4 * 300 bytes): the slices of k = 2 runs are trimmed to 2
    # coordinates.
    monkeypatch.setattr(spectral, "_CPU_CHUNK_BYTES", 5 * 3 * 4 * 4 * 300)
    chunked = spectral_clustering(features, [2, 4], restarts=4)
    assert all(torch.equal(whole[k], chunked[k]) for k in (2, 4))
    assert all(adjusted_rand_score(truth[b], whole[4][b]) == 1.0 for b in range(3))


def test_every_k_of_one_batch_uses_k_labels_at_a_lloyd_fixed_point():
    """Padding coordinates and centres of the smaller ks must never leak into their labels."""
    generator = torch.Generator().manual_seed(3)
    vectors = torch.randn(2, 80, 5, generator=generator)
    labels = kmeans(vectors, [5, 2, 3], restarts=6, iters=50, generator=generator)
    for k, result in labels.items():
        assert int(result.max()) < k and len(result[0].unique()) == k
        # Lloyd's fixed point: every point sits nearest to the mean of its own cluster.
        for b in range(2):
            points = vectors[b, :, :k]
            means = torch.stack([points[result[b] == c].mean(0) for c in range(k)])
            assert torch.equal(torch.cdist(points, means).argmin(1), result[b])


def test_compiled_lloyd_steps_equal_the_batched_torch_steps():
    """The CPU's compiled loops and the GPU's batched torch steps (run here on the CPU) must
    end every run at the same centres, on points unstructured enough to need many steps."""
    vectors = torch.randn(3, 300, 4, generator=torch.Generator().manual_seed(0))
    runs = spectral._Runs.build(vectors, [4, 3, 2], restarts=8)
    uniform = torch.rand(4, len(runs.k), 3, generator=torch.Generator().manual_seed(1))
    seeds = spectral.kmeans_plus_plus(
        runs.points(torch.arange(len(runs.k)), 4)[:, :4], runs.k, uniform
    )
    compiled = spectral._lloyd(runs, seeds.clone(), iters=30)
    batched = spectral._lloyd_batched(runs, seeds.clone(), iters=30)
    assert torch.allclose(compiled, batched, atol=1e-5)
    moved = (compiled - seeds).abs().amax(dim=(1, 2))
    assert (moved > 1e-3).float().mean() > 0.9  # the runs did move from their seeds
