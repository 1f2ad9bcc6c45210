"""SOLOv2 target assignment on hand-made masks (64 x 64 image, levels S = 8 and S = 4)."""

from __future__ import annotations

import uis_d2  # noqa: F401

# isort: split
import pytest
import torch
from detectron2.structures import BitMasks, Instances

from uis_d2.modeling.solov2.targets import assign_image, build_targets, downsample_masks

GRIDS = [8, 4]
RANGES = [[1, 16], [16, 64]]
BACKGROUND = 3


def masks_from(*boxes: tuple[int, int, int, int], size: int = 64) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for m, (y1, x1, y2, x2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = True
    return masks


def positive_cells(level) -> set[tuple[int, int]]:
    return {tuple(c) for c in torch.nonzero(level.instance >= 0).tolist()}


def test_boundary_scale_goes_to_both_levels_with_sigma_region_cells():
    # 16 x 16 square: sqrt(area) = 16 is in both inclusive ranges. Centre of mass (16, 16),
    # half region 0.2 * 8 = 1.6 px -> rows/cols 14.4..17.6 -> cells 1..2 at S=8, 0..1 at S=4.
    levels = assign_image(masks_from((8, 8, 24, 24)), torch.tensor([2]), GRIDS, RANGES, 0.2, 3)
    assert positive_cells(levels[0]) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert positive_cells(levels[1]) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(levels[0].labels[levels[0].instance >= 0].tolist()) == {2}
    assert (levels[0].labels[levels[0].instance < 0] == BACKGROUND).all()


def test_large_instance_only_on_coarse_level():
    # 32 x 48 box: sqrt(1536) = 39.2 -> level 1 only. Centre (48, 24); half region (3.2, 4.8)
    # -> rows 44.8..51.2 = cells 2..3, cols 19.2..28.8 = cell 1 (cells are 16 px).
    levels = assign_image(masks_from((32, 0, 64, 48)), torch.tensor([0]), GRIDS, RANGES, 0.2, 3)
    assert positive_cells(levels[0]) == set()
    assert positive_cells(levels[1]) == {(2, 1), (3, 1)}


def test_centre_region_is_limited_to_three_by_three_cells():
    # sigma = 1 makes the region the whole 64 x 64 box (all 8 x 8 cells), but only the 3 x 3
    # cells around the centre-of-mass cell (32 / 8 = 4) may be positive.
    mask = torch.ones(1, 64, 64, dtype=torch.bool)
    levels = assign_image(mask, torch.tensor([0]), [8], [[1, 64]], sigma=1.0, num_classes=1)
    assert positive_cells(levels[0]) == {(r, c) for r in (3, 4, 5) for c in (3, 4, 5)}


def test_centre_of_mass_not_box_centre_picks_the_cell():
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 0:16, 0:4] = True  # tall bar on the left (64 px)
    mask[0, 12:16, 0:16] = True  # foot along the bottom (48 px): mass at y ~ 10.9, x ~ 3.8
    levels = assign_image(mask, torch.tensor([0]), [8], [[1, 64]], sigma=0.0, num_classes=1)
    assert positive_cells(levels[0]) == {(1, 0)}  # the box centre (8, 8) would give (1, 1)


def test_smaller_instance_wins_a_shared_cell_and_empty_masks_are_ignored():
    big = (8, 8, 24, 24)  # 16 x 16 -> cells rows/cols 1..2
    small = (14, 14, 19, 19)  # 5 x 5, centre (16.5, 16.5) -> cell (2, 2) with sigma 0.2
    masks = torch.cat([masks_from(big, small), torch.zeros(1, 64, 64, dtype=torch.bool)])
    levels = assign_image(masks, torch.tensor([0, 1, 2]), [8], [[0, 64]], 0.2, 3)
    instance = levels[0].instance
    assert instance[2, 2] == 1 and levels[0].labels[2, 2] == 1
    assert instance[1, 1] == 0
    assert not (instance == 2).any()


def test_build_targets_gathers_masks_boxes_and_embeddings_per_positive():
    masks = masks_from((8, 8, 24, 24), size=64)[:, :60, :56]  # image smaller than the padding
    inst = Instances((60, 56))
    inst.gt_masks = BitMasks(masks)
    inst.gt_classes = torch.tensor([0])
    inst.gt_embeddings = torch.tensor([[1.0, 2.0, 3.0]])
    bare = Instances((60, 56))
    bare.gt_masks = BitMasks(masks_from((32, 0, 64, 48))[:, :60, :56])
    bare.gt_classes = torch.tensor([0])
    targets = build_targets([inst, bare], (64, 64), GRIDS, RANGES, 0.2, num_classes=1)

    assert targets.labels.shape == (2, 8 * 8 + 4 * 4)
    assert targets.num_positives == int((targets.labels == 0).sum())
    first = targets.pos_image == 0
    assert int(first.sum()) == 8  # 4 cells on each level
    assert targets.pos_image.tolist() == sorted(targets.pos_image.tolist())
    assert targets.mask_targets.shape == (targets.num_positives, 16, 16)
    expected = torch.zeros(16, 16)
    expected[2:6, 2:6] = 1.0
    assert torch.equal(targets.mask_targets[0], expected)
    assert targets.boxes[0].tolist() == [2.0, 2.0, 6.0, 6.0]
    assert targets.has_embedding.tolist() == first.tolist()
    assert targets.embeddings[first].tolist() == [[1.0, 2.0, 3.0]] * 8
    assert torch.equal(targets.embeddings[~first], torch.zeros(int((~first).sum()), 3))


def test_downsample_keeps_small_masks_as_fractions():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 0, 0] = True
    assert downsample_masks(mask, 4)[0, 0, 0] == pytest.approx(1 / 16)
