"""The paper's proposals (Engstler et al. 2023, section 4 and A.2.1).

Per image: multi-k spectral clustering of the instance features (every cluster of every k is a
candidate), split into connected components, keep those lying mostly inside a saliency map
(k-way clustering of the saliency features, foreground = the cluster off the border), then mask
NMS. Score of a proposal = its saliency overlap (1.0 when saliency is disabled); NMS keeps the
best-scored mask of a duplicate group, and equal scores prefer the smaller k (candidates are
enumerated by increasing k).

The saliency map comes from the foreground providers of ``PROPOSALS.SALIENCY.PROVIDERS``
(uis_d2/foreground/). The default, ``SpectralBorder`` (the paper's), is registered here and runs
inside the generator, where its clustering shares the instance clustering's call (same features
on a CPU, one batched call on a GPU); any other provider or combination is called as a plug-in
and its maps are resized to the instance grid.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable

from uis_d2.features.base import (
    FeatureExtractor,
    extract_features,
    extract_features_and_tokens,
)
from uis_d2.foreground.base import (
    FOREGROUND_REGISTRY,
    ForegroundProvider,
    build_foreground_provider,
    build_saliency_extractor,
    resize_map,
)
from uis_d2.proposals.base import (
    PSEUDO_MASK_GENERATOR_REGISTRY,
    ProposalGenerator,
    Proposals,
    instance_extractor,
)
from uis_d2.proposals.postprocess import (
    border_foreground,
    mask_nms,
    saliency_filter,
    split_connected_components,
    upsample_masks,
)
from uis_d2.proposals.spectral import spectral_clustering


@dataclass(frozen=True)
class SpectralParams:
    """``PROPOSALS.SPECTRAL`` and ``PROPOSALS.SEED``: the ks clustered (as configured; cast to
    int where used), k-means restarts and Lloyd steps, the seed of the eigensolver's start and
    of k-means, and the smallest connected component kept (in patches)."""

    ks: tuple[int, ...]
    restarts: int
    iters: int
    seed: int
    min_component_patches: int


def spectral_params(cfg) -> SpectralParams:
    """``PROPOSALS.SPECTRAL`` and ``PROPOSALS.SEED`` as parameters (generator and provider)."""
    s = cfg.PROPOSALS.SPECTRAL
    return SpectralParams(
        ks=tuple(s.K),
        restarts=s.KMEANS_RESTARTS,
        iters=s.KMEANS_ITERS,
        seed=cfg.PROPOSALS.SEED,
        min_component_patches=s.MIN_COMPONENT_PATCHES,
    )


@dataclass(frozen=True)
class SaliencyParams:
    """``PROPOSALS.SALIENCY``: the k of the saliency clustering and the overlap a proposal
    needs with the saliency map (whether saliency is on is whether there is an extractor)."""

    k: int
    overlap_thresh: float


def group_indices(keys: list[Hashable]) -> dict[Hashable, list[int]]:
    """Indices of the items of each key (e.g. a shape), so that same-size items form one batch."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups


def stack_padded(tensors: list[torch.Tensor], fill: float | bool) -> torch.Tensor:
    """Stack (..., h_i, w_i) tensors into (B, ..., H, W), padding at the bottom and the right.

    Padding there keeps the raster order of every grid's cells, so one canvas holds the patch
    grids of all images of a batch.
    """
    if len({t.shape for t in tensors}) == 1:
        return torch.stack(tensors)
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    first = tensors[0]
    out = first.new_full((len(tensors), *first.shape[:-2], height, width), fill)
    for canvas, tensor in zip(out, tensors):
        canvas[..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return out


def cluster_grouped(
    features: list[torch.Tensor], ks: list[int], params: SpectralParams
) -> list[dict[int, torch.Tensor]]:
    """Spectral clustering per image for every k of ``ks``, batching images whose feature grids
    have the same size, with the k-means settings and seed of ``params``.

    ``features``: per image (C, h, w). Returns per image {k: (h, w) long label map}, on the
    features' device.
    """
    results: list[dict[int, torch.Tensor]] = [{} for _ in features]
    for (channels, h, w), indices in group_indices([f.shape for f in features]).items():
        batch = torch.stack([features[i] for i in indices]).reshape(len(indices), channels, -1)
        labels = spectral_clustering(
            batch.transpose(1, 2), ks, params.restarts, params.iters, params.seed
        )
        for row, index in enumerate(indices):
            results[index] = {k: v[row].reshape(h, w) for k, v in labels.items()}
    return results


def clusters_together(
    features: list[torch.Tensor], sal_features: list[torch.Tensor], ks: list[int], k: int
) -> bool:
    """Whether the saliency features join the instance features' clustering call: on a GPU a
    call costs kernel launches and host syncs more than arithmetic (one shared call saved 1 ms
    per image on an H100, measured), on a CPU the extra k-means runs for the other ks would cost
    more than the call saves. Needs SALIENCY.K among K and the same grid for every image."""
    return (
        features[0].is_cuda
        and k in ks
        and all(f.shape[1:] == s.shape[1:] for f, s in zip(features, sal_features))
    )


def pad_channels(feature: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, h, w) -> (channels, h, w) with zero channels, which leave cosine affinities as they
    are, so features of different widths can share one clustering batch."""
    return torch.nn.functional.pad(feature, (0, 0, 0, 0, 0, channels - feature.shape[0]))


def clustering_calls(
    features: list[torch.Tensor], sal_features: list[torch.Tensor], ks: list[int], k: int
) -> list[tuple[list[torch.Tensor], list[int]]]:
    """The clustering calls (features, ks) for instance and separate saliency features: one
    shared call where ``clusters_together`` allows it, else one each. Their results, in order,
    list every instance image, then every saliency image."""
    if clusters_together(features, sal_features, ks, k):
        width = max(f.shape[0] for f in features + sal_features)
        return [([pad_channels(f, width) for f in features + sal_features], ks)]
    return [(features, ks), (sal_features, [k])]


def candidate_masks(clusters: list[dict[int, torch.Tensor]]) -> tuple[torch.Tensor, np.ndarray]:
    """Every cluster of every k is a candidate, enumerated by increasing k, then cluster id.

    Returns the candidates of all images (B, n, H, W) on a canvas holding every grid, and the k
    of each of the n candidates of an image (host int32).
    """
    ks = list(clusters[0])
    device = clusters[0][ks[0]].device
    candidate_k = np.asarray([k for k in ks for _ in range(k)], dtype=np.int32)
    cluster_ids = torch.tensor([c for k in ks for c in range(k)], device=device)
    map_index = torch.tensor([ks.index(k) for k in candidate_k.tolist()], device=device)
    label_maps = stack_padded([torch.stack([c[k] for k in ks]) for c in clusters], -1)
    return label_maps[:, map_index] == cluster_ids[:, None, None], candidate_k


def saliency_maps(
    labels: list[torch.Tensor], k: int, grids: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """Foreground of each image's k-way saliency clustering (h', w'), resized to its instance
    feature grid (h, w) when the two extractors' grids differ."""
    maps: list[torch.Tensor] = [torch.empty(0)] * len(labels)
    keys = [(tuple(label.shape), tuple(grid)) for label, grid in zip(labels, grids)]
    for (shape, grid), indices in group_indices(keys).items():
        foreground = border_foreground(torch.stack([labels[i] for i in indices]), k)
        if shape != grid:
            foreground = upsample_masks(foreground, grid)
        for index, saliency in zip(indices, foreground):
            maps[index] = saliency
    return maps


def mean_features(masks: torch.Tensor, image_of: np.ndarray, features: torch.Tensor) -> np.ndarray:
    """Mean feature inside each (K, H, W) grid mask of image ``image_of`` (sorted, host) in the
    (B, C, H, W) feature canvas: one batched product over masks padded per image. (K, C)."""
    counts = np.bincount(image_of, minlength=len(features))
    slot = np.arange(len(image_of)) - (np.cumsum(counts) - counts)[image_of]
    weights = masks.flatten(1).float()
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
    padded = weights.new_zeros((len(features), int(counts.max(initial=0)), weights.shape[1]))
    image_t = torch.from_numpy(image_of).to(masks.device)
    slot_t = torch.from_numpy(slot).to(masks.device)
    padded[image_t, slot_t] = weights
    means = torch.bmm(padded, features.flatten(2).float().transpose(1, 2))
    return means[image_t, slot_t].cpu().numpy().astype(np.float32)


def upsample_per_image(
    masks: torch.Tensor,
    image_of: np.ndarray,
    images: list[torch.Tensor],
    features: list[torch.Tensor],
) -> list[torch.Tensor]:
    """Each image's masks (cropped from the canvas to its feature grid) at the image's size, one
    interpolation per distinct (grid, image size) pair. Per image (N_i, H, W) bool."""
    sizes = [(tuple(f.shape[1:]), tuple(i.shape[1:])) for f, i in zip(features, images)]
    out: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for (grid, size), indices in group_indices(sizes).items():
        rows = [np.flatnonzero(image_of == index) for index in indices]
        selected = masks[torch.from_numpy(np.concatenate(rows)).to(masks.device)]
        full = upsample_masks(selected[:, : grid[0], : grid[1]], size)
        for index, part in zip(indices, full.split([len(r) for r in rows])):
            out[index] = part
    return out


@FOREGROUND_REGISTRY.register()
class SpectralBorder(ForegroundProvider):
    """The paper's saliency: k-way spectral clustering of the saliency features, foreground =
    the cluster touching the image border least (``border_foreground``); grid resolution."""

    @configurable
    def __init__(self, *, extractor: FeatureExtractor, k: int, spectral: SpectralParams) -> None:
        self.extractor = extractor
        self.k = k
        self.spectral = spectral

    @classmethod
    def from_config(cls, cfg, extractor: FeatureExtractor | None = None) -> dict[str, Any]:
        return {
            "extractor": build_saliency_extractor(cfg, extractor),
            "k": cfg.PROPOSALS.SALIENCY.K,
            "spectral": spectral_params(cfg),
        }

    @torch.no_grad()
    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        if features is None:
            features, clusters = extract_features(self.extractor, images), None
        if clusters is None or self.k not in clusters[0]:
            clusters = cluster_grouped(features, [self.k], self.spectral)
        return saliency_maps([c[self.k] for c in clusters], self.k, [f.shape[1:] for f in features])

    def describe(self) -> dict[str, Any]:
        return {"provider": "SpectralBorder", "k": self.k, "extractor": self.extractor.describe()}


@PSEUDO_MASK_GENERATOR_REGISTRY.register()
class SpectralProposalGenerator(ProposalGenerator):
    """Multi-k spectral clustering + component splitting + saliency filter + mask NMS.

    Saliency: ``saliency_extractor`` runs the built-in ``SpectralBorder`` path (``extractor``
    itself makes it reuse the instance features and their clustering); ``foreground`` is any
    other provider; neither disables saliency (every proposal scores 1).
    """

    @configurable
    def __init__(
        self,
        *,
        extractor: FeatureExtractor,
        saliency_extractor: FeatureExtractor | None,
        spectral: SpectralParams,
        saliency: SaliencyParams,
        nms_thresh: float,
        foreground: ForegroundProvider | None = None,
    ) -> None:
        if foreground is not None and saliency_extractor is not None:
            raise ValueError("give either the SpectralBorder saliency extractor or a provider")
        self.extractor = extractor
        self.saliency_extractor = saliency_extractor
        self.foreground = foreground
        self.spectral = spectral
        self.saliency = saliency
        self.nms_thresh = nms_thresh

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        p = cfg.PROPOSALS
        extractor, shared = instance_extractor(cfg)
        saliency_extractor = foreground = None
        if p.SALIENCY.ENABLED and list(p.SALIENCY.PROVIDERS) == ["SpectralBorder"]:
            saliency_extractor = build_saliency_extractor(cfg, shared)
        elif p.SALIENCY.ENABLED:
            foreground = build_foreground_provider(cfg, extractor=shared)
        return {
            "extractor": extractor,
            "saliency_extractor": saliency_extractor,
            "foreground": foreground,
            "spectral": spectral_params(cfg),
            "saliency": SaliencyParams(k=p.SALIENCY.K, overlap_thresh=p.SALIENCY.OVERLAP_THRESH),
            "nms_thresh": p.NMS_THRESH,
        }

    def to(self, device: torch.device) -> SpectralProposalGenerator:
        self.extractor.to(device)
        if self.saliency_extractor is not None:
            self.saliency_extractor.to(device)
        if self.foreground is not None:
            self.foreground.to(device)
        return self

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        if not images:  # a batch of unreadable files only
            return []
        ks = [int(k) for k in self.spectral.ks]
        # Tokens a provider sharing the instance extractor asked for come from this forward.
        features, tokens = extract_features_and_tokens(self.extractor, images)
        clusters, saliency_labels = self._cluster(images, features, ks)
        grids = [tuple(f.shape[1:]) for f in features]
        saliency = None
        if saliency_labels is not None:
            k = self.saliency.k
            saliency = saliency_maps([s[k] for s in saliency_labels], k, grids)
        elif self.foreground is not None:
            if self.foreground.extractor is self.extractor:
                maps = self.foreground(images, features, tokens, names=names, clusters=clusters)
            else:
                maps = self.foreground(images, names=names)
            saliency = [resize_map(m.to(f.device), g) for m, f, g in zip(maps, features, grids)]
        return self._proposals(images, features, clusters, saliency)

    def _cluster(
        self, images: list[torch.Tensor], features: list[torch.Tensor], ks: list[int]
    ) -> tuple[list[dict[int, torch.Tensor]], list[dict[int, torch.Tensor]] | None]:
        """Instance label maps per image for every k and, with saliency on, label maps with
        SALIENCY.K among their keys (None without saliency)."""
        k, params = self.saliency.k, self.spectral
        if self.saliency_extractor is None:
            return cluster_grouped(features, ks, params), None
        if self.saliency_extractor is self.extractor:
            clusters = cluster_grouped(features, ks, params)
            return clusters, clusters if k in ks else cluster_grouped(features, [k], params)
        sal_features = extract_features(self.saliency_extractor, images)
        calls = clustering_calls(features, sal_features, ks, k)
        labels = [
            maps for batch, call_ks in calls for maps in cluster_grouped(batch, call_ks, params)
        ]
        return labels[: len(images)], labels[len(images) :]

    def _proposals(
        self,
        images: list[torch.Tensor],
        features: list[torch.Tensor],
        clusters: list[dict[int, torch.Tensor]],
        saliency: list[torch.Tensor] | None,
    ) -> list[Proposals]:
        """Post-processing of the whole batch at once, on a canvas holding every image's grid."""
        device = features[0].device
        candidates, candidate_k = candidate_masks(clusters)
        masks, parents = split_connected_components(
            candidates.flatten(0, 1), self.spectral.min_component_patches
        )
        if saliency is not None:
            per_image = stack_padded(saliency, False)[parents // len(candidate_k)]
            keep, overlap = saliency_filter(masks, per_image, self.saliency.overlap_thresh)
            kept = np.flatnonzero(keep.cpu().numpy())
            masks = masks[torch.from_numpy(kept).to(device)]
            overlap = overlap.cpu().numpy()[kept]
            parents_host = parents.cpu().numpy()[kept]
            scores = overlap
        else:  # no saliency: every candidate scores 1 and no overlap is recorded
            overlap = None
            parents_host = parents.cpu().numpy()
            scores = np.ones(len(parents_host), dtype=np.float32)
        image_of = parents_host // len(candidate_k)
        kept = mask_nms(masks, scores, self.nms_thresh, groups=image_of)
        masks, image_of = masks[torch.from_numpy(kept).to(device)], image_of[kept]
        extras = {"k": candidate_k[parents_host[kept] % len(candidate_k)]}
        if overlap is not None:
            extras["saliency_overlap"] = overlap[kept]
        embeddings = mean_features(masks, image_of, stack_padded(features, 0.0))
        full = upsample_per_image(masks, image_of, images, features)
        scores = scores[kept].astype(np.float32)
        outputs = []
        for index, feature in enumerate(features):
            rows = image_of == index
            # Left on the device: only --vis reads them, and it converts what it draws.
            debug: dict[str, Any] = {
                "labels": clusters[index],
                "grid_size": tuple(feature.shape[1:]),
            }
            if saliency is not None:
                debug["saliency"] = saliency[index]
            outputs.append(
                Proposals(
                    masks=full[index],
                    scores=scores[rows],
                    embeddings=embeddings[rows],
                    extras={name: values[rows] for name, values in extras.items()},
                    debug=debug,
                )
            )
        return outputs

    def describe(self) -> dict[str, Any]:
        return {
            "generator": type(self).__name__,
            "extractor": self.extractor.describe(),
            "saliency_extractor": (
                None if self.saliency_extractor is None else self.saliency_extractor.describe()
            ),
            "foreground": None if self.foreground is None else self.foreground.describe(),
            "K": list(self.spectral.ks),
            "saliency_k": self.saliency.k,
            "saliency_overlap_thresh": self.saliency.overlap_thresh,
            "nms_thresh": self.nms_thresh,
            "short_side": self.extractor.short_side,
            "max_side": self.extractor.max_side,
            "seed": self.spectral.seed,
        }
