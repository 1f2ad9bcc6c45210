"""The contract every registered pseudo-mask generator fulfils.

Generators are plug-ins, built the detectron2 way: ``@PSEUDO_MASK_GENERATOR_REGISTRY.register()``
on a class whose ``@configurable`` constructor takes plain arguments (built feature extractors,
small frozen parameter dataclasses) and whose ``from_config(cls, cfg)`` classmethod is the only
place that reads the config; ``build_pseudo_mask_generator(cfg)`` picks
``cfg.PROPOSALS.GENERATOR``. The driver, uis_d2/proposals/runner.py (called by
tools/generate_proposals.py), only ever talks to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fvcore.common.registry import Registry

from uis_d2.features.base import FeatureExtractor, build_feature_extractor

PSEUDO_MASK_GENERATOR_REGISTRY = Registry("PSEUDO_MASK_GENERATOR")
PSEUDO_MASK_GENERATOR_REGISTRY.__doc__ = (
    "Offline pseudo-mask generators, built from cfg.PROPOSALS by their from_config."
)


@dataclass
class Proposals:
    """Pseudo-masks of one image, at the image's original resolution."""

    # (N, H, W) bool; may stay a tensor on the generator's device (GPU), so that the writer
    # encodes it there instead of copying every full-resolution mask to the host first.
    masks: np.ndarray | torch.Tensor
    scores: np.ndarray  # (N,) float32, higher = more confident; ranks mask NMS
    embeddings: np.ndarray  # (N, C) float32, mean feature inside each mask (semantic loss)
    # Per-mask fields written into each annotation, e.g. {"k": (N,), "saliency_overlap": (N,)}.
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    # Intermediate maps for --vis only (e.g. per-k label maps, the saliency map); never written.
    # May be tensors on any device: only --vis copies the ones it draws to the host.
    debug: dict[str, Any] = field(default_factory=dict)


class ProposalGenerator:
    """Base class: turns a batch of decoded images into per-image proposals."""

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        """``images``: RGB uint8 tensors (3, H, W) of any sizes, on any device; ``names``: their
        file names as the output records them (relative to the dataset's image root), for
        generators whose inputs include per-image files (a foreground provider reading saliency
        maps); the others ignore it."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Provenance recorded in the output json's ``info`` (names, checkpoint hashes)."""
        raise NotImplementedError

    def to(self, device: torch.device) -> ProposalGenerator:
        """Move the feature extractors to ``device``; returns self."""
        raise NotImplementedError


def build_pseudo_mask_generator(cfg) -> ProposalGenerator:
    """Instantiate the generator named by ``cfg.PROPOSALS.GENERATOR`` from ``cfg``."""
    name = cfg.PROPOSALS.GENERATOR
    if name not in PSEUDO_MASK_GENERATOR_REGISTRY:
        known = sorted(k for k, _ in PSEUDO_MASK_GENERATOR_REGISTRY)
        raise KeyError(f"PROPOSALS.GENERATOR = {name!r} is not registered; known: {known}")
    return PSEUDO_MASK_GENERATOR_REGISTRY.get(name)(cfg)


def instance_extractor(cfg) -> tuple[FeatureExtractor, FeatureExtractor | None]:
    """``PROPOSALS.EXTRACTOR``'s module, and the same module again when ``SALIENCY.EXTRACTOR``
    is configured identically (so a saliency provider shares it and its forward), else None."""
    p = cfg.PROPOSALS
    extractor = build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)
    return extractor, extractor if p.SALIENCY.EXTRACTOR == p.EXTRACTOR else None
