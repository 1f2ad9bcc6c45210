"""Weight-free baseline features: local colour and texture statistics per patch.

Not a learned representation: it exists so the whole pipeline (proposals, training, evaluation)
runs and can be tested without any checkpoint, and as a floor that learned features must beat.
Per patch of ``PATCH_SIZE`` pixels it takes the mean and standard deviation of CIELab, the mean
gradient magnitude and the mean structure tensor of the lightness (texture orientation energy),
at the patch itself and averaged over its 3x3 patch neighbourhood (a coarser scale). Each
channel is then standardised over the image, so cosine affinities measure how a patch differs
from the image's average rather than absolute colour.

Tokens (``request_tokens``) are a SURROGATE: there is no attention here, yet the foreground
providers that read a ViT's attention (the MaskDistill miner, the attention mass) should run on
the embedded synthetic data. One head; per patch, its colour distinctness ``d`` (the distance
of its mean-colour statistics from the image's median patch, standardised over the image) and
its key ``k = [unit-normalised own-patch statistics, d]``:

- ``keys``/``queries``: the patches' k (queries = keys), after a class token whose query is the
  unit vector of the ``d`` channel, so that ``q_CLS . k = d`` (the miner's ``a_CLS``), and whose
  key is the attention-weighted mean of the patch keys. ``k_i . k_j`` is the cosine of the two
  patches' statistics plus ``d_i d_j`` (negative between a distinct and a typical patch), which
  keeps the miner's diffusion off the background;
- ``cls_attention``: the softmax of ``d`` over the patches (the class column holds no mass);
- ``cls_token``: the attention-weighted mean of the features; ``patch_tokens``: the features.

Why these: the 3 x 3 context statistics blur object boundaries by a patch, and the features'
distinctness channel (all statistics, texture included) peaks on object edges; with them the
miner's mask hits a ground-truth object (IoU >= 0.5) on 13% of 60 synthetic scenes, with the
choices above on 46% of 400 (8-pixel patches) and 56% (4-pixel patches,
configs/proposals/synthetic_maskdistill.yaml). Most misses merge touching instances of one
category, as the real miner does (tests/test_maskdistill_miner.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, TOKEN_NAMES, FeatureExtractor
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

    provided_tokens = frozenset(TOKEN_NAMES)

    @configurable
    def __init__(self, *, patch_size: int, **kwargs) -> None:
        """``patch_size``: pixels per patch side (the stride); ``kwargs``: FeatureExtractor's."""
        super().__init__(**kwargs)
        self.stride = int(patch_size)

    @classmethod
    def from_config(cls, cfg, short_side: int = 480, max_side: int = 800) -> dict[str, Any]:
        return {**super().from_config(cfg, short_side, max_side), "patch_size": cfg.PATCH_SIZE}

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return _features(self._local_statistics(images))

    def extract_with_tokens(
        self, images: torch.Tensor, names: frozenset[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local = self._local_statistics(images)
        features = _features(local)
        tokens = surrogate_tokens(features, local.shape[1])
        return features, {name: tokens[name] for name in names}

    def _local_statistics(self, images: torch.Tensor) -> torch.Tensor:
        """Per patch: mean and std of CIELab, gradient magnitude and structure tensor."""
        rgb = (images * self._std + self._mean).clamp(0, 1)
        lab = rgb_to_lab(rgb) / rgb.new_tensor(_LAB_SCALE).view(1, 3, 1, 1)
        pixel = torch.cat([lab, lab.square(), _gradients(lab[:, :1])], dim=1)
        pooled = F.avg_pool2d(pixel, self.stride)
        mean, mean_sq, texture = pooled[:, :3], pooled[:, 3:6], pooled[:, 6:]
        std = (mean_sq - mean.square()).clamp_min(0).sqrt()
        return torch.cat([mean, std, texture.clamp_min(0).sqrt() * texture.sign()], dim=1)


def _features(local: torch.Tensor) -> torch.Tensor:
    """Local and 3 x 3-context statistics, standardised, and the distinctness channel."""
    context = F.avg_pool2d(local, 3, stride=1, padding=1, count_include_pad=False)
    stats = torch.cat([local, context], dim=1)
    standard = _standardise(stats)
    typical = standard.flatten(2).median(dim=2).values[..., None, None]
    distinct = _standardise((standard - typical).norm(dim=1, keepdim=True))
    return torch.cat([standard, DISTINCTNESS_WEIGHT * distinct], dim=1)


def surrogate_tokens(features: torch.Tensor, local_channels: int) -> dict[str, torch.Tensor]:
    """Every ``TOKEN_NAMES`` entry's surrogate (module docstring) from the features (B, C, h, w),
    whose first ``local_channels`` are the standardised own-patch statistics (mean colour
    first)."""
    batch, _, height, width = features.shape
    local = features[:, :local_channels]
    colour = local[:, :3]
    typical = colour.flatten(2).median(dim=2).values[..., None, None]
    distinct = _standardise((colour - typical).norm(dim=1, keepdim=True))
    patch_keys = torch.cat([F.normalize(local, dim=1), distinct], dim=1).flatten(2).transpose(1, 2)
    attention = distinct.flatten(1).softmax(dim=1)  # (B, N)
    class_key = (attention[:, :, None] * patch_keys).sum(dim=1, keepdim=True)
    class_query = torch.zeros_like(class_key)
    class_query[..., -1] = 1.0
    return {
        "queries": torch.cat([class_query, patch_keys], dim=1)[:, None],
        "keys": torch.cat([class_key, patch_keys], dim=1)[:, None],
        "cls_attention": attention.reshape(batch, 1, height, width),
        "cls_token": (features.flatten(2) * attention[:, None]).sum(dim=2),
        "patch_tokens": features,
    }


def _standardise(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    return centred / centred.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
