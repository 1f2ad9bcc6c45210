"""Foreground quality of a binary map against the union of the ground-truth instance masks.

Two measures, per image and over a dataset (tools/evaluate_foreground.py):

- **Jaccard** of the foreground class, |P & G| / |P | G| (COMUS Table 6 reports it for saliency
  on VOC). Dataset level: the sum of intersections over the sum of unions (a large object weighs
  more); also the mean over images. An image with empty P and G scores 1.
- **Boundary F1** (the F measure of DAVIS, Perazzi et al. 2016): the boundary of a mask is its
  pixels with a 4-neighbour outside it (the image border is not a boundary); a boundary pixel
  of P is matched when a boundary pixel of G lies within ``tolerance`` pixels (Euclidean), and
  vice versa; precision and recall are the matched shares, F1 their harmonic mean. DAVIS's
  conventions for empty boundaries: both empty give 1, one empty gives 0. Dataset level: F1 of
  the pooled counts, and the mean of the per-image F1.

Both compare maps at one resolution (the tool uses the image's). The ground truth is the union
of every instance mask of the image, crowd regions included: a crowd annotation marks a group
of objects, which is foreground, so a provider covering it is right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from uis_d2.utils.masks import rle_to_mask, to_compressed_rle

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


@dataclass(frozen=True)
class ForegroundCounts:
    """Pixel counts of one image (or a sum of images)."""

    intersection: int
    union: int
    boundary_pred: int
    boundary_pred_matched: int
    boundary_gt: int
    boundary_gt_matched: int

    def __add__(self, other: ForegroundCounts) -> ForegroundCounts:
        a, b = asdict(self), asdict(other)
        return ForegroundCounts(**{key: a[key] + b[key] for key in a})

    @property
    def jaccard(self) -> float:
        return self.intersection / self.union if self.union else 1.0

    @property
    def boundary_precision(self) -> float:
        if not self.boundary_pred:
            return 1.0
        return self.boundary_pred_matched / self.boundary_pred

    @property
    def boundary_recall(self) -> float:
        return self.boundary_gt_matched / self.boundary_gt if self.boundary_gt else 1.0

    @property
    def boundary_f1(self) -> float:
        precision, recall = self.boundary_precision, self.boundary_recall
        if precision + recall == 0:
            return 0.0
        return 2 * precision * recall / (precision + recall)


def ground_truth_union(record: Mapping[str, Any]) -> np.ndarray:
    """(height, width) bool union of the instance masks of a detectron2 dataset dict."""
    height, width = int(record["height"]), int(record["width"])
    union = np.zeros((height, width), dtype=bool)
    for annotation in record.get("annotations", []):
        if not annotation.get("segmentation"):
            raise ValueError(
                f"{record.get('file_name')}: an annotation has no segmentation; the foreground "
                "evaluation needs instance masks"
            )
        union |= rle_to_mask(to_compressed_rle(annotation["segmentation"], height, width))
    return union


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour inside the image that is not in ``mask``."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)


def _matched(source: np.ndarray, target: np.ndarray, tolerance: float) -> int:
    """How many pixels of ``source`` lie within ``tolerance`` of a pixel of ``target``."""
    if not source.any() or not target.any():
        return 0
    distance = ndimage.distance_transform_edt(~target)
    return int((distance[source] <= tolerance).sum())


def foreground_counts(pred: np.ndarray, gt: np.ndarray, tolerance: float) -> ForegroundCounts:
    """Counts of bool maps ``pred`` and ``gt`` of one shape (H, W)."""
    if pred.shape != gt.shape:
        raise ValueError(f"maps of different shapes: {pred.shape} and {gt.shape}")
    pred, gt = pred.astype(bool), gt.astype(bool)
    pred_boundary, gt_boundary = boundary(pred), boundary(gt)
    return ForegroundCounts(
        intersection=int((pred & gt).sum()),
        union=int((pred | gt).sum()),
        boundary_pred=int(pred_boundary.sum()),
        boundary_pred_matched=_matched(pred_boundary, gt_boundary, tolerance),
        boundary_gt=int(gt_boundary.sum()),
        boundary_gt_matched=_matched(gt_boundary, pred_boundary, tolerance),
    )


def summarize(per_image: list[ForegroundCounts]) -> dict[str, float | int]:
    """Dataset-level figures (fractions in [0, 1]) of per-image counts."""
    if not per_image:
        raise ValueError("no image to summarize")
    total = per_image[0]
    for counts in per_image[1:]:
        total = total + counts
    return {
        "jaccard": total.jaccard,
        "mean_jaccard": float(np.mean([c.jaccard for c in per_image])),
        "boundary_f1": total.boundary_f1,
        "mean_boundary_f1": float(np.mean([c.boundary_f1 for c in per_image])),
        "boundary_precision": total.boundary_precision,
        "boundary_recall": total.boundary_recall,
        "num_images": len(per_image),
    }
