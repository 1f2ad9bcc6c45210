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

import torch
import torch.nn.functional as F

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, FeatureExtractor

# sRGB (D65) -> XYZ, and the D65 white point.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE = (0.950456, 1.0, 1.088754)
DISTINCTNESS_WEIGHT = 3.0  # pulls all distinct (salient) patches together, open


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> CIELab scaled to roughly [-1, 1] per channel."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ, device=rgb.device, dtype=rgb.dtype)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    xyz = xyz / torch.tensor(_WHITE, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness / 100, a / 128, b / 128], dim=1)


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

    def __init__(self, node, short_side: int = 480, max_side: int = 800) -> None:
        super().__init__(node, short_side, max_side)
        self.stride = int(node.PATCH_SIZE)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images * self._std + self._mean).clamp(0, 1)
        lab = rgb_to_lab(rgb)
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
