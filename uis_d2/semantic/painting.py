"""Instance masks with pseudo-classes painted into semantic pseudo-label maps.

Two rules, one per reference; both give uint8 maps with 0 = background and 1 + class on the
painted pixels (classes 0..K-1, so K <= 254: 255 is the ignore value).

- ``paint_confident`` (MaskDistill sec. 3.3, ref ``gen_segmentation.py``): the class-aware
  instance model's confident predictions (score >= tau, 0.9; the single most confident one when
  none passes), painted by decreasing score into an all-background map; a mask touching any
  pixel painted before it is dropped whole (the ref keeps "the most confident mask when two
  overlap").
- ``paint_initial`` (COMUS sec. 3.1): the image's salient mask with its cluster's class on a
  background map. COMUS has one mask per image; with several, the most confident is on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from uis_d2.data.semantic import IGNORE_LABEL, paint_masks

# MaskDistill's confidence threshold tau (paper 4.1; mIoU plateaus from about 0.75, Fig. 5).
CONFIDENT_SCORE = 0.9


def _check_classes(classes: np.ndarray) -> None:
    if classes.size and (classes.min() < 0 or classes.max() >= IGNORE_LABEL - 1):
        raise ValueError(
            f"pseudo-classes must lie in 0..{IGNORE_LABEL - 2} (1 + class is the painted value, "
            f"{IGNORE_LABEL} = ignore), got {classes.min()}..{classes.max()}"
        )


def _by_decreasing_score(scores: Sequence[float]) -> np.ndarray:
    """Indices by decreasing score; equal scores keep their given order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def paint_confident(
    masks: np.ndarray,
    scores: Sequence[float],
    classes: Sequence[int],
    score_thresh: float = CONFIDENT_SCORE,
) -> np.ndarray:
    """MaskDistill's map of one image from its predictions: ``masks`` (N, H, W) bool,
    ``scores`` (N,), ``classes`` (N,) in 0..K-1. No prediction gives an all-background map."""
    masks = np.asarray(masks, dtype=bool)
    classes = np.asarray(classes, dtype=np.int64)
    _check_classes(classes)
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    order = _by_decreasing_score(scores)
    if order.size == 0:
        return labels
    confident = order[np.asarray(scores, dtype=np.float64)[order] >= score_thresh]
    painted = np.zeros(labels.shape, dtype=bool)
    for index in confident if confident.size else order[:1]:
        mask = masks[index]
        if (mask & painted).any():
            continue
        labels[mask] = 1 + classes[index]
        painted |= mask
    return labels


def paint_initial(
    masks: np.ndarray, classes: Sequence[int], scores: Sequence[float] | None = None
) -> np.ndarray:
    """COMUS's initial map of one image: 1 + cluster id on its mask(s), 0 elsewhere; with
    several masks the most confident (``scores``, else the first) is painted last, on top."""
    masks = np.asarray(masks, dtype=bool)
    classes = np.asarray(classes, dtype=np.int64)
    _check_classes(classes)
    order = _by_decreasing_score(np.zeros(len(masks)) if scores is None else scores)[::-1]
    return paint_masks(masks[order], 1 + classes[order], *masks.shape[1:])
