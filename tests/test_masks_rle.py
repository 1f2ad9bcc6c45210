"""The batched COCO RLE encoder (masks_to_rles) and the RLE-derived boxes and areas.

Reference: the per-mask pycocotools path (mask_to_rle, mask_to_box_xywh); the batched one must
give equal dicts for every mask, on CPU and, when present, CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fuzz_strategies import FUZZ, mask_stacks
from hypothesis import given

from uis_d2.utils.masks import (
    mask_to_box_xywh,
    mask_to_rle,
    masks_to_rles,
    rle_areas,
    rle_boxes_xywh,
)


def _assert_encodes_like_reference(stack: np.ndarray, device: str = "cpu") -> None:
    rles = masks_to_rles(torch.from_numpy(stack).to(device))
    assert rles == [mask_to_rle(mask) for mask in stack]


def _with_pixels(h: int, w: int, *pixels: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    for y, x in pixels:
        mask[y, x] = True
    return mask


def _edge_cases(h: int, w: int) -> np.ndarray:
    """Runs that start at the first pixel, end at the last, wrap columns, or fill one line."""
    cases = [
        np.zeros((h, w), bool),
        np.ones((h, w), bool),
        _with_pixels(h, w, (0, 0)),
        _with_pixels(h, w, (h - 1, w - 1)),
        _with_pixels(h, w, (h - 1, 0), (0, min(1, w - 1))),  # a run across columns
        _with_pixels(h, w, (0, w - 1)),
        _with_pixels(h, w, (h - 1, 0)),
    ]
    for line in (np.s_[:, 0], np.s_[:, -1], np.s_[0, :], np.s_[-1, :]):
        mask = np.zeros((h, w), bool)
        mask[line] = True
        cases += [mask, ~mask]
    return np.stack(cases)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 5), (7, 13), (13, 7)])
def test_edge_cases_match_the_per_mask_encoder(shape):
    _assert_encodes_like_reference(_edge_cases(*shape))


@pytest.mark.parametrize("shape", [(30, 40), (41, 17)])
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
def test_random_masks_match_the_per_mask_encoder(shape, density):
    rng = np.random.default_rng([*shape, int(100 * density)])
    _assert_encodes_like_reference(rng.random((6, *shape)) < density)


def test_no_masks_and_zero_sized_masks():
    assert masks_to_rles(torch.zeros((0, 4, 5), dtype=torch.bool)) == []
    _assert_encodes_like_reference(np.zeros((2, 0, 5), bool))
    _assert_encodes_like_reference(np.zeros((2, 5, 0), bool))


def test_non_contiguous_and_non_bool_input():
    stack = np.random.default_rng(0).random((3, 8, 11)) < 0.4
    flipped = torch.from_numpy(stack.copy()).flip(2)
    assert masks_to_rles(flipped) == [mask_to_rle(m) for m in stack[:, :, ::-1]]
    transposed = torch.from_numpy(stack.copy()).transpose(1, 2)
    assert masks_to_rles(transposed) == [mask_to_rle(m.T) for m in stack]
    as_uint8 = torch.from_numpy(stack.astype(np.uint8) * 3)  # nonzero = set
    assert masks_to_rles(as_uint8) == [mask_to_rle(m) for m in stack]


def test_rejects_a_single_mask():
    with pytest.raises(ValueError, match=r"\(N, H, W\).*\(4, 5\)"):
        masks_to_rles(torch.zeros((4, 5), dtype=torch.bool))


@FUZZ
@given(mask_stacks(min_size=0))
def test_fuzz_batched_encoding_boxes_and_areas(stack):
    rles = masks_to_rles(torch.from_numpy(stack))
    assert rles == [mask_to_rle(mask) for mask in stack]
    assert rle_areas(rles) == [int(mask.sum()) for mask in stack]
    assert rle_boxes_xywh(rles) == [mask_to_box_xywh(mask) for mask in stack]


def test_boxes_and_areas_of_blobs():
    ys, xs = np.mgrid[:60, :80]
    disc = (ys - 30) ** 2 + (xs - 20) ** 2 <= 15**2
    two_discs = disc | ((ys - 10) ** 2 + (xs - 70) ** 2 <= 5**2)  # two parts, disjoint columns
    stack = np.stack([disc, two_discs, np.zeros_like(disc)])
    rles = masks_to_rles(torch.from_numpy(stack))
    assert rle_boxes_xywh(rles) == [[5.0, 15.0, 31.0, 31.0], [5.0, 5.0, 71.0, 41.0], [0.0] * 4]
    assert rle_areas(rles) == [int(m.sum()) for m in stack]
    assert rle_areas([]) == [] and rle_boxes_xywh([]) == []


def test_areas_of_more_rles_than_pycocotools_takes_at_once():
    """pycocotools' area() overflows a uint8 count beyond 255 RLEs; images with random-weight
    features get hundreds of proposals (seen on a GPU benchmark)."""
    stack = np.random.default_rng(4).random((600, 6, 7)) < 0.5
    rles = masks_to_rles(torch.from_numpy(stack))
    assert rle_areas(rles) == stack.sum(axis=(1, 2)).tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_match_the_per_mask_encoder():
    rng = np.random.default_rng(1)
    _assert_encodes_like_reference(rng.random((5, 33, 47)) < 0.3, device="cuda")
    _assert_encodes_like_reference(_edge_cases(6, 9), device="cuda")
