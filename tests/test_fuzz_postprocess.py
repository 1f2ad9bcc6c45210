"""Property-based tests of the proposal post-processing (components, saliency, upsampling).

scipy is the oracle of the connected components: same components, same order.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
from fuzz_strategies import FUZZ, mask_stacks, sides
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from uis_d2.proposals.postprocess import (
    border_foreground,
    saliency_filter,
    saliency_overlap,
    split_connected_components,
    upsample_masks,
)

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def scipy_components(stack: np.ndarray, min_size: int) -> tuple[np.ndarray, list[int]]:
    """The oracle: scipy's 8-connected labelling, components in label order, small ones out."""
    components, parents = [], []
    for index, mask in enumerate(stack):
        labelled, count = scipy.ndimage.label(mask, structure=EIGHT_CONNECTED)
        for label in range(1, count + 1):
            if (labelled == label).sum() >= max(min_size, 1):
                components.append(labelled == label)
                parents.append(index)
    empty = np.zeros((0, *stack.shape[1:]), dtype=bool)
    return (np.stack(components) if components else empty), parents


def spiral(size: int) -> np.ndarray:
    """A one-cell-wide square spiral walking inwards: a path of about size**2 / 2 cells."""
    mask = np.zeros((size, size), dtype=bool)
    y, x, dy, dx = 0, 0, 0, 1
    mask[0, 0] = True
    while True:
        for _ in range(2):  # turn right at most once per cell
            ahead, beyond = (y + dy, x + dx), (y + 2 * dy, x + 2 * dx)
            inside = 0 <= ahead[0] < size and 0 <= ahead[1] < size
            blocked = 0 <= beyond[0] < size and 0 <= beyond[1] < size and mask[beyond]
            if inside and not mask[ahead] and not blocked:
                break
            dy, dx = dx, -dy
        else:
            return mask
        y, x = y + dy, x + dx
        mask[y, x] = True


@st.composite
def component_cases(draw) -> np.ndarray:
    """Random stacks, plus shapes that stress label propagation: spirals, snakes, diagonal-only
    contacts (a checkerboard's cells touch only at corners)."""
    kind = draw(st.sampled_from(["random", "spiral", "snake", "checkerboard"]))
    if kind == "random":
        return draw(mask_stacks(min_size=0))
    h, w = draw(sides), draw(sides)
    if kind == "spiral":
        mask = spiral(max(h, w))[:h, :w]
    elif kind == "snake":  # every other row, joined alternately at the right and the left end
        mask = np.zeros((h, w), dtype=bool)
        mask[::2] = True
        mask[1::4, -1] = True
        mask[3::4, 0] = True
    else:
        checkerboard = np.add.outer(np.arange(h), np.arange(w)) % 2 == 0
        mask = checkerboard & draw(arrays(np.bool_, (h, w)))
    return np.stack([mask, ~mask, mask[::-1, ::-1]])


@FUZZ
@given(component_cases(), st.integers(0, 6))
def test_components_match_scipy_in_content_and_order(stack, min_size):
    components, parents = split_connected_components(torch.from_numpy(stack), min_size)
    expected, expected_parents = scipy_components(stack, min_size)
    assert components.dtype == torch.bool and parents.dtype == torch.long
    np.testing.assert_array_equal(components.numpy(), expected)
    assert parents.tolist() == expected_parents


def test_components_of_a_spiral_and_of_nothing():
    mask = spiral(15)
    assert mask.sum() > 100 and scipy.ndimage.label(mask, structure=EIGHT_CONNECTED)[1] == 1
    components, parents = split_connected_components(torch.from_numpy(mask)[None], 1)
    assert parents.tolist() == [0] and torch.equal(components[0], torch.from_numpy(mask))
    for stack in (torch.zeros(0, 4, 5, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.bool)):
        none, none_parents = split_connected_components(stack, 0)
        assert none.shape == (0, 4, 5) and none_parents.shape == (0,)


@st.composite
def cluster_maps(draw) -> tuple[np.ndarray, int]:
    k = draw(st.integers(1, 5))
    count = draw(st.integers(1, 3))
    shape = (count, draw(sides), draw(sides))
    return draw(arrays(np.int64, shape, elements=st.integers(0, k - 1))), k


@FUZZ
@given(cluster_maps())
def test_border_foreground_removes_the_cluster_most_on_the_border(case):
    stack, k = case
    foreground = border_foreground(torch.from_numpy(stack), k).numpy()
    assert foreground.dtype == bool and foreground.shape == stack.shape
    for labels, fg in zip(stack, foreground, strict=True):
        background_labels = np.unique(labels[~fg])
        assert len(background_labels) == 1  # one whole cluster is background, nothing else
        (background,) = background_labels
        assert not (labels[fg] == background).any()
        # The four sides, each listing its cells (a one-cell-wide grid lists some twice).
        border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
        keys = list(zip(np.bincount(border, minlength=k), np.bincount(labels.ravel(), minlength=k)))
        # most border cells, then the larger cluster, then the lower label
        assert background == max(range(k), key=lambda c: keys[c])


@FUZZ
@given(mask_stacks(min_size=0), st.data())
def test_saliency_overlap_is_a_fraction(stack, data):
    saliency = data.draw(arrays(np.bool_, stack.shape[1:]))
    overlap = saliency_overlap(torch.from_numpy(stack), torch.from_numpy(saliency)).numpy()
    assert overlap.dtype == np.float32 and overlap.shape == (len(stack),)
    areas = stack.sum(axis=(1, 2))
    inside = (stack & saliency).sum(axis=(1, 2))
    np.testing.assert_array_equal(overlap, (inside / np.maximum(areas, 1)).astype(np.float32))
    assert (overlap[areas == 0] == 0).all()
    thresh = data.draw(st.floats(0, 1))
    keep, overlap_again = saliency_filter(
        torch.from_numpy(stack), torch.from_numpy(saliency), thresh
    )
    np.testing.assert_array_equal(keep.numpy(), overlap >= thresh)
    np.testing.assert_array_equal(overlap_again.numpy(), overlap)
    # One saliency map per mask gives each mask its own map's overlap.
    per_mask = data.draw(arrays(np.bool_, stack.shape))
    own = saliency_overlap(torch.from_numpy(stack), torch.from_numpy(per_mask))
    for i, mask in enumerate(stack):
        alone = saliency_overlap(torch.from_numpy(mask[None]), torch.from_numpy(per_mask[i]))
        assert own[i] == alone[0]


@FUZZ
@given(mask_stacks(min_size=0), st.data())
def test_upsampling_is_monotone_and_keeps_empty_and_full(stack, data):
    size = (data.draw(sides), data.draw(sides))
    extra = data.draw(arrays(np.bool_, stack.shape[1:]))
    up = upsample_masks(torch.from_numpy(stack), size)
    assert up.dtype == torch.bool and up.shape == (len(stack), *size)
    up = up.numpy()
    bigger = upsample_masks(torch.from_numpy(stack | extra[None]), size).numpy()
    assert not (up & ~bigger).any()  # a superset never loses pixels
    for mask, upsampled in zip(stack, up, strict=True):
        if not mask.any():
            assert not upsampled.any()
        if mask.all():
            assert upsampled.all()
