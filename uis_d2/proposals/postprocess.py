"""Mask post-processing shared by the proposal generators, batched in torch on the masks' device.

A generator call hands whole stacks of patch-grid masks (all candidates of all its images) to
these functions, so a batch costs a handful of host synchronisations instead of host loops per
image and per mask; the only host work left is the tiny greedy loop of mask NMS.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from uis_d2.utils.masks import mask_iou_matrix

# Upsampling goes through float32; chunks of this many output pixels bound its memory and, on
# the CPU, keep the buffers small enough to be reused (one big call was 1.5x slower, measured).
_UPSAMPLE_CHUNK_PIXELS = 2**22


def split_connected_components(
    masks: torch.Tensor, min_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (M, h, w) bool masks into 8-connected components of at least ``min_size`` cells.

    8-connectivity because on a coarse patch grid, an object's thin diagonal parts touch only at
    corners. Returns the components (P, h, w) and, per component, the index of its mask (P,);
    ordered by mask, then by the raster position of each component's first cell (the order of
    ``scipy.ndimage.label``).

    Every cell starts with a label that is larger the earlier the cell is in raster order; 3x3
    maxima inside the mask spread each component's largest label (its first cell's) over the
    component, and pointer jumping (adopting the current label of the cell where a label
    started, which lies in the same component) shortcuts long paths. Exact for any shape (a
    spiral just takes more steps): it stops only at the fixed point, one label per component.
    """
    count, h, w = masks.shape
    if count == 0:
        return masks.new_zeros((0, h, w)), torch.zeros(0, dtype=torch.long, device=masks.device)
    # One extra row below the grid, never inside a mask: its last cell has label 0, so the
    # cell where label 0 "started" is a cell that stays 0, and jumps need no bounds check.
    masks = F.pad(masks, (0, 0, 0, 1))
    cells = (h + 1) * w
    rank = torch.arange(cells - 1, -1, -1, device=masks.device).view(h + 1, w)
    labels = torch.where(masks, rank, 0)
    # Each convergence check is a host sync: cheap on the CPU, worth batching on a GPU. Masks
    # that no longer change leave the working set (most converge long before the slowest).
    steps_per_check = 1 if masks.device.type == "cpu" else 4
    active = torch.arange(count, device=masks.device)
    while len(active):
        previous = current = labels[active]
        active_masks = masks[active]
        for _ in range(steps_per_check):
            current = _propagate(current, active_masks)
        labels[active] = current
        active = active[(current != previous).flatten(1).any(1)]
    # A component's size is counted at its first cell, where its label started.
    origin = cells - 1 - labels.flatten(1)
    owner = origin + cells * torch.arange(count, device=masks.device)[:, None]
    sizes = torch.zeros(count * cells, dtype=torch.long, device=masks.device)
    sizes.scatter_add_(0, owner.flatten(), masks.flatten().long())
    first_cells = masks & (labels == rank)
    large = first_cells.flatten(1) & (sizes.view(count, cells) >= max(min_size, 1))
    parents, cell = large.nonzero(as_tuple=True)
    components = labels[parents, :h] == rank.flatten()[cell][:, None, None]
    return components, parents


def _propagate(labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One step: 8-neighbourhood maximum inside the masks, then one pointer jump."""
    flat = torch.where(masks, _neighbourhood_max(labels), 0).flatten(1)
    origin = flat.shape[1] - 1 - flat
    return flat.gather(1, origin).view_as(labels)


def _neighbourhood_max(x: torch.Tensor) -> torch.Tensor:
    """3x3 maximum of (M, h, w) non-negative maps, zero outside. Separable shifted maxima: as
    exact as max_pool2d (which has no integer CUDA kernel) and several times faster on the CPU
    (measured)."""
    padded = F.pad(x, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def border_foreground(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Saliency from (B, h, w) cluster maps with labels in [0, ``num_clusters``): every cluster
    except the one on most border cells.

    For k = 2 this is the paper's rule (foreground = the cluster sharing fewer pixels with the
    image border). A tie goes to the larger cluster as background (objects are usually smaller),
    then to the lower label. A cell on two opposite sides of a one-cell-wide grid counts twice.
    """
    h, w = labels.shape[1:]
    border = torch.zeros(h, w, dtype=torch.long, device=labels.device)
    border[0] += 1
    border[-1] += 1
    border[1:-1, 0] += 1
    border[1:-1, -1] += 1
    one_hot = F.one_hot(labels, num_clusters)  # (B, h, w, k)
    sizes = one_hot.sum(dim=(1, 2))
    border_counts = (one_hot * border[:, :, None]).sum(dim=(1, 2))
    # Lexicographic (border count, size); argmax picks the lowest label among equal keys.
    background = (border_counts * (h * w + 1) + sizes).argmax(dim=1)
    return labels != background[:, None, None]


def saliency_overlap(masks: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """|mask AND saliency| / |mask| (float32, 0 for an empty mask) per (P, h, w) mask;
    ``saliency`` is (h, w) or one map per mask (P, h, w)."""
    areas = masks.flatten(1).sum(1)
    inside = (masks & saliency).flatten(1).sum(1)
    # Divided in float64 then rounded, so the value does not depend on the device's float32 path.
    return (inside.double() / areas.clamp(min=1).double()).float()


def saliency_filter(
    masks: torch.Tensor, saliency: torch.Tensor, thresh: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-flags (overlap >= ``thresh``) and the overlaps themselves (see saliency_overlap)."""
    overlap = saliency_overlap(masks, saliency)
    return overlap >= thresh, overlap


def mask_nms(
    masks: torch.Tensor,
    scores: np.ndarray,
    iou_thresh: float,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy NMS within each group (e.g. the image a mask belongs to), all groups in one go.

    A mask is dropped when its IoU with a kept, higher-ranked mask of its group exceeds
    ``iou_thresh``; equal scores keep the input order (stable). Returns the kept indices (host
    int64), by increasing group, best first within a group. The IoUs are computed on the masks'
    device and only each group's block comes to the host, in one transfer.
    """
    groups = np.zeros(len(scores), dtype=np.int64) if groups is None else np.asarray(groups)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    size = max(len(m) for m in members)
    rows = np.stack([np.resize(m, size) for m in members])  # padded by repeating; sliced off
    rows_t = torch.from_numpy(rows).to(masks.device)
    iou = mask_iou_matrix(masks, masks)
    blocks = iou[rows_t[:, :, None], rows_t[:, None, :]].cpu().numpy()
    kept = []
    for member, block in zip(members, blocks, strict=True):
        n = len(member)
        block = block[:n, :n]
        suppressed = np.zeros(n, dtype=bool)
        for index in np.argsort(-scores[member], kind="stable"):
            if not suppressed[index]:
                kept.append(member[index])
                suppressed |= block[:, index] > iou_thresh
    return np.asarray(kept, dtype=np.int64)


def upsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(M, h, w) grid masks -> (M, H, W) bool on their device: bilinear on the binary mask,
    threshold 0.5, which rounds the staircase of the patch grid into smoother boundaries than
    nearest neighbour."""
    out = torch.empty((len(masks), *size), dtype=torch.bool, device=masks.device)
    chunk = max(1, _UPSAMPLE_CHUNK_PIXELS // max(1, size[0] * size[1]))
    for start in range(0, len(masks), chunk):
        grid = masks[start : start + chunk, None].float()
        soft = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        out[start : start + chunk] = soft[:, 0] >= 0.5
    return out
