"""Property-based tests of copy-paste augmentation on random images, masks and parameters."""

from __future__ import annotations

import numpy as np
import torch
from fuzz_strategies import FUZZ, mask_stacks
from hypothesis import event, given
from hypothesis import strategies as st

from uis_d2.data.copy_paste import CopyPasteParams, copy_paste
from uis_d2.utils.masks import masks_to_boxes_xyxy


@st.composite
def params(draw) -> CopyPasteParams:
    low = draw(st.floats(0.3, 1.5))
    return CopyPasteParams(
        max_instances=draw(st.integers(1, 4)),
        scale_range=(low, draw(st.floats(low, 1.5))),
        max_shift=draw(st.floats(0.0, 0.6)),
        occlusion_thresh=draw(st.floats(0.2, 1.0)),
        min_area=draw(st.integers(0, 5)),
    )


def _image(stack: np.ndarray, fill: int) -> np.ndarray:
    """A recognisable image of the stack's size: ``fill`` plus a per-pixel pattern."""
    h, w = stack.shape[1:]
    pattern = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
    return np.repeat((pattern + fill)[:, :, None], 3, axis=2)


@FUZZ
@given(
    mask_stacks(min_size=0),
    mask_stacks(min_size=1, nonempty=True),
    params(),
    st.integers(0, 2**16),
)
def test_copy_paste_outputs_are_consistent(target_masks, source_masks, paste_params, seed):
    image, source_image = _image(target_masks, 10), _image(source_masks, 100)
    inputs = (image.copy(), target_masks.copy(), source_image.copy(), source_masks.copy())
    result = copy_paste(*inputs, paste_params, np.random.default_rng(seed))

    # Inputs are untouched.
    for before, after in zip((image, target_masks, source_image, source_masks), inputs):
        np.testing.assert_array_equal(before, after)
    h, w = image.shape[:2]
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    n_target, n_pasted = len(result.target_index), len(result.source_index)
    assert result.masks.dtype == bool and result.masks.shape == (n_target + n_pasted, h, w)
    assert (np.diff(result.target_index) > 0).all()
    assert set(result.target_index.tolist()) <= set(range(len(target_masks)))
    assert len(set(result.source_index.tolist())) == n_pasted <= paste_params.max_instances
    assert set(result.source_index.tolist()) <= set(range(len(source_masks)))

    event(f"pasted={n_pasted > 0} kept={n_target > 0}")  # --hypothesis-show-statistics
    kept, pasted = result.masks[:n_target], result.masks[n_target:]
    covered = pasted.any(axis=0)
    # Surviving target masks lose exactly the pasted pixels and nothing else.
    for mask, index in zip(kept, result.target_index, strict=True):
        np.testing.assert_array_equal(mask, target_masks[index] & ~covered)
    # Outside the pasted masks the image is unchanged; inside it shows source pixels (>= 100).
    np.testing.assert_array_equal(result.image[~covered], image[~covered])
    assert (result.image[covered] >= 100).all()
    if n_pasted:
        assert (result.masks.sum(axis=(1, 2)) >= max(paste_params.min_area, 1)).all()
    boxes = masks_to_boxes_xyxy(torch.from_numpy(result.masks))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    nonempty = result.masks.any(axis=(1, 2))
    assert ((boxes[:, 2] > boxes[:, 0]) == torch.from_numpy(nonempty)).all()
    # Per-instance attributes follow their masks.
    values = result.gather(np.arange(len(target_masks)), 1000 + np.arange(len(source_masks)))
    assert values.tolist() == result.target_index.tolist() + (1000 + result.source_index).tolist()
