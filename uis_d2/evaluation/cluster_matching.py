"""Matching unsupervised cluster ids to ground-truth classes, and the scores after it.

Unsupervised systems name their outputs with arbitrary ids (pseudo-classes, overclusters), so
every semantic number is computed after a mapping from predicted ids to ground-truth classes,
chosen on the evaluation set's own dataset-level confusion matrix (SEED_SYSTEMS.md §5.0):

- ``hungarian``: one-to-one, maximising the summed IoU (MaskDistill, COMUS; the K = C protocol).
  With K > C the extra ids stay unmatched and their pixels count as errors; with K < C some
  classes get no id and score IoU 0.
- ``majority``: many-to-one, each id to the class it has the highest IoU with (COMUS's
  overclustering protocol).
- ``precision``: many-to-one, each id to the class holding most of its pixels (Leopart's
  overclustering protocol).

Rows of a confusion matrix are predicted ids, columns ground-truth classes; both include the
background (id 0 / class 0 by convention of the callers, not assumed here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCHINGS = ("hungarian", "majority", "precision")
UNMATCHED = -1


def accumulate_confusion(
    confusion: np.ndarray, pred: np.ndarray, gt: np.ndarray, ignore_label: int = 255
) -> None:
    """Adds one image's pixels to ``confusion`` (K, C) in place: ``pred`` ids in [0, K),
    ``gt`` classes in [0, C) or ``ignore_label``. Out-of-range values are errors naming them,
    never silently dropped."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    num_pred, num_gt = confusion.shape
    valid = gt != ignore_label
    pred, gt = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(
            f"predicted id {int(pred.min())}..{int(pred.max())} outside 0..{num_pred - 1}"
        )
    if gt.size and (gt.min() < 0 or gt.max() >= num_gt):
        raise ValueError(
            f"ground-truth class {int(gt.min())}..{int(gt.max())} outside 0..{num_gt - 1} "
            f"(and not the ignore label {ignore_label})"
        )
    confusion += np.bincount(pred * num_gt + gt, minlength=num_pred * num_gt).reshape(
        num_pred, num_gt
    )


def iou_matrix(confusion: np.ndarray) -> np.ndarray:
    """IoU between every predicted id and every class (K, C); 0 where both are empty."""
    confusion = confusion.astype(np.float64)
    union = confusion.sum(1, keepdims=True) + confusion.sum(0, keepdims=True) - confusion
    return np.divide(confusion, union, out=np.zeros_like(confusion), where=union > 0)


def one_to_one(scores: np.ndarray) -> np.ndarray:
    """The one-to-one assignment of rows to columns maximising the summed ``scores`` (K, C):
    the column of every row, ``UNMATCHED`` for the rows left out when K > C. ``hungarian``
    runs it on IoU; matched instance AP on mask counts (MaskDistill)."""
    rows, cols = linear_sum_assignment(scores, maximize=True)
    mapping = np.full(scores.shape[0], UNMATCHED, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def match_clusters(confusion: np.ndarray, method: str) -> np.ndarray:
    """The class of every predicted id (K,), ``UNMATCHED`` for ids the method leaves out."""
    if method not in MATCHINGS:
        raise ValueError(f"matching {method!r}: must be one of {MATCHINGS}")
    if method == "hungarian":
        return one_to_one(iou_matrix(confusion))
    scores = iou_matrix(confusion) if method == "majority" else confusion
    return np.argmax(scores, axis=1).astype(np.int64)


def relabelled_confusion(confusion: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """(C, C) confusion of the mapped predictions against the classes. Pixels of unmatched ids
    are predicted as no class: they add to their classes' unions (false negatives) only."""
    num_gt = confusion.shape[1]
    out = np.zeros((num_gt, num_gt), dtype=np.int64)
    matched = mapping != UNMATCHED
    np.add.at(out, mapping[matched], confusion[matched])
    return out


@dataclass(frozen=True)
class SemanticScores:
    """Scores after matching, in [0, 1]. ``per_class_iou`` over every class (C,); ``defined``
    (C,) is False for a class neither present nor predicted (IoU 0 / 0, as on a small split
    without it), whose 0 the means leave out (detectron2's SemSegEvaluator does the same)."""

    per_class_iou: np.ndarray
    defined: np.ndarray
    miou: float
    pixel_accuracy: float
    discovered: int  # classes with IoU >= the discovery threshold (COMUS: 0.2)
    discovered_miou: float  # mIoU over those classes (0 when none)


def semantic_scores(
    confusion: np.ndarray, mapping: np.ndarray, discovery_iou: float = 0.2
) -> SemanticScores:
    """Per-class IoU, mIoU, pixel accuracy and discovered classes of ``confusion`` (K, C) under
    ``mapping``. A class's union counts every pixel of it, including those of unmatched ids."""
    mapped = relabelled_confusion(confusion, mapping)
    gt_pixels = confusion.sum(0).astype(np.float64)
    true_positive = np.diag(mapped).astype(np.float64)
    union = gt_pixels + mapped.sum(1) - true_positive  # rows: predicted as the class
    iou = np.divide(true_positive, union, out=np.zeros_like(true_positive), where=union > 0)
    total = gt_pixels.sum()
    defined = union > 0
    discovered = defined & (iou >= discovery_iou)
    return SemanticScores(
        per_class_iou=iou,
        defined=defined,
        miou=float(iou[defined].mean()) if defined.any() else 0.0,
        pixel_accuracy=float(true_positive.sum() / total) if total else 0.0,
        discovered=int(discovered.sum()),
        discovered_miou=float(iou[discovered].mean()) if discovered.any() else 0.0,
    )


__all__ = [
    "MATCHINGS",
    "UNMATCHED",
    "SemanticScores",
    "accumulate_confusion",
    "iou_matrix",
    "match_clusters",
    "one_to_one",
    "relabelled_confusion",
    "semantic_scores",
]
