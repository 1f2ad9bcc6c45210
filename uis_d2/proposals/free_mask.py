"""FreeSOLO's Free Mask (Wang et al. 2022, section 3.2) as a proposal generator.

Queries = the feature map bilinearly resized by each of ``QUERY_SCALES``, flattened and
concatenated; keys = the full map. Each query's cosine-similarity map over the keys is min-max
normalised to [0, 1] (soft mask) and thresholded at ``MASK_THRESH``; maskness = mean soft value
inside the binary mask. After dropping masks of <= 1 cell, Matrix NMS (one label, gaussian,
sigma 2 as in SOLOv2) decays the maskness; masks keeping >= ``MASKNESS_THRESH`` survive, best
``MAX_MASKS`` first. With ``DROP_BORDER_MASKS`` (the reference's heuristics) masks whose centre
lies in the top 20% of the image or whose box spans >= 95% of its width are dropped as
background (sky, floor). Embedding of a mask = its (un-normalised) query feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.features.base import FeatureExtractor, build_feature_extractor, extract_features
from uis_d2.layers.matrix_nms import matrix_nms
from uis_d2.proposals.base import PSEUDO_MASK_GENERATOR_REGISTRY, ProposalGenerator, Proposals
from uis_d2.proposals.postprocess import upsample_masks

_NMS_KERNEL = "gaussian"
_NMS_SIGMA = 2.0
_TOP_FRACTION = 0.2
_WIDE_FRACTION = 0.95


@dataclass(frozen=True)
class FreeMaskParams:
    """``PROPOSALS.FREE_MASK``, one field per key (see the module docstring)."""

    query_scales: tuple[float, ...]
    mask_thresh: float
    maskness_thresh: float
    max_masks: int
    drop_border_masks: bool


def query_features(feature: torch.Tensor, scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) -> queries (Q, C) over all scales, and each query's scale (Q,)."""
    queries, query_scales = [], []
    for scale in scales:
        size = (max(1, round(feature.shape[1] * scale)), max(1, round(feature.shape[2] * scale)))
        resized = F.interpolate(feature[None], size=size, mode="bilinear", align_corners=False)
        queries.append(resized[0].flatten(1).T)
        query_scales.append(torch.full((size[0] * size[1],), float(scale)))
    return torch.cat(queries), torch.cat(query_scales)


def soft_masks(queries: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query with every key, min-max normalised per query.

    Returns (Q, h, w) in [0, 1]; a query whose map is constant gets all zeros.
    """
    keys = F.normalize(feature.flatten(1).T, dim=-1)
    similarity = F.normalize(queries, dim=-1) @ keys.T
    low = similarity.min(dim=1, keepdim=True).values
    span = similarity.max(dim=1, keepdim=True).values - low
    soft = torch.where(span > 1e-6, (similarity - low) / span.clamp_min(1e-6), 0.0)
    return soft.reshape(-1, *feature.shape[1:])


def background_like(masks: torch.Tensor) -> torch.Tensor:
    """(M, h, w) bool -> (M,) True where the centre is in the top 20% or the box spans >= 95%
    of the width (the reference's background heuristics)."""
    h, w = masks.shape[1:]
    rows = torch.arange(h, device=masks.device, dtype=torch.float32)
    cols = masks.any(dim=1)
    area = masks.flatten(1).sum(1).clamp_min(1)
    centre_y = (masks.sum(dim=2).float() @ rows) / area
    col_index = torch.arange(w, device=masks.device)
    left = torch.where(cols, col_index, w).min(dim=1).values
    right = torch.where(cols, col_index, -1).max(dim=1).values
    width = (right - left + 1).float()
    return (centre_y + 0.5 < _TOP_FRACTION * h) | (width >= _WIDE_FRACTION * w)


@PSEUDO_MASK_GENERATOR_REGISTRY.register()
class FreeMaskGenerator(ProposalGenerator):
    """Query-key cosine masks ranked by maskness (FreeSOLO's Free Mask)."""

    @configurable
    def __init__(self, *, extractor: FeatureExtractor, params: FreeMaskParams) -> None:
        self.extractor = extractor
        self.params = params

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        p, fm = cfg.PROPOSALS, cfg.PROPOSALS.FREE_MASK
        params = FreeMaskParams(  # the fields are FREE_MASK's keys, in this order
            tuple(fm.QUERY_SCALES),
            fm.MASK_THRESH,
            fm.MASKNESS_THRESH,
            fm.MAX_MASKS,
            fm.DROP_BORDER_MASKS,
        )
        return {
            "extractor": build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP),
            "params": params,
        }

    def to(self, device: torch.device) -> FreeMaskGenerator:
        self.extractor.to(device)
        return self

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        features = extract_features(self.extractor, images)
        return [self._proposals(image, feature) for image, feature in zip(images, features)]

    def _proposals(self, image: torch.Tensor, feature: torch.Tensor) -> Proposals:
        params = self.params
        feature = feature.float()
        queries, scales = query_features(feature, list(params.query_scales))
        soft = soft_masks(queries, feature)
        masks = soft > params.mask_thresh
        area = masks.flatten(1).sum(1)
        maskness = (soft * masks).flatten(1).sum(1) / area.clamp_min(1)
        keep = area > 1
        if params.drop_border_masks:
            keep &= ~background_like(masks)
        index = torch.nonzero(keep).squeeze(1)
        decayed = matrix_nms(masks[index], maskness[index], kernel=_NMS_KERNEL, sigma=_NMS_SIGMA)
        survivors = decayed >= params.maskness_thresh
        index, decayed = index[survivors], decayed[survivors]
        order = torch.argsort(decayed, descending=True, stable=True)[: params.max_masks]
        index, decayed = index[order], decayed[order]
        size = (int(image.shape[1]), int(image.shape[2]))
        return Proposals(
            masks=upsample_masks(masks[index], size),
            scores=decayed.cpu().numpy().astype(np.float32),
            embeddings=queries[index].cpu().numpy().astype(np.float32),
            extras={
                "maskness": maskness[index].cpu().numpy().astype(np.float32),
                "query_scale": scales[index.cpu()].numpy().astype(np.float32),
            },
            debug={"grid_size": tuple(feature.shape[1:])},
        )

    def describe(self) -> dict[str, Any]:
        params = self.params
        return {
            "generator": type(self).__name__,
            "extractor": self.extractor.describe(),
            "query_scales": list(params.query_scales),
            "mask_thresh": params.mask_thresh,
            "maskness_thresh": params.maskness_thresh,
            "max_masks": params.max_masks,
            "drop_border_masks": params.drop_border_masks,
            "short_side": self.extractor.short_side,
            "max_side": self.extractor.max_side,
        }
