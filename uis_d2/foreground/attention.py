"""Foreground from the class token's attention mass (DINO's visualisation, Leopart's focus).

Per image (SEED_SYSTEMS.md 3.3): the class token's softmax attention over the patches of the
last block (``cls_attention`` from the extractor), averaged over the chosen heads, optionally
blurred with a Gaussian (Leopart: 7 x 7, sigma 0.6, in patches), then the patches holding the
top ``mass`` share of it are kept (sorted ascending, cumulative share > 1 - mass: DINO's rule),
and 8-connected components of at most ``max_dropped_component`` patches are dropped (Leopart:
2). The map is at the extractor's patch grid. The weight-free ``PatchStats`` extractor gives a
surrogate attention (features/patch_stats.py), so this also runs on the synthetic data.

The helpers shared with the MaskDistill miner (head choice, mass share, reading tokens) live
here as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from scipy import ndimage

from uis_d2.features.base import FeatureExtractor, extract_features_and_tokens
from uis_d2.foreground.base import (
    FOREGROUND_REGISTRY,
    ForegroundProvider,
    build_saliency_extractor,
)


class TokenProvider(ForegroundProvider):
    """A provider reading tokens of its extractor's forward (``needed_tokens``). It asks the
    extractor for them when built, so a generator sharing that extractor gets them from its own
    forward and hands them over instead of running a second one."""

    needed_tokens: frozenset[str] = frozenset()

    @configurable
    def __init__(self, *, extractor: FeatureExtractor, params: Any) -> None:
        extractor.request_tokens(self.needed_tokens)
        self.extractor = extractor
        self.params = params

    def features_and_tokens(
        self,
        images: list[torch.Tensor],
        features: list[torch.Tensor] | None,
        tokens: list[dict[str, torch.Tensor]] | None,
    ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """The features (their grid sizes) and tokens handed over by a caller that already ran
        the extractor (either None: run it now), checked to hold ``needed_tokens``, so a caller
        passing another extractor's output fails clearly."""
        if features is None or tokens is None:
            features, tokens = extract_features_and_tokens(self.extractor, images)
        for per_image in tokens:
            missing = self.needed_tokens - per_image.keys()
            if missing:
                raise ValueError(
                    f"tokens handed to the provider lack {sorted(missing)}: pass the output of "
                    f"its own extractor {self.extractor.name}, after request_tokens"
                )
        return features, tokens


def head_mean(per_head: torch.Tensor, heads: tuple[int, ...], key: str) -> torch.Tensor:
    """Mean of (heads, ...) over the chosen head indices (all when ``heads`` is empty);
    ``key`` names the config key in the error for an index the model does not have."""
    if not heads:
        return per_head.mean(dim=0)
    count = per_head.shape[0]
    if max(heads) >= count:
        raise ValueError(f"{key} = {list(heads)}: the model has {count} heads (0..{count - 1})")
    return per_head[list(heads)].mean(dim=0)


def mass_share_mask(values: torch.Tensor, share: float) -> torch.Tensor:
    """Bool mask of the largest entries of non-negative ``values`` (any shape) that hold
    ``share`` of their sum: DINO's rule, sort ascending, keep the entries whose cumulative share
    exceeds 1 - share (so the entry crossing the share is kept). Computed in float64, with the
    last cumulative value as the total, so that shares of hand-built values are exact. All
    zeros keep nothing."""
    flat = values.detach().flatten().double()
    ordered, order = flat.sort(stable=True)
    cumulative = ordered.cumsum(0)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if len(flat) == 0 or cumulative[-1] <= 0:
        return keep.reshape(values.shape)
    keep[order] = cumulative / cumulative[-1] > 1.0 - share
    return keep.reshape(values.shape)


def gaussian_blur(grid: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(h, w) blurred by a normalised ``size`` x ``size`` Gaussian of ``sigma`` cells (separable).

    Borders are reflected (as torchvision's ``gaussian_blur``, which Leopart calls); grids not
    wider than half the kernel, which reflection cannot pad, replicate their border instead.
    """
    offsets = torch.arange(size, dtype=grid.dtype, device=grid.device) - (size - 1) / 2
    kernel = torch.exp(-offsets.square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = size // 2
    mode = "reflect" if min(grid.shape) > pad else "replicate"
    x = F.pad(grid[None, None], (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, size))
    return F.conv2d(x, kernel.view(1, 1, size, 1))[0, 0]


def drop_small_components(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` (h, w) without its 8-connected components of at most ``max_size`` cells."""
    if max_size <= 0:
        return mask
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_size
    small[0] = False  # the background label
    return mask & ~small[labels]


@dataclass(frozen=True)
class AttentionMassParams:
    """``PROPOSALS.FOREGROUND.ATTENTION_MASS``, one field per key (see the config's comments)."""

    heads: tuple[int, ...]
    mass: float
    blur_size: int
    blur_sigma: float
    max_dropped_component: int


def attention_mass_foreground(attention: torch.Tensor, params: AttentionMassParams) -> torch.Tensor:
    """One image's class-token attention (heads, h, w) -> its foreground (h, w) bool."""
    key = "PROPOSALS.FOREGROUND.ATTENTION_MASS.HEADS"
    mean = head_mean(attention.float(), params.heads, key)
    if params.blur_size > 0:
        mean = gaussian_blur(mean, params.blur_size, params.blur_sigma)
    keep = mass_share_mask(mean, params.mass).cpu().numpy()
    keep = drop_small_components(keep, params.max_dropped_component)
    return torch.from_numpy(keep).to(attention.device)


@FOREGROUND_REGISTRY.register()
class AttentionMass(TokenProvider):
    """The patches holding most of the class token's attention (see the module docstring)."""

    needed_tokens = frozenset({"cls_attention"})

    @classmethod
    def from_config(cls, cfg, extractor: FeatureExtractor | None = None) -> dict[str, Any]:
        """``extractor``: a module for ``PROPOSALS.SALIENCY.EXTRACTOR`` built by the caller."""
        a = cfg.PROPOSALS.FOREGROUND.ATTENTION_MASS
        params = AttentionMassParams(
            heads=tuple(int(h) for h in a.HEADS),
            mass=float(a.MASS),
            blur_size=int(a.BLUR_SIZE),
            blur_sigma=float(a.BLUR_SIGMA),
            max_dropped_component=int(a.MAX_DROPPED_COMPONENT),
        )
        return {"extractor": build_saliency_extractor(cfg, extractor), "params": params}

    @torch.no_grad()
    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        _, tokens = self.features_and_tokens(images, features, tokens)
        return [
            attention_mass_foreground(t["cls_attention"], self.params).to(image.device)
            for image, t in zip(images, tokens, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "provider": type(self).__name__,
            "extractor": self.extractor.describe(),
            "heads": list(p.heads),
            "mass": p.mass,
            "blur_size": p.blur_size,
            "blur_sigma": p.blur_sigma,
            "max_dropped_component": p.max_dropped_component,
        }
