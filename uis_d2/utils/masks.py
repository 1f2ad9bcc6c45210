"""Binary-mask helpers shared by proposals, training and evaluation (COCO RLE conventions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an (H, W) binary mask as a json-ready COCO RLE (``counts`` as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a compressed or uncompressed COCO RLE to an (H, W) bool mask."""
    if isinstance(rle.get("counts"), list):
        h, w = rle["size"]
        rle = mask_utils.frPyObjects(rle, h, w)
    return mask_utils.decode(rle).astype(bool)


def mask_to_box_xywh(mask: np.ndarray) -> list[float]:
    """Tight COCO box [x, y, w, h] of a binary mask; zeros for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 4) float boxes x1 y1 x2 y2 (exclusive max); zeros if empty."""
    n = masks.shape[0]
    boxes = masks.new_zeros((n, 4), dtype=torch.float32)
    if n == 0:
        return boxes
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    h, w = masks.shape[1:]
    nonempty = rows.any(dim=1)
    y_idx = torch.arange(h, device=masks.device)
    x_idx = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, y_idx, h).min(dim=1).values
    y2 = torch.where(rows, y_idx, -1).max(dim=1).values + 1
    x1 = torch.where(cols, x_idx, w).min(dim=1).values
    x2 = torch.where(cols, x_idx, -1).max(dim=1).values + 1
    boxes[:] = torch.stack([x1, y1, x2, y2], dim=1).float()
    boxes[~nonempty] = 0
    return boxes


def mask_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU between every mask of ``a`` (N, H, W) and ``b`` (M, H, W), as one matmul."""
    a_flat = a.flatten(1).float()  # flatten, unlike reshape(n, -1), accepts n = 0
    b_flat = b.flatten(1).float()
    inter = a_flat @ b_flat.T
    union = a_flat.sum(1)[:, None] + b_flat.sum(1)[None, :] - inter
    return inter / union.clamp(min=1.0)
