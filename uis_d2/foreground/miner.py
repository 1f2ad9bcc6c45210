"""MaskDistill's object miner (Van Gansbeke et al. 2022, section 3.2; SEED_SYSTEMS.md 1.1).

One object per image from the last attention block's per-head queries q and keys k:

1. Class-token affinity ``a_CLS = mean_h q_CLS(h) . k_I(h)`` over the chosen heads (the paper:
   all; the reference: the first 5 of DINO ViT-S/16's 6) and key affinity
   ``A_I = mean_h k_I(h) k_I(h)^T`` over all heads; raw dot products (the reference's): a
   scale or softmax would keep ``a_CLS``'s ranking, and ``A_I`` is only read for its signs.
2. Optionally (the reference, not the paper: 50%) ``a_CLS`` is multiplied by the 0/1 mask of
   its entries holding that share of its mass, before the top-k. The reference takes the mass
   of the raw dot products; here negative entries count as no mass (a share of a sum with
   negative terms is undefined), which changes nothing when every entry is positive.
3. Candidates ``P`` = the top ``floor(top_k * N)`` patches by ``a_CLS`` (paper: 40%; at least
   one), the source ``s`` = the first of them (argmax).
4. LOST's diffusion: ``P' = {j in P : A_I[s, j] > 0}``; patch j is foreground iff
   ``sum_{i in P'} A_I[i, j] > 0``.
5. Optionally (the reference, not the paper) only the 4-connected component holding the
   source is kept.

``A_I`` is never built: since ``A_I[i, j]`` is the dot product of the head-concatenated keys
divided by the number of heads, the diffusion's sum is ``(sum_{i in P'} k_i) . k_j`` (same
sign), O(N C) instead of O(N^2 C).

Input handling (a choice, README "Proposals"): the reference resizes the short side to 640 and
zero-pads the bottom/right to a multiple of 16; here the extractor's shared preprocessing
resizes to the nearest multiple of the patch size instead (aspect change below half a patch),
so no padding tokens enter the attention or the candidates, one forward serves every provider,
and the grid maps back onto the whole image by a plain resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from scipy import ndimage

from uis_d2.features.base import FeatureExtractor
from uis_d2.foreground.attention import TokenProvider, head_mean, mass_share_mask
from uis_d2.foreground.base import (
    FOREGROUND_REGISTRY,
    build_saliency_extractor,
)

HEADS_KEY = "PROPOSALS.FOREGROUND.MINER.HEADS"


@dataclass(frozen=True)
class MinerParams:
    """``PROPOSALS.FOREGROUND.MINER``, one field per key (see the config's comments)."""

    heads: tuple[int, ...]
    top_k: float
    mass_prefilter: float
    seed_component: bool


def class_affinity(
    queries: torch.Tensor, keys: torch.Tensor, num_patches: int, heads: tuple[int, ...]
) -> torch.Tensor:
    """``a_CLS`` (N,) from per-head queries and keys (heads, T, d), class token first and the
    ``num_patches`` patch tokens last."""
    patches = keys[:, keys.shape[1] - num_patches :]
    per_head = (queries[:, :1] @ patches.transpose(1, 2))[:, 0]  # (heads, N)
    return head_mean(per_head, heads, HEADS_KEY)


def prefiltered(a_cls: torch.Tensor, share: float) -> torch.Tensor:
    """``a_CLS`` times the 0/1 mask of its entries holding ``share`` of its positive mass (the
    reference's pre-filter; 0 = off). The entries zeroed tie at 0 in the top-k that follows."""
    if share <= 0:
        return a_cls
    return a_cls * mass_share_mask(a_cls.clamp_min(0), share)


def mine_object(
    a_cls: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int], params: MinerParams
) -> torch.Tensor:
    """One image's mined object (h, w) bool from ``a_CLS`` (N,) and the patches' keys with the
    heads concatenated (N, C), N = h * w in raster order."""
    scores = prefiltered(a_cls, params.mass_prefilter)
    count = max(1, math.floor(params.top_k * len(scores)))
    candidates = scores.topk(count).indices  # sorted, so the first is the source
    source = keys[candidates[0]]
    linked = candidates[keys[candidates] @ source > 0]  # P'
    foreground = (keys @ keys[linked].sum(dim=0) > 0).reshape(grid)
    if not params.seed_component:
        return foreground
    components, _ = ndimage.label(foreground.cpu().numpy())  # 4-connectivity
    label = int(components.reshape(-1)[int(candidates[0])])
    if label == 0:  # all-zero keys: the source has no affinity, not even to itself
        return torch.zeros_like(foreground)
    return torch.from_numpy(components == label).to(foreground.device)


def mine_from_tokens(
    queries: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int], params: MinerParams
) -> torch.Tensor:
    """One image's mined object (h, w) bool from its per-head queries and keys (heads, T, d)."""
    num_patches = grid[0] * grid[1]
    a_cls = class_affinity(queries, keys, num_patches, params.heads)
    patch_keys = keys[:, keys.shape[1] - num_patches :].transpose(0, 1).flatten(1)  # (N, C)
    return mine_object(a_cls, patch_keys, grid, params)


@FOREGROUND_REGISTRY.register()
class MaskDistillMiner(TokenProvider):
    """MaskDistill's one object per image as a foreground map (see the module docstring)."""

    needed_tokens = frozenset({"queries", "keys"})

    @classmethod
    def from_config(cls, cfg, extractor: FeatureExtractor | None = None) -> dict[str, Any]:
        """``extractor``: a module built by the caller (default: a new one for
        ``PROPOSALS.SALIENCY.EXTRACTOR``; the MaskDistill generator passes its own, built from
        ``PROPOSALS.EXTRACTOR``)."""
        m = cfg.PROPOSALS.FOREGROUND.MINER
        params = MinerParams(
            heads=tuple(int(h) for h in m.HEADS),
            top_k=float(m.TOP_K),
            mass_prefilter=float(m.MASS_PREFILTER),
            seed_component=bool(m.SEED_COMPONENT),
        )
        return {"extractor": build_saliency_extractor(cfg, extractor), "params": params}

    @torch.no_grad()
    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        features, tokens = self.features_and_tokens(images, features, tokens)
        masks = []
        for image, feature, per_image in zip(images, features, tokens, strict=True):
            grid = (int(feature.shape[1]), int(feature.shape[2]))
            mask = mine_from_tokens(per_image["queries"], per_image["keys"], grid, self.params)
            masks.append(mask.to(image.device))
        return masks

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "provider": type(self).__name__,
            "extractor": self.extractor.describe(),
            "heads": list(p.heads),
            "top_k": p.top_k,
            "mass_prefilter": p.mass_prefilter,
            "seed_component": p.seed_component,
        }
