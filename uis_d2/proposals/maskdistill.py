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

from uis_d2.features.base import build_feature_extractor
from uis_d2.foreground.miner import MaskDistillMiner
from uis_d2.proposals.base import PSEUDO_MASK_GENERATOR_REGISTRY
from uis_d2.proposals.foreground_generator import ForegroundGenerator


@PSEUDO_MASK_GENERATOR_REGISTRY.register()
class MaskDistillGenerator(ForegroundGenerator):
    """One mined object per image (see the module docstring): the foreground generator with the
    miner on ``PROPOSALS.EXTRACTOR``, whose forward gives both the tokens and the features."""

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        p = cfg.PROPOSALS
        extractor = build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)
        miner = MaskDistillMiner(cfg, extractor=extractor)
        return {"extractor": extractor, "foreground": miner, "min_pixels": 0}
