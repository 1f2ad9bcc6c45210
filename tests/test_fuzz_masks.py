"""Property-based tests of the mask helpers (deterministic: derandomized hypothesis)."""

from __future__ import annotations

import json

import numpy as np
import torch
from fuzz_strategies import FUZZ, mask_stacks, masks
from hypothesis import given
from hypothesis import strategies as st

from uis_d2.data.validation import rle_string_runs
from uis_d2.utils.masks import (
    mask_iou_matrix,
    mask_to_box_xywh,
    mask_to_rle,
    masks_to_boxes_xyxy,
    rle_to_mask,
)


def _brute_force_box(mask: np.ndarray) -> list[float]:
    ys = [y for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    xs = [x for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    if not xs:
        return [0.0, 0.0, 0.0, 0.0]
    return [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]


@FUZZ
@given(masks())
def test_rle_round_trip_through_json(mask):
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
    decoded = rle_to_mask(json.loads(json.dumps(rle)))
    assert decoded.dtype == bool and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)


@FUZZ
@given(masks())
def test_uncompressed_rle_decodes_to_the_same_mask(mask):
    runs = rle_string_runs([mask_to_rle(mask)["counts"]])[0]
    assert runs.sum() == mask.size and runs[1::2].sum() == mask.sum()
    uncompressed = {"size": list(mask.shape), "counts": runs.tolist()}
    np.testing.assert_array_equal(rle_to_mask(uncompressed), mask)


@FUZZ
@given(masks())
def test_box_xywh_matches_brute_force(mask):
    assert mask_to_box_xywh(mask) == _brute_force_box(mask)


@FUZZ
@given(mask_stacks())
def test_xyxy_boxes_agree_with_xywh_boxes(stack):
    boxes = masks_to_boxes_xyxy(torch.from_numpy(stack))
    assert boxes.shape == (len(stack), 4) and boxes.dtype == torch.float32
    for mask, box in zip(stack, boxes.tolist(), strict=True):
        x, y, w, h = mask_to_box_xywh(mask)
        assert box == ([x, y, x + w, y + h] if mask.any() else [0.0, 0.0, 0.0, 0.0])


@FUZZ
@given(mask_stacks(min_size=0), st.integers(0, 6))
def test_iou_matrix_properties(stack, num_columns):
    masks_t = torch.from_numpy(stack)
    iou = mask_iou_matrix(masks_t, masks_t)
    assert iou.shape == (len(stack), len(stack))
    assert torch.allclose(iou, iou.T)
    assert iou.numel() == 0 or (iou.min() >= 0 and iou.max() <= 1 + 1e-6)
    nonempty = masks_t.flatten(1).any(dim=1)
    assert torch.allclose(iou.diagonal()[nonempty], torch.ones(int(nonempty.sum())))
    assert (iou.diagonal()[~nonempty] == 0).all()
    for i, a in enumerate(stack):
        for j, b in enumerate(stack):
            union = (a | b).sum()
            expected = (a & b).sum() / union if union else 0.0
            assert abs(iou[i, j].item() - expected) < 1e-6
    # Against a subset of the same masks (possibly none): the matching block of the full matrix.
    columns = masks_t[:num_columns]
    assert torch.equal(mask_iou_matrix(masks_t, columns), iou[:, : len(columns)])
