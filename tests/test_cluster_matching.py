"""Matching cluster ids to classes on hand-built confusion matrices with known optima."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from uis_d2.evaluation.cluster_matching import (
    UNMATCHED,
    accumulate_confusion,
    iou_matrix,
    match_clusters,
    semantic_scores,
)


def _brute_force_hungarian(confusion: np.ndarray) -> float:
    iou = iou_matrix(confusion)
    k, c = iou.shape
    best = 0.0
    for perm in itertools.permutations(range(k), min(k, c)):
        best = max(best, sum(iou[r, col] for col, r in enumerate(perm)))
    return best


def test_hungarian_finds_the_best_one_to_one_assignment():
    rng = np.random.default_rng(0)
    for _ in range(20):
        confusion = rng.integers(0, 50, size=(4, 4))
        mapping = match_clusters(confusion, "hungarian")
        assert sorted(mapping) == [0, 1, 2, 3]
        iou = iou_matrix(confusion)
        total = sum(iou[r, mapping[r]] for r in range(4))
        assert total == pytest.approx(_brute_force_hungarian(confusion))


def test_a_permuted_perfect_prediction_scores_one():
    gt = np.array([[0, 1, 2], [2, 1, 0]])
    pred = np.array([[2, 0, 1], [1, 0, 2]])  # ids renamed: 0->2, 1->0, 2->1
    confusion = np.zeros((3, 3), dtype=np.int64)
    accumulate_confusion(confusion, pred, gt)
    mapping = match_clusters(confusion, "hungarian")
    assert mapping.tolist() == [1, 2, 0]
    scores = semantic_scores(confusion, mapping)
    assert scores.miou == 1.0 and scores.pixel_accuracy == 1.0 and scores.discovered == 3


def test_many_to_one_majority_and_precision_differ_where_they_should():
    # id 0 is mostly class 0; id 1 holds few pixels, most of them class 1 but class 1 is huge,
    # so its IoU with class 1 is tiny while its IoU with class 0 is larger.
    confusion = np.array([[50, 0], [4, 6], [0, 200]])
    assert match_clusters(confusion, "precision").tolist() == [0, 1, 1]
    assert match_clusters(confusion, "majority").tolist() == [0, 0, 1]
    hungarian = match_clusters(confusion, "hungarian")
    assert (hungarian == UNMATCHED).sum() == 1  # K > C: one id stays out


def test_scores_equal_a_direct_numpy_computation():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, size=(30, 40))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=gt.shape)
    confusion = np.zeros((5, 4), dtype=np.int64)
    accumulate_confusion(confusion, pred, gt)
    mapping = match_clusters(confusion, "majority")
    scores = semantic_scores(confusion, mapping)
    valid = gt != 255
    mapped = mapping[pred]
    ious = []
    for c in range(4):
        p, g = (mapped == c) & valid, (gt == c) & valid
        ious.append((p & g).sum() / (p | g).sum())
    np.testing.assert_allclose(scores.per_class_iou, ious)
    assert scores.miou == pytest.approx(np.mean(ious))
    assert scores.pixel_accuracy == pytest.approx((mapped == gt)[valid].mean())


def test_out_of_range_ids_and_classes_are_named():
    confusion = np.zeros((3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="predicted id .*outside 0..2"):
        accumulate_confusion(confusion, np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="ground-truth class .*outside 0..1"):
        accumulate_confusion(confusion, np.array([0]), np.array([7]))
    accumulate_confusion(confusion, np.array([0]), np.array([255]))  # ignored
    assert confusion.sum() == 0
    with pytest.raises(ValueError, match="matching 'best'"):
        match_clusters(confusion, "best")


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_means():
    # class 2 has no pixel and no id maps to it (majority): IoU 0 / 0, not a failure
    confusion = np.array([[5, 0, 0], [0, 5, 0]])
    scores = semantic_scores(confusion, match_clusters(confusion, "majority"))
    assert scores.defined.tolist() == [True, True, False]
    assert scores.per_class_iou.tolist() == [1.0, 1.0, 0.0]
    assert scores.miou == 1.0 and scores.discovered == 2
