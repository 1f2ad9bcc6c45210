"""proposals_to_line: the shard line of one image, from numpy or tensor proposals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from uis_d2.proposals.base import Proposals
from uis_d2.proposals.writer import proposals_to_line
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle

H, W = 12, 17


def _proposals(masks: np.ndarray | torch.Tensor, **overrides) -> Proposals:
    n = masks.shape[0]
    rng = np.random.default_rng(n)
    fields = {
        "masks": masks,
        "scores": rng.random(n, dtype=np.float32),
        "embeddings": rng.standard_normal((n, 6), dtype=np.float32),
        "extras": {"k": np.arange(n) + 2, "salient": np.arange(n) % 2 == 0},
    }
    return Proposals(**(fields | overrides))


def _masks(n: int = 4) -> np.ndarray:
    masks = np.random.default_rng(0).random((n, H, W)) < 0.3
    masks[1] = False  # dropped from the line
    return masks


def _line(proposals: Proposals) -> dict:
    return proposals_to_line(7, "a/b.jpg", H, W, proposals)


def test_line_matches_the_per_mask_helpers_and_drops_empty_masks():
    masks = _masks()
    proposals = _proposals(masks)
    line = _line(proposals)
    assert {k: v for k, v in line.items() if k != "annotations"} == {
        "image_id": 7,
        "file_name": "a/b.jpg",
        "height": H,
        "width": W,
    }
    kept = [0, 2, 3]
    assert len(line["annotations"]) == len(kept)
    for annotation, i in zip(line["annotations"], kept, strict=True):
        assert list(annotation) == ["segmentation", "bbox", "area", "score", "emb", "k", "salient"]
        assert annotation["segmentation"] == mask_to_rle(masks[i])
        assert annotation["bbox"] == mask_to_box_xywh(masks[i])
        assert annotation["area"] == int(masks[i].sum()) and type(annotation["area"]) is int
        assert annotation["score"] == round(float(proposals.scores[i]), 6)
        assert annotation["emb"] == [round(float(x), 4) for x in proposals.embeddings[i]]
        assert annotation["k"] == i + 2 and type(annotation["k"]) is int
        assert annotation["salient"] is (i % 2 == 0)


def test_numpy_cpu_tensor_and_flipped_masks_give_the_same_line():
    masks = _masks()
    reference = _line(_proposals(masks))
    assert _line(_proposals(torch.from_numpy(masks))) == reference
    flipped = np.ascontiguousarray(masks[:, :, ::-1])[:, :, ::-1]  # negative strides
    assert _line(_proposals(flipped)) == reference
    assert _line(_proposals(masks.astype(np.uint8))) == reference


def test_non_finite_numbers_become_null_and_the_line_is_strict_json():
    masks = _masks(3)
    embeddings = np.array([[np.nan, 1.23456, -np.inf], [0, 0, 0], [1e306, 2.5e-5, np.inf]])
    scores = np.array([np.inf, 0.5, 1234567.1234567])
    extras = {"overlap": np.array([np.nan, 0.0, 1 / 3], dtype=np.float32)}
    line = _line(_proposals(masks, scores=scores, embeddings=embeddings, extras=extras))
    first, last = line["annotations"]
    assert first["emb"] == [None, 1.2346, None] and first["score"] is None
    assert first["overlap"] is None
    assert last["emb"] == [1e306, 0.0, None] and last["score"] == 1234567.123457
    assert last["overlap"] == 0.333333
    assert json.loads(json.dumps(line, allow_nan=False)) == line


def test_integer_scores_are_written_as_floats():
    line = _line(_proposals(_masks(3), scores=np.array([1, 2, 3])))
    assert [a["score"] for a in line["annotations"]] == [1.0, 3.0]
    assert all(type(a["score"]) is float for a in line["annotations"])


def test_no_proposals():
    empty = Proposals(np.zeros((0, H, W), bool), np.zeros(0), np.zeros((0, 8)))
    assert _line(empty)["annotations"] == []


@pytest.mark.parametrize("as_tensor", [False, True])
def test_contract_violations_name_the_field(as_tensor):
    masks = np.zeros((2, H + 1, W), bool)
    masks = torch.from_numpy(masks) if as_tensor else masks
    proposals = _proposals(masks, scores=np.zeros(3), extras={"k": np.zeros((2, 1))})
    with pytest.raises(ValueError) as error:
        _line(proposals)
    message = str(error.value)
    assert "a/b.jpg" in message
    assert f"masks (2, {H + 1}, {W}) should be (N, {H}, {W})" in message
    assert "scores (3,) should be (2,)" in message and "extras['k'] (2, 1)" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_give_the_same_line():
    masks = _masks()
    cuda = _proposals(torch.from_numpy(masks).cuda(), embeddings=torch.ones(4, 6).cuda())
    assert _line(cuda) == _line(_proposals(masks, embeddings=np.ones((4, 6), np.float32)))
