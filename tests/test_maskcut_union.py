"""MaskCutUnion: the foreground provider made of the union of MaskCut's cuts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (registrations)
from uis_d2.config import load_config
from uis_d2.data.synthetic import render_scene
from uis_d2.features.base import build_feature_extractor, extract_features
from uis_d2.foreground import build_foreground_provider
from uis_d2.foreground.base import resize_map
from uis_d2.proposals import build_pseudo_mask_generator
from uis_d2.proposals.maskcut import MaskCutGenerator, MaskCutUnion

REPO = Path(__file__).resolve().parents[1]


def _cfg(*opts: str):
    """MaskCut on the weight-free features at a 128 x 128 input (16 x 16 patches): fast."""
    config = REPO / "configs/proposals/synthetic_maskcut.yaml"
    return load_config(config, ["PROPOSALS.MASKCUT.INPUT_SIZE", "128", *opts])


def _scenes(count: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [torch.from_numpy(render_scene(rng)[0].transpose(2, 0, 1).copy()) for _ in range(count)]


def test_the_map_is_the_union_of_the_generators_masks_at_pixel_resolution():
    cfg = _cfg("PROPOSALS.FOREGROUND.MASKCUT_UNION.SHARED_FEATURES", "False")
    provider = build_foreground_provider(cfg, "MaskCutUnion")
    assert isinstance(provider, MaskCutUnion)
    generator = build_pseudo_mask_generator(cfg)
    assert isinstance(generator, MaskCutGenerator)
    images = _scenes(3)
    maps = provider(images)
    proposals = generator(images)
    assert len(maps) == len(images)
    covered = 0
    for image, foreground, p in zip(images, maps, proposals, strict=True):
        masks = torch.as_tensor(p.masks)
        assert foreground.dtype == torch.bool and foreground.shape == image.shape[1:]
        union = masks.any(dim=0) if len(masks) else torch.zeros_like(foreground)
        assert torch.equal(foreground, union)
        covered += int(len(masks) > 0)
    assert covered == len(images)  # every scene has at least one cut: the check is not vacuous


def test_it_uses_the_saliency_extractor_or_the_one_it_is_given():
    cfg = _cfg("PROPOSALS.SALIENCY.EXTRACTOR.PATCH_SIZE", "16")
    own = build_foreground_provider(cfg, "MaskCutUnion")
    assert own.extractor.describe() != build_pseudo_mask_generator(cfg).extractor.describe()
    assert own.extractor.stride == 16
    shared = build_feature_extractor(cfg.PROPOSALS.SALIENCY.EXTRACTOR, 0, 0)
    provider = build_foreground_provider(cfg, "MaskCutUnion", extractor=shared)
    assert provider.extractor is shared and provider.generator.extractor is shared
    described = provider.describe()
    assert described["provider"] == "MaskCutUnion" and described["num_masks"] == 4


def test_shared_features_cut_the_images_own_grid_as_the_generator_does_without_a_square():
    cfg = _cfg("PROPOSALS.MASKCUT.INPUT_SIZE", "0")  # the generator then cuts the image's grid
    provider = build_foreground_provider(cfg, "MaskCutUnion")
    generator = build_pseudo_mask_generator(cfg)
    images = _scenes(3)
    maps = provider(images)
    handed = provider(images, features=extract_features(provider.extractor, images))
    for foreground, again, p in zip(maps, handed, generator(images), strict=True):
        union = p.debug["grid_masks"].any(axis=0)
        assert foreground.shape == p.debug["grid_size"] and union.any()
        assert np.array_equal(foreground.numpy(), union) and torch.equal(foreground, again)


def test_in_the_spectral_generator_it_reuses_the_instance_forward(monkeypatch):
    cfg = _cfg(
        "PROPOSALS.GENERATOR", "SpectralProposalGenerator",
        "PROPOSALS.SALIENCY.PROVIDERS", "['MaskCutUnion']",
    )  # fmt: skip
    generator = build_pseudo_mask_generator(cfg)
    assert generator.foreground.extractor is generator.extractor
    calls = []
    forward = type(generator.extractor).forward
    monkeypatch.setattr(
        type(generator.extractor),
        "forward",
        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k),
    )
    images = _scenes(3)
    generator(images)
    assert len(calls) == len({tuple(i.shape) for i in images})  # one forward per image size


@pytest.mark.parametrize("shared", ["True", "False"])
def test_no_images_give_no_maps_and_a_constant_image_an_empty_one(shared):
    cfg = _cfg("PROPOSALS.FOREGROUND.MASKCUT_UNION.SHARED_FEATURES", shared)
    provider = build_foreground_provider(cfg, "MaskCutUnion")
    assert provider([]) == []
    (empty,) = provider([torch.full((3, 40, 56), 90, dtype=torch.uint8)])
    assert not empty.any()
    assert empty.shape == ((40, 56) if shared == "False" else (5, 7))


def test_it_serves_as_the_spectral_generators_saliency():
    cfg = _cfg(
        "PROPOSALS.GENERATOR", "SpectralProposalGenerator",
        "PROPOSALS.SALIENCY.PROVIDERS", "['MaskCutUnion']",
    )  # fmt: skip
    generator = build_pseudo_mask_generator(cfg)
    assert generator.describe()["foreground"]["provider"] == "MaskCutUnion"
    images = _scenes(2)
    maps = build_foreground_provider(cfg, "MaskCutUnion")(images)
    for p, foreground in zip(generator(images), maps, strict=True):
        masks = torch.as_tensor(p.masks)
        foreground = resize_map(foreground, tuple(masks.shape[1:]))
        # Kept proposals lie mostly inside the foreground (the grid-level filter, at 0.5).
        inside = (masks & foreground).flatten(1).sum(1) / masks.flatten(1).sum(1)
        assert len(masks) > 0 and (inside > 0.3).all()
