"""Copy-paste: occlusion rules, dropped instances, pixels and attribute bookkeeping."""

import numpy as np
import pytest

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.data.copy_paste import CopyPasteParams, copy_paste

# Identity placement: no rescaling, no shift, so pasted masks land exactly where they were drawn.
IDENTITY = CopyPasteParams(max_instances=1, scale_range=(1.0, 1.0), max_shift=0.0)


def _box_mask(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _images(h=32, w=32):
    target = np.full((h, w, 3), 10, dtype=np.uint8)
    source = np.full((h, w, 3), 200, dtype=np.uint8)
    return target, source


def test_pasted_mask_removes_pixels_from_existing_mask():
    target, source = _images()
    existing = _box_mask((32, 32), 0, 16, 0, 32)[None]  # 512 px
    pasted = _box_mask((32, 32), 12, 20, 0, 32)[None]  # covers 4 rows = 128 px = 25%
    result = copy_paste(target, existing, source, pasted, IDENTITY, np.random.default_rng(0))

    assert result.masks.shape == (2, 32, 32)
    assert result.target_index.tolist() == [0]
    assert result.source_index.tolist() == [0]
    np.testing.assert_array_equal(result.masks[0], _box_mask((32, 32), 0, 12, 0, 32))
    np.testing.assert_array_equal(result.masks[1], pasted[0])
    # Pasted pixels come from the source image, the rest is untouched.
    assert (result.image[pasted[0]] == 200).all()
    assert (result.image[~pasted[0]] == 10).all()
    # Inputs are not modified in place.
    assert (target == 10).all() and existing[0].sum() == 512


@pytest.mark.parametrize("rows, dropped", [((0, 8), True), ((0, 7), False)])
def test_pasted_mask_covering_half_an_existing_mask_is_dropped(rows, dropped):
    target, source = _images()
    existing = _box_mask((32, 32), 0, 16, 0, 32)[None]
    pasted = _box_mask((32, 32), rows[0], rows[1], 0, 32)[None]  # 50% vs 43.75% of existing
    result = copy_paste(target, existing, source, pasted, IDENTITY, np.random.default_rng(0))

    if dropped:
        assert result.source_index.size == 0
        np.testing.assert_array_equal(result.masks, existing)
        assert (result.image == target).all()
    else:
        assert result.source_index.tolist() == [0]
        assert result.masks[0].sum() == 512 - 7 * 32


def test_existing_mask_left_empty_or_tiny_is_dropped():
    target, source = _images()
    small = _box_mask((32, 32), 20, 22, 20, 22)  # 4 px, fully covered by the pasted mask
    big = _box_mask((32, 32), 0, 10, 0, 32)  # untouched
    existing = np.stack([small, big])
    # Covers `small` entirely; the occlusion rule is disabled so the paste itself survives.
    pasted = _box_mask((32, 32), 18, 26, 18, 26)[None]
    params = CopyPasteParams(
        max_instances=1, scale_range=(1.0, 1.0), max_shift=0.0, occlusion_thresh=1.01
    )
    result = copy_paste(target, existing, source, pasted, params, np.random.default_rng(0))
    assert result.target_index.tolist() == [1]
    assert result.masks.shape[0] == 2
    np.testing.assert_array_equal(result.masks[0], big)


def test_attributes_follow_their_masks():
    target, source = _images()
    existing = np.stack([_box_mask((32, 32), 0, 4, 0, 4), _box_mask((32, 32), 28, 32, 28, 32)])
    source_masks = np.stack(
        [_box_mask((32, 32), 10, 14, 10, 14), _box_mask((32, 32), 0, 4, 0, 4)]
    )  # the 2nd would occlude existing[0] entirely
    params = CopyPasteParams(max_instances=2, scale_range=(1.0, 1.0), max_shift=0.0)
    rng = np.random.default_rng(3)
    result = copy_paste(target, existing, source, source_masks, params, rng)
    assert result.source_index.size >= 1
    assert 1 not in result.source_index.tolist()  # the occluding one never survives
    scores = result.gather(np.array([0.1, 0.2]), np.array([0.8, 0.9]))
    assert scores.tolist() == [0.1, 0.2] + [0.8] * result.source_index.size


def test_random_placement_stays_inside_the_image_and_is_deterministic():
    target, source = _images(48, 64)
    source = np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    source_masks = np.stack([_box_mask((40, 30), 5, 35, 5, 25)])
    params = CopyPasteParams(max_instances=3, scale_range=(0.3, 1.0), max_shift=0.5)
    first = copy_paste(
        target, np.zeros((0, 48, 64), bool), source, source_masks, params, np.random.default_rng(7)
    )
    second = copy_paste(
        target, np.zeros((0, 48, 64), bool), source, source_masks, params, np.random.default_rng(7)
    )
    assert first.masks.shape[0] >= 1 and first.masks.shape[1:] == (48, 64)
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.image, second.image)
    # Whatever survives clipping is a non-empty mask whose pixels came from the source.
    for mask in first.masks:
        assert mask.any()
    changed = (first.image != target).any(axis=2)
    assert not changed[~first.masks.any(axis=0)].any()
