"""Proposal post-processing rules and both generators end to end (weight-free features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401
from uis_d2.config import get_cfg
from uis_d2.features.patch_stats import PatchStats
from uis_d2.proposals import build_pseudo_mask_generator, spectral_generator
from uis_d2.proposals.free_mask import (
    FreeMaskGenerator,
    FreeMaskParams,
    background_like,
    query_features,
)
from uis_d2.proposals.postprocess import (
    border_foreground,
    mask_nms,
    saliency_filter,
    split_connected_components,
    upsample_masks,
)


def test_components_are_split_with_8_connectivity_and_small_ones_dropped():
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one component
    mask[0, 4:6, 3:6] = True  # a second component of 6 cells
    mask[0, 0, 5] = True  # a single cell, below the minimum
    stack = torch.from_numpy(np.concatenate([mask, mask[:, ::-1]]))
    parts, parents = split_connected_components(stack, 2)
    assert len(parts) == 4 and parents.tolist() == [0, 0, 1, 1]
    # Ordered by first cell in raster order: upside down, the block comes first.
    assert [int(p.sum()) for p in parts] == [2, 6, 6, 2]


def test_saliency_is_the_cluster_off_the_border_not_the_larger_one():
    labels = torch.zeros((1, 8, 8), dtype=torch.long)
    labels[0, 1:7, 1:7] = 1  # a central object bigger than the background ring
    foreground = border_foreground(torch.cat([labels, 1 - labels]), 2)
    assert foreground[0].sum() == 36 and foreground[0, 3, 3]
    assert torch.equal(foreground[0], foreground[1])  # label ids do not matter


def test_saliency_filter_threshold_keeps_at_and_above_only():
    masks = torch.zeros((1, 4, 5), dtype=torch.bool)
    masks[0, 0] = True  # 5 cells, 3 of them salient: overlap 0.6
    saliency = torch.zeros((4, 5), dtype=torch.bool)
    saliency[0, :3] = True
    for thresh, kept in ((0.59, True), (0.6, True), (0.61, False)):
        keep, overlap = saliency_filter(masks, saliency, thresh)
        assert keep.tolist() == [kept] and overlap[0] == pytest.approx(0.6)


def test_mask_nms_suppresses_only_above_the_iou_threshold_and_keeps_the_best():
    big = np.zeros((10, 10), dtype=bool)
    big[:5, :10] = True  # 50 cells
    close = big.copy()
    close[4, :9] = False  # 41 cells inside big: IoU 0.82
    far = big.copy()
    far[4, :] = False
    far[3, :1] = False  # 39 cells: IoU 0.78
    scores = np.array([0.5, 0.9])
    assert mask_nms(torch.from_numpy(np.stack([close, big])), scores, 0.8).tolist() == [1]
    assert mask_nms(torch.from_numpy(np.stack([close, big])), scores, 0.85).tolist() == [1, 0]
    assert mask_nms(torch.from_numpy(np.stack([far, big])), scores, 0.8).tolist() == [1, 0]
    # Groups (images) never suppress each other; the result goes group by group.
    stack = torch.from_numpy(np.stack([close, big, big, close]))
    groups = np.array([1, 1, 0, 0])
    both = mask_nms(stack, np.array([0.5, 0.9, 0.9, 0.5]), 0.8, groups=groups)
    assert both.tolist() == [2, 1]


def test_upsampling_maps_the_grid_onto_the_full_image():
    grid = torch.zeros(1, 2, 2, dtype=torch.bool)
    grid[0, 0, 0] = True
    full = upsample_masks(grid, (8, 12))
    assert full.shape == (1, 8, 12) and full.dtype == torch.bool and full[0, :3, :5].all()
    assert not full[0, 5:].any() and not full[0, :, 7:].any() and 20 <= full.sum() <= 28


def _scene(height: int, width: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(120, 20, (height, width, 3))
    obj = np.zeros((height, width), dtype=bool)
    obj[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = True
    image[obj] = [230, 40, 50]
    image += rng.normal(0, 8, image.shape)
    return torch.from_numpy(image.clip(0, 255).astype(np.uint8)).permute(2, 0, 1), obj


def _cfg(generator: str):
    cfg = get_cfg()
    cfg.PROPOSALS.GENERATOR = generator
    for node in (cfg.PROPOSALS.EXTRACTOR, cfg.PROPOSALS.SALIENCY.EXTRACTOR):
        node.NAME, node.PATCH_SIZE = "PatchStats", 8
    cfg.PROPOSALS.SHORT_SIDE = 0
    return cfg


def test_spectral_generator_end_to_end_finds_the_object_at_image_resolution():
    generator = build_pseudo_mask_generator(_cfg("SpectralProposalGenerator"))
    assert generator.saliency_extractor is generator.extractor  # identical configs share
    scenes = [_scene(64, 80, 0), _scene(72, 56, 1)]
    # Two grid sizes (8 x 10, 9 x 7) in one batch: post-processed together on one canvas.
    outputs = generator([image for image, _ in scenes])
    for (image, obj), out in zip(scenes, outputs):
        n = len(out.masks)
        assert n >= 1 and out.masks.shape == (n, *image.shape[1:])
        assert isinstance(out.masks, torch.Tensor) and out.masks.dtype == torch.bool
        assert out.embeddings.shape == (n, 21) and out.scores.shape == (n,)
        assert set(out.extras) == {"k", "saliency_overlap"}
        assert np.all(out.extras["saliency_overlap"] >= 0.5)
        assert set(out.extras["k"].tolist()) <= {2, 3, 4, 5}
        masks = out.masks.numpy()
        ious = (masks & obj).sum((1, 2)) / (masks | obj).sum((1, 2))
        assert ious.max() > 0.7
        assert out.debug["saliency"].numpy()[obj[::8, ::8]].mean() > 0.8
        # The same image alone gives the same proposals: batching changes nothing.
        alone = generator([image])[0]
        assert torch.equal(alone.masks, out.masks) and np.array_equal(alone.scores, out.scores)
        assert np.array_equal(alone.extras["k"], out.extras["k"])
        np.testing.assert_allclose(alone.embeddings, out.embeddings, rtol=1e-5, atol=1e-6)
    info = generator.describe()
    assert info["extractor"]["name"] == "PatchStats" and info["K"] == [2, 3, 4, 5]


def test_saliency_clustered_in_the_instance_call_gives_the_same_proposals(monkeypatch):
    """The GPU path (saliency features padded and clustered with the instance features in one
    call), forced on the CPU, against separate calls, on noise-free scenes whose few distinct
    patch features leave no clustering ambiguous."""
    cfg = _cfg("SpectralProposalGenerator")
    cfg.PROPOSALS.SALIENCY.EXTRACTOR.PATCH_SIZE = 16  # other features: a mix-up would show
    generator = build_pseudo_mask_generator(cfg)
    images = []
    for top, left in ((16, 24), (8, 40)):
        image = torch.full((3, 64, 80), 120, dtype=torch.uint8)
        image[:, top : top + 32, left : left + 24] = torch.tensor([230, 40, 50])[:, None, None]
        images.append(image)
    features = torch.randn(21, 4, 5)
    padded = spectral_generator.pad_channels(features, 32)
    assert padded.shape == (32, 4, 5) and torch.equal(padded[:21], features)
    assert not spectral_generator.clusters_together([features], [features], [2, 3], 2)  # CPU
    separate = generator(images)
    monkeypatch.setattr(spectral_generator, "clusters_together", lambda *args: True)
    together = generator(images)
    for a, b in zip(separate, together):
        assert len(a.masks) >= 1 and torch.equal(a.masks, b.masks)
        assert np.array_equal(a.scores, b.scores)
        assert torch.equal(a.debug["saliency"], b.debug["saliency"])


def test_spectral_generator_without_saliency_scores_everything_equally():
    cfg = _cfg("SpectralProposalGenerator")
    cfg.PROPOSALS.SALIENCY.ENABLED = False
    out = build_pseudo_mask_generator(cfg)([_scene(48, 48, 2)[0]])[0]
    assert len(out.masks) >= 2 and np.all(out.scores == 1.0)
    assert set(out.extras) == {"k"} and "saliency" not in out.debug


# No component is that large; no overlap is above 1.
@pytest.mark.parametrize(
    "option", [("SPECTRAL.MIN_COMPONENT_PATCHES", "1000000"), ("SALIENCY.OVERLAP_THRESH", "1.5")]
)
def test_spectral_generator_with_nothing_left_gives_empty_proposals(option):
    cfg = _cfg("SpectralProposalGenerator")
    cfg.merge_from_list([f"PROPOSALS.{option[0]}", option[1]])
    generator = build_pseudo_mask_generator(cfg)
    assert generator([]) == []
    sizes = [(48, 48), (40, 56)]
    for out, size in zip(generator([_scene(*size, 2)[0] for size in sizes]), sizes, strict=True):
        assert out.masks.shape == (0, *size)
        assert out.embeddings.shape == (0, 21) and out.scores.shape == (0,)
        assert all(len(values) == 0 for values in out.extras.values())


def test_free_mask_generator_end_to_end():
    cfg = _cfg("FreeMaskGenerator")
    image, obj = _scene(64, 96, 3)
    out = build_pseudo_mask_generator(cfg)([image])[0]
    n = len(out.masks)
    assert 1 <= n <= cfg.PROPOSALS.FREE_MASK.MAX_MASKS
    assert out.masks.shape == (n, 64, 96) and out.embeddings.shape == (n, 21)
    assert out.masks.dtype == torch.bool
    assert np.all(out.scores >= cfg.PROPOSALS.FREE_MASK.MASKNESS_THRESH)
    assert np.all(np.diff(out.scores) <= 0)
    masks = out.masks.numpy()
    ious = (masks & obj).sum((1, 2)) / (masks | obj).sum((1, 2))
    assert ious.max() > 0.7


def test_generators_from_plain_arguments_equal_the_config_built_ones():
    """The detectron2 way: a constructor of plain arguments, ``from_config`` the only reader of
    the config; both routes give the same generator."""
    extractor = PatchStats(arch="vit_base_patch16_224", patch_size=8, short_side=0)
    image = _scene(48, 56, 4)[0]
    spectral = spectral_generator.SpectralProposalGenerator(
        extractor=extractor,
        saliency_extractor=extractor,
        spectral=spectral_generator.SpectralParams((2, 3, 4, 5), 8, 50, 0, 2),
        saliency=spectral_generator.SaliencyParams(k=2, overlap_thresh=0.5),
        nms_thresh=0.8,
    )
    free_mask = FreeMaskGenerator(
        extractor=extractor, params=FreeMaskParams((1.0, 0.5, 0.25), 0.5, 0.7, 20, True)
    )
    for direct in (spectral, free_mask):
        from_cfg = build_pseudo_mask_generator(_cfg(type(direct).__name__))
        assert type(from_cfg) is type(direct) and from_cfg.describe() == direct.describe()
        a, b = direct([image])[0], from_cfg([image])[0]
        assert len(a.masks) >= 1 and torch.equal(a.masks, b.masks)
        assert np.array_equal(a.scores, b.scores) and np.array_equal(a.embeddings, b.embeddings)


def test_free_mask_queries_and_background_heuristics():
    queries, scales = query_features(torch.randn(5, 8, 12), [1.0, 0.5, 0.25])
    assert queries.shape == (96 + 24 + 6, 5) and scales[-1] == 0.25
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, 0:2, 3:5] = True  # centre in the top 20%
    masks[1, 6:8, 0:10] = True  # spans the full width
    masks[2, 5:8, 2:6] = True  # an ordinary object
    assert background_like(masks).tolist() == [True, True, False]
