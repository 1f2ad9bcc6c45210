"""Weight-free baseline features: local colour and texture statistics per patch.

Not a learned representation: it exists so the whole pipeline (proposals, training, evaluation)
runs and can be tested without any checkpoint, and as a floor that learned features must beat.
Per patch of ``PATCH_SIZE`` pixels it takes the mean and standard deviation of CIELab, the mean
gradient magnitude and the mean structure tensor of the lightness (texture orientation energy),
at the patch itself and averaged over its 3x3 patch neighbourhood (a coarser scale). Each
channel is then standardised over the image, so cosine affinities measure how a patch differs
from the image's average rather than absolute colour.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, FeatureExtractor
from uis_d2.layers.color import rgb_to_lab

# CIELab (L in [0, 100], a and b in about [-128, 127]) scaled to roughly [-1, 1] per channel.
_LAB_SCALE = (100.0, 128.0, 128.0)
DISTINCTNESS_WEIGHT = 3.0  # pulls all distinct (salient) patches together, open


def _gradients(lightness: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude and structure tensor (gx^2, gy^2, gx*gy) of (B, 1, H, W)."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1).to(lightness)
    grad = F.conv2d(F.pad(lightness, (1, 1, 1, 1), mode="replicate"), kernels)
    gx, gy = grad[:, :1], grad[:, 1:]
    return torch.cat([(gx.square() + gy.square()).sqrt(), gx.square(), gy.square(), gx * gy], 1)


@FEATURE_EXTRACTOR_REGISTRY.register()
class PatchStats(FeatureExtractor):
    """Baseline extractor without weights (see the module docstring)."""

    @configurable
    def __init__(self, *, patch_size: int, **kwargs) -> None:
        """``patch_size``: pixels per patch side (the stride); ``kwargs``: FeatureExtractor's."""
        super().__init__(**kwargs)
        self.stride = int(patch_size)

    @classmethod
    def from_config(cls, cfg, short_side: int = 480, max_side: int = 800) -> dict[str, Any]:
        return {**super().from_config(cfg, short_side, max_side), "patch_size": cfg.PATCH_SIZE}

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images * self._std + self._mean).clamp(0, 1)
        lab = rgb_to_lab(rgb) / rgb.new_tensor(_LAB_SCALE).view(1, 3, 1, 1)
        pixel = torch.cat([lab, lab.square(), _gradients(lab[:, :1])], dim=1)
        pooled = F.avg_pool2d(pixel, self.stride)
        mean, mean_sq, texture = pooled[:, :3], pooled[:, 3:6], pooled[:, 6:]
        std = (mean_sq - mean.square()).clamp_min(0).sqrt()
        local = torch.cat([mean, std, texture.clamp_min(0).sqrt() * texture.sign()], dim=1)
        context = F.avg_pool2d(local, 3, stride=1, padding=1, count_include_pad=False)
        stats = torch.cat([local, context], dim=1)
        standard = _standardise(stats)
        typical = standard.flatten(2).median(dim=2).values[..., None, None]
        distinct = _standardise((standard - typical).norm(dim=1, keepdim=True))
        return torch.cat([standard, DISTINCTNESS_WEIGHT * distinct], dim=1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred / centred.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
