"""Property-based tests of Matrix NMS (SOLOv2) and greedy mask NMS (proposal post-processing)."""

from __future__ import annotations

import numpy as np
import torch
from fuzz_strategies import FUZZ, mask_stacks
from hypothesis import given
from hypothesis import strategies as st

from uis_d2.layers.matrix_nms import NMS_KERNELS, matrix_nms
from uis_d2.proposals.postprocess import mask_nms
from uis_d2.utils.masks import mask_iou_matrix


@st.composite
def scored_masks(draw) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) masks with N scores in [0, 1] (ties included: scores come from a coarse grid)."""
    stack = draw(mask_stacks(min_size=0, max_size=8))
    scores = draw(st.lists(st.integers(0, 20), min_size=len(stack), max_size=len(stack)))
    return stack, np.asarray(scores, dtype=np.float32) / 20


def _iou(stack: np.ndarray) -> np.ndarray:
    masks = torch.from_numpy(stack)
    return mask_iou_matrix(masks, masks).numpy()


@FUZZ
@given(scored_masks(), st.sampled_from(NMS_KERNELS), st.floats(0.5, 4.0))
def test_matrix_nms_never_raises_a_score(case, kernel, sigma):
    stack, scores = case
    decayed = matrix_nms(torch.from_numpy(stack), torch.from_numpy(scores), None, kernel, sigma)
    assert decayed.shape == (len(scores),) and torch.isfinite(decayed).all()
    assert (decayed >= 0).all()
    assert (decayed <= torch.from_numpy(scores) + 1e-6).all()
    # Nothing is scored above the best mask, so one of the best keeps its score.
    if len(scores):
        best = scores == scores.max()
        assert np.isclose(decayed.numpy()[best], scores.max()).any()
    # A mask overlapping no mask scored at least as high is not decayed at all.
    iou = _iou(stack)
    for j in range(len(scores)):
        rivals = [i for i in range(len(scores)) if i != j and scores[i] >= scores[j]]
        if all(iou[i, j] == 0 for i in rivals):
            assert np.isclose(decayed[j].item(), scores[j])


@FUZZ
@given(scored_masks(), st.sampled_from(NMS_KERNELS))
def test_matrix_nms_decays_a_duplicate_of_the_best_mask(case, kernel):
    stack, scores = case
    if len(scores) == 0:
        return
    top = int(np.argmax(scores))
    if not stack[top].any() or scores[top] == 0:
        return  # an empty or zero-scored mask suppresses nothing
    duplicated = np.concatenate([stack, stack[top : top + 1]])
    duplicate_score = np.float32(scores[top] * 0.999)
    out = matrix_nms(
        torch.from_numpy(duplicated),
        torch.from_numpy(np.append(scores, duplicate_score)),
        kernel=kernel,
    )
    assert out[-1] < duplicate_score * 0.9


@FUZZ
@given(scored_masks())
def test_class_aware_matrix_nms_leaves_distinct_classes_alone(case):
    stack, scores = case
    labels = torch.arange(len(scores))
    out = matrix_nms(torch.from_numpy(stack), torch.from_numpy(scores), labels)
    assert torch.allclose(out, torch.from_numpy(scores))


@FUZZ
@given(scored_masks(), st.floats(0.0, 0.95))
def test_greedy_mask_nms_keeps_a_maximal_non_overlapping_subset(case, thresh):
    stack, scores = case
    kept = mask_nms(torch.from_numpy(stack), scores, thresh)
    assert kept.dtype == np.int64 and len(set(kept.tolist())) == len(kept)
    assert set(kept.tolist()) <= set(range(len(scores))) and len(kept) >= min(len(scores), 1)
    assert (np.diff(scores[kept]) <= 0).all()  # best first
    assert len(kept) == 0 or scores[kept[0]] == scores.max()
    iou = _iou(stack)
    for a in kept:
        for b in kept:
            assert a == b or iou[a, b] <= thresh
    for dropped in set(range(len(scores))) - set(kept.tolist()):
        assert any(iou[dropped, k] > thresh and scores[k] >= scores[dropped] for k in kept)


@FUZZ
@given(scored_masks(), st.floats(0.0, 0.95), st.data())
def test_grouped_mask_nms_is_nms_of_each_group_in_turn(case, thresh, data):
    stack, scores = case
    groups = np.asarray(
        data.draw(st.lists(st.integers(0, 2), min_size=len(scores), max_size=len(scores))),
        dtype=np.int64,
    )
    kept = mask_nms(torch.from_numpy(stack), scores, thresh, groups=groups)
    expected = []
    for group in sorted(set(groups.tolist())):
        members = np.flatnonzero(groups == group)
        alone = mask_nms(torch.from_numpy(stack[members]), scores[members], thresh)
        expected += members[alone].tolist()
    assert kept.tolist() == expected
