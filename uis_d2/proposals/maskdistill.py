"""MaskDistill's object miner as a pseudo-mask generator (Van Gansbeke et al. 2022, section 3.2).

One class-agnostic mask per image, score 1.0, from the ``MaskDistillMiner`` foreground provider
(uis_d2/foreground/miner.py, the algorithm and its constants) on ``PROPOSALS.EXTRACTOR``'s
queries and keys, so it can train SOLOv2 or the detectors like any other generator. The grid
mask is upsampled to the image's size by nearest neighbour (the reference resizes a 0/255 PIL
image and thresholds at > 0, which dilates by up to a pixel); its embedding is the mean feature
inside it. An image whose mined mask is empty (all-zero keys, or cells lost when a coarse grid
shrinks onto a tiny image) gets no proposal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.features.base import build_feature_extractor, extract_features_and_tokens
from uis_d2.foreground.base import resize_map
from uis_d2.foreground.miner import MaskDistillMiner
from uis_d2.proposals.base import PSEUDO_MASK_GENERATOR_REGISTRY, ProposalGenerator, Proposals


@PSEUDO_MASK_GENERATOR_REGISTRY.register()
class MaskDistillGenerator(ProposalGenerator):
    """One mined object per image (see the module docstring)."""

    @configurable
    def __init__(self, *, miner: MaskDistillMiner) -> None:
        """``miner``: the provider, whose extractor gives both the tokens and the features."""
        self.miner = miner

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        p = cfg.PROPOSALS
        extractor = build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)
        return {"miner": MaskDistillMiner(cfg, extractor=extractor)}

    def to(self, device: torch.device) -> MaskDistillGenerator:
        self.miner.to(device)
        return self

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        if not images:
            return []
        features, tokens = extract_features_and_tokens(self.miner.extractor, images)
        masks = self.miner(images, features, tokens)
        return [
            single_mask_proposals(image, feature, mask)
            for image, feature, mask in zip(images, features, masks, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        extractor = self.miner.extractor
        return {
            "generator": type(self).__name__,
            "miner": self.miner.describe(),
            "short_side": extractor.short_side,
            "max_side": extractor.max_side,
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
        debug={"mined": grid, "grid_size": tuple(feature.shape[1:])},
    )
