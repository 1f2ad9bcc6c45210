"""ForegroundGenerator: a provider's map as the one proposal of each image (COMUS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import uis_d2  # noqa: F401  (registrations)
from uis_d2.config import load_config
from uis_d2.data.synthetic import render_scene
from uis_d2.foreground.base import build_foreground_provider, resize_map
from uis_d2.proposals import build_pseudo_mask_generator
from uis_d2.proposals.foreground_generator import ForegroundGenerator

CONFIG = Path(__file__).resolve().parents[1] / "configs/proposals/synthetic_comus.yaml"


def _scenes(count: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(3)
    return [torch.from_numpy(render_scene(rng)[0].transpose(2, 0, 1).copy()) for _ in range(count)]


def test_each_image_gets_its_whole_foreground_map_as_one_proposal():
    cfg = load_config(CONFIG)
    generator = build_pseudo_mask_generator(cfg)
    assert isinstance(generator, ForegroundGenerator)
    assert generator.foreground.extractor is generator.extractor  # one forward serves both
    images = _scenes(4)
    maps = build_foreground_provider(cfg, "AttentionMass")(images)
    for image, proposals, foreground in zip(images, generator(images), maps, strict=True):
        expected = resize_map(foreground, tuple(image.shape[1:]))
        assert len(proposals.masks) == 1 and proposals.scores.tolist() == [1.0]
        mask = torch.as_tensor(proposals.masks[0])
        # Nearest-neighbour growth of the grid map: it agrees with the bilinear rule except
        # along the map's edges.
        agreement = (mask == expected).float().mean()
        assert agreement > 0.95 and mask.any()
        assert proposals.embeddings.shape[0] == 1
        assert np.isfinite(proposals.embeddings).all()


def test_a_map_of_at_most_min_pixels_gives_no_proposal():
    cfg = load_config(CONFIG, ["PROPOSALS.FOREGROUND.MIN_PIXELS", str(10**7)])
    generator = build_pseudo_mask_generator(cfg)
    assert all(len(p.masks) == 0 for p in generator(_scenes(2)))
    assert generator.describe()["min_pixels"] == 10**7
