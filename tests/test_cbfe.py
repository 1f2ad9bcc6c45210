"""Cluster-based foreground extraction (uis_d2/leopart/cbfe.py) on constructed cases with known
answers: planted directions, hand-counted precisions, threshold rules on made-up precisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from uis_d2.features.dense_dataset import standardised_pca, token_matrix
from uis_d2.leopart import cbfe


def _planted(per_cluster: int = 60, dim: int = 16, seed: int = 0):
    """Points along 4 random unit directions, with noise and random lengths (which spherical
    k-means must ignore), and their true cluster."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(4, dim, generator=generator), dim=1)
    truth = torch.arange(4).repeat_interleave(per_cluster)
    noise = 0.05 * torch.randn(len(truth), dim, generator=generator)
    lengths = 0.5 + 5 * torch.rand(len(truth), 1, generator=generator)
    return lengths * (directions[truth] + noise), truth, directions


def test_spherical_kmeans_recovers_planted_directions():
    points, truth, directions = _planted()
    result = cbfe.spherical_kmeans(points, 4, restarts=3, seed=0)
    assert adjusted_rand_score(truth.numpy(), result.labels.numpy()) == 1.0
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(4))
    # Each planted direction has a centroid within a degree or so.
    cosines = directions @ result.centroids.T
    assert cosines.max(dim=1).values.min() > 0.999
    again = cbfe.spherical_kmeans(points, 4, restarts=3, seed=0)
    assert torch.equal(again.labels, result.labels)
    assert 0.95 * len(points) < result.objective <= len(points)


def test_spherical_kmeans_rejects_more_clusters_than_tokens():
    with pytest.raises(ValueError, match="K = 11 on 10 tokens"):
        cbfe.spherical_kmeans(torch.randn(10, 3), 11)


def test_standardised_pca_matches_pca_of_standardised_tokens():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(500, 8, generator=generator) @ torch.randn(8, 8, generator=generator)
    points[:, 3] = 7.0  # a constant dimension is only centred
    projected = standardised_pca(points, 3)[0]
    assert projected.shape == (500, 3)
    x = points.double().numpy()
    std = x.std(0)
    standard = (x - x.mean(0)) / np.where(std > 1e-12, std, 1.0)
    reference = PCA(3).fit(standard)
    variances = projected.double().numpy().var(0)
    np.testing.assert_allclose(variances, reference.explained_variance_ * 499 / 500, rtol=1e-4)
    # Same subspace: the projections agree up to each axis's sign.
    expected = reference.transform(standard)
    np.testing.assert_allclose(np.abs(projected.numpy()), np.abs(expected), atol=1e-4)
    assert standardised_pca(points, 50)[0].shape == (500, 8)


def test_token_matrix_is_image_major_raster_order():
    tokens = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    flat = token_matrix(tokens)
    assert flat.shape == (8, 3)
    assert flat[5].tolist() == tokens[1, :, 0, 1].tolist()


def test_cluster_precisions_average_per_image_shares():
    # Image 0: cluster 0 on 3 patches, 2 inside the hint; cluster 1 on 1 patch, inside.
    # Image 1: cluster 0 on 1 patch, outside; cluster 1 on 3 patches, 1 inside.
    # Cluster 2 occurs nowhere.
    labels = np.array([[[0, 0, 0, 1]], [[0, 1, 1, 1]]])
    hint = np.array([[[1, 1, 0, 1]], [[0, 1, 0, 0]]], dtype=bool)
    precisions = cbfe.cluster_precisions(labels, hint, 3)
    # Per image, then averaged over the images where the cluster occurs (not pooled pixels).
    np.testing.assert_allclose(precisions[:2], [(2 / 3 + 0) / 2, (1 + 1 / 3) / 2])
    assert np.isnan(precisions[2])
    assert not cbfe.foreground_masks(labels, precisions, 0.0)[labels == 2].any()


def test_cluster_precisions_refuse_an_empty_hint():
    labels = np.zeros((2, 2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="hint is empty"):
        cbfe.cluster_precisions(labels, np.zeros_like(labels, dtype=bool), 1)


def test_background_share_cuts_the_least_precise_share():
    precisions = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6, np.nan])
    # 10 present clusters: 65% -> the 6 least precise are background, c in the gap 0.6-0.7.
    assert cbfe.share_threshold(precisions, 0.65) == pytest.approx(0.65)
    assert cbfe.choose_threshold(precisions, "background_share", 0.65) == pytest.approx(0.65)
    assert cbfe.share_threshold(precisions, 0.0) == -math.inf
    with pytest.raises(ValueError, match="background share"):
        cbfe.share_threshold(precisions, 1.0)


def test_background_share_keeps_a_tie_at_the_cut_in_the_background():
    # 7 of 10 clusters never touch the hint: a cut at 6 must not make the tied ones foreground.
    precisions = np.array([0, 0, 0, 0, 0, 0, 0, 0.3, 0.5, 0.9])
    assert cbfe.share_threshold(precisions, 0.65) == pytest.approx(0.15)
    assert cbfe.share_threshold(np.zeros(4), 0.5) == math.inf


def test_otsu_threshold_splits_two_groups():
    precisions = np.array([0.05, 0.9, 0.1, 0.12, 0.8, 0.15, 0.85, np.nan])
    assert cbfe.otsu_threshold(precisions) == pytest.approx((0.15 + 0.8) / 2)
    assert cbfe.choose_threshold(precisions, "otsu") == pytest.approx(0.475)
    with pytest.raises(ValueError, match="two distinct"):
        cbfe.otsu_threshold(np.array([0.4, 0.4, np.nan]))


def _oracle_case(foreground_from: int):
    """20 clusters, one patch each, precisions ascending with the id, ground truth foreground on
    clusters >= ``foreground_from``."""
    labels = np.arange(20).reshape(1, 4, 5)
    precisions = (np.arange(20) + 0.3) / 20
    return precisions, labels, labels >= foreground_from


def test_oracle_picks_the_jaccard_optimal_cut_within_55_to_75_percent():
    precisions, labels, truth = _oracle_case(12)
    # Cuts 11..14 (55-75% of 20) are tried; cut 12 is exact: c = 12.3 / 20 rounded to 0.60.
    assert cbfe.oracle_threshold(precisions, labels, truth) == pytest.approx(0.6)
    assert cbfe.choose_threshold(precisions, "oracle", labels=labels, ground_truth=truth) == (
        pytest.approx(0.6)
    )
    # The truth wants cut 5, outside the range: the closest allowed cut, 11, wins.
    precisions, labels, truth = _oracle_case(5)
    assert cbfe.oracle_threshold(precisions, labels, truth) == pytest.approx(0.55)


def test_the_oracle_is_only_used_when_named_and_needs_ground_truth():
    precisions, labels, _ = _oracle_case(12)
    with pytest.raises(ValueError, match="ground truth"):
        cbfe.choose_threshold(precisions, "oracle", labels=labels)
    with pytest.raises(ValueError, match="must be one of"):
        cbfe.choose_threshold(precisions, "gt")


def test_cbfe_cleans_a_noisy_hint():
    """Object tokens point one way, background tokens another; the hint covers 80% of the
    object and 10% of the background at random. Clusters vote the noise away."""
    rng = np.random.default_rng(0)
    images, side = 8, 6
    objects = np.zeros((2 * images, side, side), dtype=bool)
    objects[:, 1:4, 2:5] = True
    hint = np.where(objects, rng.random(objects.shape) < 0.8, rng.random(objects.shape) < 0.1)
    generator = torch.Generator().manual_seed(1)
    directions = torch.randn(4, 5, generator=generator)  # 2 object parts, 2 background kinds
    part = torch.from_numpy(rng.integers(0, 2, objects.shape)).reshape(-1)
    kind = torch.from_numpy(objects).reshape(-1).long() * 2 + part
    points = directions[kind] + 0.05 * torch.randn(objects.size, 5, generator=generator)
    half = images * side * side
    result = cbfe.cbfe(points[:half], hint[:images], points[half:], hint[images:], 4, seed=0)
    assert result.rule == "background_share"
    assert result.foreground_clusters == 2
    assert np.array_equal(result.eval_foreground, objects[images:])
    assert np.array_equal(result.fit_foreground, objects[:images])
    with pytest.raises(ValueError, match="differ in number"):
        cbfe.cbfe(points[:half], hint[:images], points[half:], hint[: images - 1], 4)
