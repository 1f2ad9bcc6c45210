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

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from uis_d2.features.base import build_feature_extractor, extract_features
from uis_d2.modeling.solov2.matrix_nms import matrix_nms
from uis_d2.proposals.base import PROPOSAL_GENERATOR_REGISTRY, ProposalGenerator, Proposals
from uis_d2.proposals.postprocess import upsample_masks

_NMS_KERNEL = "gaussian"
_NMS_SIGMA = 2.0
_TOP_FRACTION = 0.2
_WIDE_FRACTION = 0.95


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


@PROPOSAL_GENERATOR_REGISTRY.register()
class FreeMaskGenerator(ProposalGenerator):
    """Query-key cosine masks ranked by maskness (FreeSOLO's Free Mask)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        p = cfg.PROPOSALS
        self.extractor = build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)

    def to(self, device: torch.device) -> FreeMaskGenerator:
        self.extractor.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[Proposals]:
        features = extract_features(self.extractor, images)
        return [self._proposals(image, feature) for image, feature in zip(images, features)]

    def _proposals(self, image: torch.Tensor, feature: torch.Tensor) -> Proposals:
        fm = self.cfg.PROPOSALS.FREE_MASK
        feature = feature.float()
        queries, scales = query_features(feature, list(fm.QUERY_SCALES))
        soft = soft_masks(queries, feature)
        masks = soft > fm.MASK_THRESH
        area = masks.flatten(1).sum(1)
        maskness = (soft * masks).flatten(1).sum(1) / area.clamp_min(1)
        keep = area > 1
        if fm.DROP_BORDER_MASKS:
            keep &= ~background_like(masks)
        index = torch.nonzero(keep).squeeze(1)
        decayed = matrix_nms(masks[index], maskness[index], kernel=_NMS_KERNEL, sigma=_NMS_SIGMA)
        survivors = decayed >= fm.MASKNESS_THRESH
        index, decayed = index[survivors], decayed[survivors]
        order = torch.argsort(decayed, descending=True, stable=True)[: fm.MAX_MASKS]
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
        fm = self.cfg.PROPOSALS.FREE_MASK
        return {
            "generator": type(self).__name__,
            "extractor": self.extractor.describe(),
            "query_scales": list(fm.QUERY_SCALES),
            "mask_thresh": fm.MASK_THRESH,
            "maskness_thresh": fm.MASKNESS_THRESH,
            "max_masks": fm.MAX_MASKS,
            "drop_border_masks": fm.DROP_BORDER_MASKS,
            "short_side": self.cfg.PROPOSALS.SHORT_SIDE,
            "max_side": self.cfg.PROPOSALS.MAX_SIDE,
        }
