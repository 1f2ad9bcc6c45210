"""Dense-CRF mask refinement (proposals/dense_crf.py, proposals/refine.py): the CRF snaps a
coarse mask to the colour edge, the IoU rule drops masks, holes are filled, the optional
reference backend agrees, and the proposal runner writes refined masks with their provenance."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from uis_d2.config import load_config
from uis_d2.data.image_io import read_image
from uis_d2.proposals.base import Proposals, build_pseudo_mask_generator
from uis_d2.proposals.dense_crf import (
    CRFParams,
    MissingCRFPackageError,
    dense_crf,
    dense_crf_labels,
)
from uis_d2.proposals.refine import MaskRefiner, fill_holes, paired_iou, working_size
from uis_d2.proposals.runner import generate_on_this_rank, prepare_job
from uis_d2.utils.masks import rle_to_mask

CUTLER = CRFParams(
    iters=10,
    gaussian_sxy=3.0,
    gaussian_compat=7.0,
    bilateral_sxy=50.0,
    bilateral_srgb=5.0,
    bilateral_compat=10.0,
)
SYNTHETIC_CONFIG = "configs/proposals/synthetic.yaml"
HEIGHT, WIDTH = 80, 96


def _disc(cy: float, cx: float, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


TRUTH = _disc(40, 44, 22)  # the object: a red disc ...
RING = TRUTH & ~_disc(40, 44, 9)  # ... whose centre shows the background (a hole)
COARSE = _disc(45, 48, 22)  # the object's disc, 5 px down and 4 px right
STRAY = _disc(15, 82, 7)  # a blob on plain background: no edge to snap to


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """(3, H, W) uint8: the red ring on a grey-green background, with pixel noise."""
    rng = np.random.default_rng(0)
    colours = np.where(RING[..., None], [200, 60, 50], [70, 90, 80]).astype(float)
    noisy = colours + rng.normal(0, 6, colours.shape)
    return torch.from_numpy(np.clip(noisy, 0, 255).astype(np.uint8)).permute(2, 0, 1)


def _iou(a: np.ndarray | torch.Tensor, b: np.ndarray) -> float:
    a = torch.as_tensor(a)
    return float(paired_iou(a[None], torch.from_numpy(b)[None])[0])


def _refiner(*opts: str) -> MaskRefiner:
    cfg = load_config(SYNTHETIC_CONFIG, ["PROPOSALS.REFINE.ENABLED", "True", *opts])
    return MaskRefiner(cfg)


def _proposals(masks: list[np.ndarray]) -> Proposals:
    n = len(masks)
    return Proposals(
        masks=np.stack(masks),
        scores=np.linspace(0.9, 0.5, n, dtype=np.float32),
        embeddings=np.arange(n * 3, dtype=np.float32).reshape(n, 3),
        extras={"k": np.arange(2, 2 + n)},
    )


@pytest.mark.parametrize("backend", ["torch", "pydensecrf"])
def test_crf_moves_the_boundary_to_the_colour_edge(image, backend):
    if backend == "pydensecrf":
        pytest.importorskip("pydensecrf.densecrf")
    masks = torch.from_numpy(np.stack([COARSE, STRAY]))
    refined = dense_crf(image, masks, CUTLER, backend)
    assert refined.dtype == torch.bool and refined.shape == masks.shape
    assert _iou(COARSE, RING) < 0.6
    assert _iou(refined[0], RING) > 0.99
    assert not refined[1].any()  # nothing in the image supports the stray blob


def test_torch_crf_agrees_with_the_reference_implementation(image):
    pytest.importorskip("pydensecrf.densecrf")
    masks = torch.from_numpy(np.stack([COARSE, RING, TRUTH]))
    ours = dense_crf(image, masks, CUTLER, "torch")
    reference = dense_crf(image, masks, CUTLER, "pydensecrf")
    assert (paired_iou(ours, reference) > 0.99).all()


def test_multi_label_crf_with_two_labels_is_the_binary_crf(image):
    """MaskCut's binary unary (softmax of the one-hot map) as two-label probabilities: the
    multi-label mean field must give the binary CRF's masks."""
    for mask in (COARSE, STRAY, TRUTH):
        foreground = torch.sigmoid(torch.from_numpy(mask).float() * 2 - 1)
        labels = dense_crf_labels(image, torch.stack([1 - foreground, foreground]), CUTLER)
        binary = dense_crf(image, torch.from_numpy(mask)[None], CUTLER, "torch")[0]
        assert torch.equal(labels == 1, binary)


def test_multi_label_crf_snaps_noisy_segment_probabilities_to_the_colour_regions(image):
    """Three labels (background, ring, a third class on the ring's hole): probabilities that
    are only weakly right, with noise, come out as the image's colour regions."""
    truth = np.where(RING, 1, np.where(_disc(40, 44, 9), 2, 0))
    rng = np.random.default_rng(1)
    logits = np.eye(3)[truth].transpose(2, 0, 1) * 0.6 + rng.normal(0, 0.5, (3, HEIGHT, WIDTH))
    probabilities = torch.from_numpy(logits).float().softmax(dim=0)
    noisy_accuracy = float((probabilities.argmax(0).numpy() == truth).mean())
    labels = dense_crf_labels(image, probabilities, CUTLER).numpy()
    assert noisy_accuracy < 0.8
    assert (labels[RING | ~TRUTH] == truth[RING | ~TRUTH]).mean() > 0.97
    # The hole has the background's colour: the CRF may merge it into the background, never
    # into the ring across the colour edge.
    assert (labels[_disc(40, 44, 7)] != 1).all()


def test_torch_crf_is_deterministic(image):
    masks = torch.from_numpy(np.stack([COARSE, STRAY, TRUTH]))
    first = dense_crf(image, masks, CUTLER, "torch")
    assert torch.equal(first, dense_crf(image, masks, CUTLER, "torch"))


def test_missing_package_is_a_clear_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import now fails, installed or not
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(MissingCRFPackageError, match=r"pip install -e \.\[crf\]"):
        _refiner("PROPOSALS.REFINE.BACKEND", "pydensecrf")


def test_refiner_drops_masks_the_crf_changes_too_much_with_their_rows(image):
    proposals = _proposals([STRAY, COARSE])
    refined = _refiner()(image, proposals)
    assert len(refined.masks) == 1 and _iou(refined.masks[0].cpu(), TRUTH) > 0.99
    np.testing.assert_array_equal(refined.scores, proposals.scores[1:])
    np.testing.assert_array_equal(refined.embeddings, proposals.embeddings[1:])
    np.testing.assert_array_equal(refined.extras["k"], proposals.extras["k"][1:])

    kept = _refiner("PROPOSALS.REFINE.MIN_IOU", "0.0")(image, proposals)
    assert len(kept.masks) == 2 and not kept.masks[0].any()  # the writer drops empty masks


def test_refiner_fills_holes(image):
    proposals = _proposals([COARSE])
    filled = _refiner()(image, proposals)
    assert _iou(filled.masks[0].cpu(), TRUTH) > 0.99
    unfilled = _refiner("PROPOSALS.REFINE.FILL_HOLES", "False")(image, proposals)
    assert _iou(unfilled.masks[0].cpu(), RING) > 0.99


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 24, size=2)
        masks = rng.random((3, height, width)) < rng.uniform(0.2, 0.8)
        expected = np.stack([ndimage.binary_fill_holes(m) for m in masks])
        np.testing.assert_array_equal(fill_holes(torch.from_numpy(masks)).numpy(), expected)


def test_refiner_works_at_a_capped_resolution_and_returns_full_size_masks(image):
    assert working_size((HEIGHT, WIDTH), 48) == (40, 48)
    assert working_size((HEIGHT, WIDTH), 0) == (HEIGHT, WIDTH)
    refiner = _refiner("PROPOSALS.REFINE.MAX_SIDE", "48")
    refined = refiner(image, _proposals([COARSE]))
    assert refined.masks.shape == (1, HEIGHT, WIDTH)
    assert _iou(refined.masks[0], TRUTH) > 0.9
    assert refiner(image, _proposals([STRAY])).masks.shape == (0, HEIGHT, WIDTH)


def test_refiner_keeps_an_image_without_proposals(image):
    empty = Proposals(np.zeros((0, HEIGHT, WIDTH), bool), np.zeros(0), np.zeros((0, 3)))
    assert _refiner()(image, empty) is empty


def test_runner_writes_refined_masks_and_records_the_settings(training_datasets, tmp_path):
    opts = ["MODEL.DEVICE", "cpu", "PROPOSALS.NUM_WORKERS", "0"]
    refine_opts = [*opts, "PROPOSALS.REFINE.ENABLED", "True"]
    # The third training image: two of its five proposals are dropped, three refined.
    job = prepare_job("synthetic_train", tmp_path / "refined.json", limit=3)
    job = dataclasses.replace(job, records=job.records[2:])
    generate_on_this_rank(load_config(SYNTHETIC_CONFIG, refine_opts), job)

    cfg = load_config(SYNTHETIC_CONFIG, refine_opts)
    refiner = MaskRefiner(cfg)
    pixels = read_image(job.records[0].path, fmt="RGB")
    pixels = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    (coarse,) = build_pseudo_mask_generator(cfg)([pixels])
    refined = refiner(pixels, coarse)
    expected = [m for m in refined.masks.numpy() if m.any()]
    assert 0 < len(expected) < len(coarse.masks)

    data = json.loads(job.output.read_text())
    assert data["info"]["refine"] == json.loads(json.dumps(refiner.describe()))
    written = [rle_to_mask(a["segmentation"]) for a in data["annotations"]]
    assert len(written) == len(expected)
    for annotation, mask, wanted, score in zip(
        data["annotations"], written, expected, refined.scores
    ):
        np.testing.assert_array_equal(mask, wanted)
        assert annotation["score"] == pytest.approx(float(score), abs=1e-4)

    plain = dataclasses.replace(job, output=tmp_path / "plain.json")
    generate_on_this_rank(load_config(SYNTHETIC_CONFIG, opts), plain)
    data = json.loads(plain.output.read_text())
    assert data["info"]["refine"] is None
    assert len(data["annotations"]) == len(coarse.masks)
