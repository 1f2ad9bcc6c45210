"""Property-based tests of the proposal post-processing (components, saliency, upsampling)."""

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


@FUZZ
@given(mask_stacks(min_size=0), st.integers(0, 6))
def test_components_partition_each_mask(stack, min_size):
    components, parents = split_connected_components(stack, min_size)
    assert components.dtype == bool and components.shape[1:] == stack.shape[1:]
    assert parents.dtype == np.int64 and len(parents) == len(components)
    assert (np.diff(parents) >= 0).all() and set(parents.tolist()) <= set(range(len(stack)))
    for component, parent in zip(components, parents, strict=True):
        assert component.sum() >= max(min_size, 1)
        assert not (component & ~stack[parent]).any()  # inside its mask
        assert scipy.ndimage.label(component, structure=EIGHT_CONNECTED)[1] == 1
    for parent in range(len(stack)):
        own = components[parents == parent]
        assert (own.sum(axis=0) <= 1).all()  # disjoint
    # With no size limit the components tile their masks exactly; the limit only drops some.
    all_components, all_parents = split_connected_components(stack, 0)
    for parent in range(len(stack)):
        tiled = all_components[all_parents == parent].any(axis=0)
        np.testing.assert_array_equal(tiled, stack[parent])
    large = [c.tobytes() for c in all_components if c.sum() >= max(min_size, 1)]
    assert sorted(large) == sorted(c.tobytes() for c in components)


@st.composite
def cluster_maps(draw) -> np.ndarray:
    k = draw(st.integers(1, 5))
    return draw(arrays(np.int64, (draw(sides), draw(sides)), elements=st.integers(0, k - 1)))


@FUZZ
@given(cluster_maps())
def test_border_foreground_removes_exactly_one_border_cluster(labels):
    foreground = border_foreground(labels)
    assert foreground.dtype == bool and foreground.shape == labels.shape
    background_labels = np.unique(labels[~foreground])
    assert len(background_labels) == 1  # one whole cluster is background, nothing else
    (background,) = background_labels
    assert not (labels[foreground] == background).any()
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    counts = np.bincount(border, minlength=labels.max() + 1)
    assert counts[background] == counts.max()


@FUZZ
@given(mask_stacks(min_size=0), st.data())
def test_saliency_overlap_is_a_fraction(stack, data):
    saliency = data.draw(arrays(np.bool_, stack.shape[1:]))
    overlap = saliency_overlap(stack, saliency)
    assert overlap.dtype == np.float32 and overlap.shape == (len(stack),)
    assert ((overlap >= 0) & (overlap <= 1)).all()
    areas = stack.sum(axis=(1, 2))
    assert (overlap[areas == 0] == 0).all()
    inside = ~(stack & ~saliency).any(axis=(1, 2))
    assert (overlap[inside & (areas > 0)] == 1).all()
    thresh = data.draw(st.floats(0, 1))
    keep, overlap_again = saliency_filter(stack, saliency, thresh)
    np.testing.assert_array_equal(keep, overlap >= thresh)
    np.testing.assert_array_equal(overlap_again, overlap)


@FUZZ
@given(mask_stacks(min_size=0), st.data())
def test_upsampling_is_monotone_and_keeps_empty_and_full(stack, data):
    size = (data.draw(sides), data.draw(sides))
    extra = data.draw(arrays(np.bool_, stack.shape[1:]))
    up = upsample_masks(torch.from_numpy(stack), size)
    assert up.dtype == bool and up.shape == (len(stack), *size)
    bigger = upsample_masks(torch.from_numpy(stack | extra[None]), size)
    assert not (up & ~bigger).any()  # a superset never loses pixels
    for mask, upsampled in zip(stack, up, strict=True):
        if not mask.any():
            assert not upsampled.any()
        if mask.all():
            assert upsampled.all()
