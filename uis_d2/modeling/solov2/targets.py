"""SOLOv2 target assignment: which grid cells of which levels predict which instance.

An instance goes to every level whose inclusive range contains sqrt(box area) (neighbouring ranges
overlap, so it can go to two). On such a level the positive cells are those whose centre region,
sigma x the half box around the mask's centre of mass, touches them, limited to the 3 x 3 cells
around the centre-of-mass cell. When two instances claim one cell the smaller one keeps it
(instances are written from the largest to the smallest), so every positive cell has exactly
one instance. Boxes come from the masks, the one source of truth after copy-paste.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.structures import Instances

from uis_d2.utils.masks import masks_to_boxes_xyxy


@dataclass
class LevelAssignment:
    """One level of one image: (S, S) instance index (-1 = negative) and class label."""

    instance: torch.Tensor
    labels: torch.Tensor


@dataclass
class GridTargets:
    """Targets of one batch. Cells are indexed in the levels' concatenated flat order; positives
    are sorted by image, so per-image slices of them are contiguous."""

    labels: torch.Tensor  # (B, cells) int64; NUM_CLASSES = background
    pos_image: torch.Tensor  # (P,) image of each positive
    pos_cell: torch.Tensor  # (P,) flat cell of each positive
    pos_level: torch.Tensor  # (P,) FPN level of each positive's cell
    mask_targets: torch.Tensor  # (P, Hm, Wm) fraction of each stride-4 pixel inside the mask
    boxes: torch.Tensor  # (P, 4) x1 y1 x2 y2 of the mask, in mask-feature pixels
    embeddings: torch.Tensor | None  # (P, D) target embeddings; None when no image has any
    has_embedding: torch.Tensor  # (P,) bool: the positive's image carries gt_embeddings

    @property
    def num_positives(self) -> int:
        return int(self.pos_cell.numel())


def assign_image(
    masks: torch.Tensor,
    classes: torch.Tensor,
    grids: Sequence[int],
    scale_ranges: Sequence[Sequence[float]],
    sigma: float,
    num_classes: int,
) -> list[LevelAssignment]:
    """Assign the (N, H, W) bool masks of one (padded) image to the cells of every level."""
    height, width = masks.shape[-2:]
    boxes = masks_to_boxes_xyxy(masks)
    box_w = boxes[:, 2] - boxes[:, 0]
    box_h = boxes[:, 3] - boxes[:, 1]
    scales = torch.sqrt(box_w * box_h)
    centres = _centres_of_mass(masks)
    order = torch.argsort(box_w * box_h, descending=True).tolist()

    levels = []
    for grid, (low, high) in zip(grids, scale_ranges, strict=True):
        instance = torch.full((grid, grid), -1, dtype=torch.long)
        for n in order:
            if scales[n] <= 0 or not low <= float(scales[n]) <= high:
                continue
            cy, cx = float(centres[n, 0]), float(centres[n, 1])
            half_h = 0.5 * float(box_h[n]) * sigma
            half_w = 0.5 * float(box_w[n]) * sigma
            rows = _cell_span(cy, half_h, height, grid)
            cols = _cell_span(cx, half_w, width, grid)
            instance[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = n
        labels = torch.full((grid, grid), num_classes, dtype=torch.long)
        positive = instance >= 0
        labels[positive] = classes.cpu()[instance[positive]]
        levels.append(LevelAssignment(instance=instance, labels=labels))
    return levels


def _centres_of_mass(masks: torch.Tensor) -> torch.Tensor:
    """(N, 2) (y, x) centre of mass of each mask, in pixel units with pixel centres at +0.5."""
    weights = masks.float()
    area = weights.sum(dim=(1, 2)).clamp(min=1.0)
    ys = torch.arange(masks.shape[1], dtype=torch.float32) + 0.5
    xs = torch.arange(masks.shape[2], dtype=torch.float32) + 0.5
    cy = (weights.sum(dim=2) * ys).sum(dim=1) / area
    cx = (weights.sum(dim=1) * xs).sum(dim=1) / area
    return torch.stack([cy, cx], dim=1)


def _cell_span(centre: float, half: float, size: int, grid: int) -> tuple[int, int]:
    """First and last cell (inclusive) of the centre region along one axis."""
    centre_cell = min(int(centre / size * grid), grid - 1)
    first = max(int(math.floor((centre - half) / size * grid)), 0, centre_cell - 1)
    last = min(int(math.floor((centre + half) / size * grid)), grid - 1, centre_cell + 1)
    return first, last


def downsample_masks(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, H/stride, W/stride) float: the covered fraction of each block, so
    small masks never vanish and projections match those of the full-resolution mask."""
    if masks.shape[0] == 0:
        h, w = masks.shape[-2:]
        return masks.new_zeros((0, h // stride, w // stride), dtype=torch.float32)
    return F.avg_pool2d(masks[:, None].float(), stride, stride)[:, 0]


def pad_masks(masks: torch.Tensor, padded_hw: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (N, h, w) masks at the bottom and right to the batch's padded size."""
    h, w = masks.shape[-2:]
    return F.pad(masks, (0, padded_hw[1] - w, 0, padded_hw[0] - h))


def build_targets(
    instances: Sequence[Instances],
    padded_hw: tuple[int, int],
    grids: Sequence[int],
    scale_ranges: Sequence[Sequence[float]],
    sigma: float,
    num_classes: int,
    mask_stride: int = 4,
) -> GridTargets:
    """Grid labels and, for every positive cell, its mask target, box and embedding."""
    device = instances[0].gt_classes.device if instances else torch.device("cpu")
    labels, pos_image, pos_cell, mask_targets, boxes = [], [], [], [], []
    embeddings: list[torch.Tensor | None] = []
    for image_index, inst in enumerate(instances):
        masks = pad_masks(inst.gt_masks.tensor.bool(), padded_hw)
        levels = assign_image(masks.cpu(), inst.gt_classes, grids, scale_ranges, sigma, num_classes)
        labels.append(torch.cat([lvl.labels.flatten() for lvl in levels]))
        cell_instance = torch.cat([lvl.instance.flatten() for lvl in levels]).to(device)
        cells = torch.nonzero(cell_instance >= 0).flatten()
        owners = cell_instance[cells]
        pos_image.append(torch.full_like(cells, image_index))
        pos_cell.append(cells)
        mask_targets.append(downsample_masks(masks, mask_stride)[owners])
        boxes.append(masks_to_boxes_xyxy(masks)[owners] / mask_stride)
        image_embeddings = inst.get("gt_embeddings") if inst.has("gt_embeddings") else None
        embeddings.append(None if image_embeddings is None else image_embeddings.float()[owners])
    has_embedding = torch.cat(
        [
            torch.full((len(c),), e is not None, dtype=torch.bool)
            for c, e in zip(pos_cell, embeddings)
        ]
    ).to(device)
    cell_level = torch.cat(
        [torch.full((grid * grid,), level) for level, grid in enumerate(grids)]
    ).to(device)
    all_pos_cell = torch.cat(pos_cell)
    return GridTargets(
        labels=torch.stack(labels).to(device),
        pos_image=torch.cat(pos_image),
        pos_cell=all_pos_cell,
        pos_level=cell_level[all_pos_cell],
        mask_targets=torch.cat(mask_targets),
        boxes=torch.cat(boxes),
        embeddings=_stack_embeddings(embeddings, pos_cell),
        has_embedding=has_embedding,
    )


def _stack_embeddings(
    embeddings: list[torch.Tensor | None], pos_cell: list[torch.Tensor]
) -> torch.Tensor | None:
    """Concatenate per-image embeddings, zero rows for images without any (masked out later)."""
    present = [e for e in embeddings if e is not None]
    if not present:
        return None
    dim = present[0].shape[1]
    for e in present:
        if e.shape[1] != dim:
            raise ValueError(
                f"gt_embeddings of one batch differ in dimension: {e.shape[1]} vs {dim}"
            )
    rows = [
        e if e is not None else cells.new_zeros((len(cells), dim), dtype=torch.float32)
        for e, cells in zip(embeddings, pos_cell, strict=True)
    ]
    return torch.cat(rows)
