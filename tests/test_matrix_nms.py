"""Matrix NMS: exact decays on small cases."""

from __future__ import annotations

import math

import uis_d2  # noqa: F401

# isort: split
import pytest
import torch

from uis_d2.layers.matrix_nms import matrix_nms


def boxes_as_masks(*boxes: tuple[int, int, int, int], size: int = 8) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for m, (y1, x1, y2, x2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = True
    return masks


# Two 4x4 squares sharing 8 pixels: IoU = 8 / (16 + 16 - 8) = 1/3.
OVERLAPPING = boxes_as_masks((0, 0, 4, 4), (0, 2, 4, 6))


def test_gaussian_decay_of_a_duplicate_is_exact():
    out = matrix_nms(OVERLAPPING, torch.tensor([0.9, 0.8]), kernel="gaussian", sigma=2.0)
    assert out[0] == pytest.approx(0.9)
    assert out[1] == pytest.approx(0.8 * math.exp(-2.0 * (1 / 3) ** 2))


def test_linear_decay_of_a_duplicate_is_exact():
    out = matrix_nms(OVERLAPPING, torch.tensor([0.9, 0.8]), kernel="linear")
    assert out.tolist() == pytest.approx([0.9, 0.8 * (1 - 1 / 3)])


def test_distinct_masks_keep_their_scores():
    masks = boxes_as_masks((0, 0, 3, 3), (4, 4, 8, 8))
    scores = torch.tensor([0.7, 0.6])
    assert torch.equal(matrix_nms(masks, scores), scores)


def test_scores_come_back_in_input_order():
    out = matrix_nms(OVERLAPPING, torch.tensor([0.8, 0.9]), kernel="linear")
    assert out.tolist() == pytest.approx([0.8 * (1 - 1 / 3), 0.9])


def test_class_aware_only_suppresses_within_a_class():
    scores = torch.tensor([0.9, 0.8])
    out = matrix_nms(OVERLAPPING, scores, labels=torch.tensor([0, 1]))
    assert torch.equal(out, scores)
    out = matrix_nms(OVERLAPPING, scores, labels=torch.tensor([1, 1]))
    assert out[1] < 0.8


def test_a_suppressed_mask_suppresses_less():
    # B overlaps A (IoU 12/20 = 0.6); C overlaps only B (IoU 4/28 = 1/7) and less than B's own
    # overlap with A, so the compensated decay from B is > 1 and C keeps its score.
    masks = boxes_as_masks((0, 0, 4, 4), (0, 1, 4, 5), (0, 4, 4, 8))
    out = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.7]), sigma=2.0)
    assert out[1] == pytest.approx(0.8 * math.exp(-2.0 * 0.6**2))
    assert out[2] == pytest.approx(0.7)  # uncompensated it would be 0.7 * exp(-2 / 49)


def test_empty_input_and_bad_kernel():
    assert matrix_nms(torch.zeros(0, 4, 4), torch.zeros(0)).numel() == 0
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(OVERLAPPING, torch.tensor([0.9, 0.8]), kernel="box")
