"""Mask post-processing shared by the proposal generators (patch-grid masks, numpy/torch)."""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from uis_d2.utils.masks import mask_iou_matrix

# 8-connectivity: on a coarse patch grid, an object's thin diagonal parts touch only at corners;
# 4-connectivity would break them off as separate "objects".
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def split_connected_components(masks: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split (M, h, w) bool masks into 8-connected components of at least ``min_size`` cells.

    Returns the components (P, h, w) and, per component, the index of the mask it came from.
    """
    components, parents = [], []
    for index, mask in enumerate(masks):
        labelled, count = scipy.ndimage.label(mask, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)
        for label in range(1, count + 1):
            if sizes[label] >= max(min_size, 1):
                components.append(labelled == label)
                parents.append(index)
    if not components:
        return np.zeros((0, *masks.shape[1:]), dtype=bool), np.zeros(0, dtype=np.int64)
    return np.stack(components), np.asarray(parents, dtype=np.int64)


def border_foreground(labels: np.ndarray) -> np.ndarray:
    """Saliency from a (h, w) cluster map: every cluster except the one on most border cells.

    For k = 2 this is the paper's rule (foreground = the cluster sharing fewer pixels with the
    image border). A tie goes to the larger cluster as background (objects are usually smaller).
    """
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    count = int(labels.max()) + 1
    border_counts = np.bincount(border, minlength=count)
    sizes = np.bincount(labels.ravel(), minlength=count)
    background = max(range(count), key=lambda c: (border_counts[c], sizes[c]))
    return labels != background


def saliency_overlap(masks: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """|mask AND saliency| / |mask| per (M, h, w) mask (0 for an empty mask)."""
    areas = masks.sum(axis=(1, 2))
    inside = (masks & saliency[None]).sum(axis=(1, 2))
    return (inside / np.maximum(areas, 1)).astype(np.float32)


def saliency_filter(
    masks: np.ndarray, saliency: np.ndarray, thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep-flags (|mask AND saliency| / |mask| >= ``thresh``) and the overlaps themselves."""
    overlap = saliency_overlap(masks, saliency)
    return overlap >= thresh, overlap


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS: indices kept, best first; a mask is dropped when its IoU with a kept,
    higher-ranked mask exceeds ``iou_thresh``. Equal scores keep the input order (stable)."""
    order = np.argsort(-scores, kind="stable")
    iou = mask_iou_matrix(torch.from_numpy(masks), torch.from_numpy(masks)).numpy()
    kept: list[int] = []
    for index in order:
        if all(iou[index, other] <= iou_thresh for other in kept):
            kept.append(int(index))
    return np.asarray(kept, dtype=np.int64)


def upsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(M, h, w) grid masks -> (M, H, W) bool: bilinear on the binary mask, threshold 0.5, which
    rounds the staircase of the patch grid into smoother boundaries than nearest neighbour."""
    if len(masks) == 0:
        return np.zeros((0, *size), dtype=bool)
    soft = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return (soft[:, 0] >= 0.5).cpu().numpy()
