"""The paper's proposals (Engstler et al. 2023, section 4 and A.2.1).

Per image: multi-k spectral clustering of the instance features (every cluster of every k is a
candidate), split into connected components, keep those lying mostly inside a saliency map
(k-way clustering of the saliency features, foreground = the cluster off the border), then mask
NMS. Score of a proposal = its saliency overlap (1.0 when saliency is disabled); NMS keeps the
best-scored mask of a duplicate group, and equal scores prefer the smaller k (candidates are
enumerated by increasing k).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uis_d2.features.base import FeatureExtractor, build_feature_extractor, extract_features
from uis_d2.proposals.base import PROPOSAL_GENERATOR_REGISTRY, ProposalGenerator, Proposals
from uis_d2.proposals.postprocess import (
    border_foreground,
    mask_nms,
    saliency_filter,
    split_connected_components,
    upsample_masks,
)
from uis_d2.proposals.spectral import spectral_clustering


def build_extractors(cfg) -> tuple[FeatureExtractor, FeatureExtractor | None]:
    """Instance and saliency extractors; one shared module when both configs are identical."""
    p = cfg.PROPOSALS
    instance = build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)
    if not p.SALIENCY.ENABLED:
        return instance, None
    if p.SALIENCY.EXTRACTOR == p.EXTRACTOR:
        return instance, instance
    return instance, build_feature_extractor(p.SALIENCY.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)


def cluster_grouped(
    features: list[torch.Tensor], ks: list[int], cfg
) -> list[dict[int, np.ndarray]]:
    """Spectral clustering per image, batching images whose feature grids have the same size.

    ``features``: per image (C, h, w). Returns per image {k: (h, w) int label map}.
    """
    s = cfg.PROPOSALS.SPECTRAL
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, feature in enumerate(features):
        groups.setdefault(tuple(feature.shape), []).append(index)
    results: list[dict[int, np.ndarray]] = [{} for _ in features]
    for (channels, h, w), indices in groups.items():
        batch = torch.stack([features[i] for i in indices]).reshape(len(indices), channels, -1)
        labels = spectral_clustering(
            batch.transpose(1, 2), ks, s.KMEANS_RESTARTS, s.KMEANS_ITERS, cfg.PROPOSALS.SEED
        )
        for row, index in enumerate(indices):
            results[index] = {k: v[row].reshape(h, w).cpu().numpy() for k, v in labels.items()}
    return results


def _resize_grid_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == size:
        return mask
    return upsample_masks(torch.from_numpy(mask)[None], size)[0]


@PROPOSAL_GENERATOR_REGISTRY.register()
class SpectralProposalGenerator(ProposalGenerator):
    """Multi-k spectral clustering + component splitting + saliency filter + mask NMS."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.extractor, self.saliency_extractor = build_extractors(cfg)

    def to(self, device: torch.device) -> SpectralProposalGenerator:
        self.extractor.to(device)
        if self.saliency_extractor is not None:
            self.saliency_extractor.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[Proposals]:
        p = self.cfg.PROPOSALS
        ks = [int(k) for k in p.SPECTRAL.K]
        features = extract_features(self.extractor, images)
        clusters = cluster_grouped(features, ks, self.cfg)
        saliency_maps: list[np.ndarray | None] = [None] * len(images)
        if self.saliency_extractor is not None:
            if self.saliency_extractor is self.extractor and p.SALIENCY.K in ks:
                saliency_labels = [{p.SALIENCY.K: c[p.SALIENCY.K]} for c in clusters]
            else:
                sal_features = (
                    features
                    if self.saliency_extractor is self.extractor
                    else extract_features(self.saliency_extractor, images)
                )
                saliency_labels = cluster_grouped(sal_features, [p.SALIENCY.K], self.cfg)
            saliency_maps = [border_foreground(s[p.SALIENCY.K]) for s in saliency_labels]
        return [
            self._proposals(image, feature, labels, saliency)
            for image, feature, labels, saliency in zip(images, features, clusters, saliency_maps)
        ]

    def _proposals(
        self,
        image: torch.Tensor,
        feature: torch.Tensor,
        labels: dict[int, np.ndarray],
        saliency: np.ndarray | None,
    ) -> Proposals:
        p = self.cfg.PROPOSALS
        grid = feature.shape[1:]
        candidates = [labels[k] == c for k in labels for c in range(k)]
        candidate_k = [k for k in labels for _ in range(k)]
        masks, parents = split_connected_components(
            np.stack(candidates), p.SPECTRAL.MIN_COMPONENT_PATCHES
        )
        ks = np.asarray(candidate_k, dtype=np.int32)[parents]
        debug: dict[str, Any] = {"labels": labels, "grid_size": tuple(grid)}
        if saliency is not None:
            saliency = _resize_grid_mask(saliency, tuple(grid))
            keep, overlap = saliency_filter(masks, saliency, p.SALIENCY.OVERLAP_THRESH)
            masks, ks, overlap = masks[keep], ks[keep], overlap[keep]
            scores = overlap.copy()
            debug["saliency"] = saliency
        else:  # no saliency: every candidate scores 1 and no overlap is recorded
            overlap = None
            scores = np.ones(len(masks), dtype=np.float32)
        keep = mask_nms(masks, scores, p.NMS_THRESH) if len(masks) else np.zeros(0, np.int64)
        masks, ks, scores = masks[keep], ks[keep], scores[keep]
        extras = {"k": ks}
        if overlap is not None:
            extras["saliency_overlap"] = overlap[keep].astype(np.float32)
        grid_masks = torch.from_numpy(masks).to(feature.device)
        weights = grid_masks.flatten(1).float()
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        embeddings = weights @ feature.flatten(1).T.float()  # mean feature inside each mask
        return Proposals(
            masks=upsample_masks(grid_masks, (int(image.shape[1]), int(image.shape[2]))),
            scores=scores.astype(np.float32),
            embeddings=embeddings.cpu().numpy().astype(np.float32),
            extras=extras,
            debug=debug,
        )

    def describe(self) -> dict[str, Any]:
        p = self.cfg.PROPOSALS
        info = {
            "generator": type(self).__name__,
            "extractor": self.extractor.describe(),
            "saliency_extractor": (
                None if self.saliency_extractor is None else self.saliency_extractor.describe()
            ),
            "K": list(p.SPECTRAL.K),
            "saliency_k": p.SALIENCY.K,
            "saliency_overlap_thresh": p.SALIENCY.OVERLAP_THRESH,
            "nms_thresh": p.NMS_THRESH,
            "short_side": p.SHORT_SIDE,
            "max_side": p.MAX_SIDE,
            "seed": p.SEED,
        }
        return info
