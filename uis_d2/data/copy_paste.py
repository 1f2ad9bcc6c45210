"""Copy-paste augmentation on numpy arrays (FreeSOLO / CutLER style).

Pasting instances of another image teaches the model occlusions and new layouts that the
pseudo-labels of any single image lack. The function is pure (the caller supplies the random
generator), so the data-loader mapper stays free of shared mutable state and tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CopyPasteParams:
    """How instances are pasted (cfg.INPUT.COPY_PASTE)."""

    max_instances: int = 5
    scale_range: tuple[float, float] = (0.3, 1.0)
    max_shift: float = 0.5
    occlusion_thresh: float = 0.5
    min_area: int = 1


@dataclass
class CopyPasteResult:
    """The augmented image and masks; masks of surviving target instances come first.

    ``target_index`` / ``source_index`` say which input instance each output mask came from, so
    per-instance attributes (scores, embeddings) follow their masks via :meth:`gather`.
    """

    image: np.ndarray
    masks: np.ndarray
    target_index: np.ndarray
    source_index: np.ndarray

    def gather(self, target_values: np.ndarray, source_values: np.ndarray) -> np.ndarray:
        """Per-instance values of the output masks, in output order."""
        return np.concatenate(
            [target_values[self.target_index], source_values[self.source_index]], axis=0
        )


def copy_paste(
    image: np.ndarray,
    masks: np.ndarray,
    source_image: np.ndarray,
    source_masks: np.ndarray,
    params: CopyPasteParams,
    rng: np.random.Generator,
) -> CopyPasteResult:
    """Paste a random subset of ``source_masks`` (with their pixels) into ``image``.

    Args:
        image: (H, W, C) uint8 target image.
        masks: (N, H, W) bool masks of the target image.
        source_image: (h, w, C) image the pasted instances come from (any size).
        source_masks: (M, h, w) bool masks of the source image.

    The source is resized to the target size, scaled by U(scale_range) and shifted by up to
    ``max_shift`` of the image size (clipped at the border). A pasted mask covering at least
    ``occlusion_thresh`` of an existing mask is dropped, since that instance would be mostly
    hidden by a label it never had; existing masks then lose the pasted pixels, and masks left
    with fewer than ``min_area`` pixels are dropped.
    """
    height, width = image.shape[:2]
    n_target = masks.shape[0]
    keep_all_target = np.arange(n_target)
    unchanged = CopyPasteResult(image, masks, keep_all_target, np.zeros(0, dtype=np.int64))
    if source_masks.shape[0] == 0 or params.max_instances <= 0:
        return unchanged

    n_paste = int(rng.integers(1, min(params.max_instances, source_masks.shape[0]) + 1))
    chosen = np.sort(rng.choice(source_masks.shape[0], size=n_paste, replace=False))
    placed_image, placed_masks = _place_source(
        source_image, source_masks[chosen], (height, width), params, rng
    )

    pasted_area = placed_masks.sum(axis=(1, 2))
    keep_pasted = pasted_area >= max(params.min_area, 1)
    if n_target:
        keep_pasted &= ~_occludes_existing(placed_masks, masks, params.occlusion_thresh)
    if not keep_pasted.any():
        return unchanged
    pasted = placed_masks[keep_pasted]
    source_index = chosen[keep_pasted]

    covered = pasted.any(axis=0)
    out_image = image.copy()
    out_image[covered] = placed_image[covered]
    remaining = masks & ~covered[None]
    keep_target = remaining.sum(axis=(1, 2)) >= max(params.min_area, 1)
    return CopyPasteResult(
        image=out_image,
        masks=np.concatenate([remaining[keep_target], pasted], axis=0),
        target_index=keep_all_target[keep_target],
        source_index=source_index,
    )


def _place_source(
    source_image: np.ndarray,
    source_masks: np.ndarray,
    size: tuple[int, int],
    params: CopyPasteParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize the source to ``size``, scale and shift it; returns the image and masks in the
    target frame (pixels outside the shifted source are zero / False)."""
    height, width = size
    scale = float(rng.uniform(*params.scale_range))
    scaled_h = max(1, round(height * scale))
    scaled_w = max(1, round(width * scale))
    # Centre of the scaled source, relative to the image centre, in pixels.
    shift_y = rng.uniform(-params.max_shift, params.max_shift) * height
    shift_x = rng.uniform(-params.max_shift, params.max_shift) * width
    top = round((height - scaled_h) / 2 + shift_y)
    left = round((width - scaled_w) / 2 + shift_x)

    scaled_image = cv2.resize(source_image, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)
    if scaled_image.ndim == 2:
        scaled_image = scaled_image[:, :, None]
    scaled_masks = np.stack(
        [
            cv2.resize(m.astype(np.uint8), (scaled_w, scaled_h), interpolation=cv2.INTER_NEAREST)
            for m in source_masks
        ]
    ).astype(bool)

    placed_image = np.zeros((height, width, source_image.shape[2]), dtype=source_image.dtype)
    placed_masks = np.zeros((source_masks.shape[0], height, width), dtype=bool)
    y0, y1 = max(top, 0), min(top + scaled_h, height)
    x0, x1 = max(left, 0), min(left + scaled_w, width)
    if y0 < y1 and x0 < x1:
        src_rows = slice(y0 - top, y1 - top)
        src_cols = slice(x0 - left, x1 - left)
        placed_image[y0:y1, x0:x1] = scaled_image[src_rows, src_cols]
        placed_masks[:, y0:y1, x0:x1] = scaled_masks[:, src_rows, src_cols]
    return placed_image, placed_masks


def _occludes_existing(pasted: np.ndarray, existing: np.ndarray, thresh: float) -> np.ndarray:
    """(P,) bool: pasted mask p covers >= ``thresh`` of at least one existing mask.

    Intersections are counted inside each pasted mask's bounding box only, which keeps memory
    at a few pasted boxes instead of (P x N x H x W) at full resolution.
    """
    existing_area = existing.sum(axis=(1, 2))
    occludes = np.zeros(pasted.shape[0], dtype=bool)
    for i, mask in enumerate(pasted):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        intersection = (existing[:, box[0], box[1]] & mask[box][None]).sum(axis=(1, 2))
        covered = intersection >= thresh * existing_area
        occludes[i] = bool((covered & (existing_area > 0)).any())
    return occludes
