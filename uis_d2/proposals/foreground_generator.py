"""A foreground provider's map as the one pseudo-mask of each image: COMUS's salient-object
proposal (Zadaianchuk et al. 2023, section 3.1; SEED_SYSTEMS.md §2.1, §5.2(a)).

COMUS takes the whole binary saliency map of an image as one object proposal (no component
split; its box spans every salient pixel) and drops images whose map holds at most 400 pixels.
Here the map comes from any provider of ``PROPOSALS.SALIENCY.PROVIDERS`` (``ExternalMaps`` for
COMUS's BASNet maps, or ``AttentionMass``, ``MaskCutUnion``, ... and their combinations), so
the pseudo-class clustering and the semantic stage can start from any foreground. Score 1.0;
embedding = the mean ``PROPOSALS.EXTRACTOR`` feature inside the map, as the other generators.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.features.base import (
    FeatureExtractor,
    extract_features_and_tokens,
)
from uis_d2.foreground.base import ForegroundProvider, build_foreground_provider, resize_map
from uis_d2.proposals.base import (
    PSEUDO_MASK_GENERATOR_REGISTRY,
    ProposalGenerator,
    Proposals,
    instance_extractor,
)


@PSEUDO_MASK_GENERATOR_REGISTRY.register()
class ForegroundGenerator(ProposalGenerator):
    """One proposal per image: its foreground map (see the module docstring)."""

    @configurable
    def __init__(
        self, *, extractor: FeatureExtractor, foreground: ForegroundProvider, min_pixels: int
    ) -> None:
        self.extractor = extractor
        self.foreground = foreground
        self.min_pixels = min_pixels

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        extractor, shared = instance_extractor(cfg)
        return {
            "extractor": extractor,
            "foreground": build_foreground_provider(cfg, extractor=shared),
            "min_pixels": cfg.PROPOSALS.FOREGROUND.MIN_PIXELS,
        }

    def to(self, device: torch.device) -> ForegroundGenerator:
        self.extractor.to(device)
        self.foreground.to(device)
        return self

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        if not images:
            return []
        features, tokens = extract_features_and_tokens(self.extractor, images)
        if self.foreground.extractor is self.extractor:
            maps = self.foreground(images, features, tokens, names=names)
        else:
            maps = self.foreground(images, names=names)
        return [
            single_mask_proposals(image, feature, foreground, self.min_pixels)
            for image, feature, foreground in zip(images, features, maps, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "generator": type(self).__name__,
            "extractor": self.extractor.describe(),
            "foreground": self.foreground.describe(),
            "min_pixels": self.min_pixels,
            "short_side": self.extractor.short_side,
            "max_side": self.extractor.max_side,
        }


def single_mask_proposals(
    image: torch.Tensor, feature: torch.Tensor, grid: torch.Tensor, min_pixels: int = 0
) -> Proposals:
    """One image's mask (h, w, any resolution) as one proposal at the image's size, with the
    mean feature inside it (resized to the feature grid) as its embedding; none when the mask
    has at most ``min_pixels`` pixels at that size."""
    masks = grid.to(feature.device)[None]
    size = (int(image.shape[1]), int(image.shape[2]))
    full = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    keep = full.flatten(1).sum(dim=1) > min_pixels
    if masks.shape[1:] != feature.shape[1:]:  # a map at another resolution than the features
        masks = resize_map(masks[0], tuple(feature.shape[1:]))[None]
    masks, full = masks[keep], full[keep]
    weights = masks.flatten(1).float()
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
    embeddings = (weights @ feature.flatten(1).T.float()).cpu().numpy().astype(np.float32)
    return Proposals(
        masks=full,
        scores=np.ones(len(full), dtype=np.float32),
        embeddings=embeddings,
        debug={"foreground": grid, "grid_size": tuple(feature.shape[1:])},
    )
