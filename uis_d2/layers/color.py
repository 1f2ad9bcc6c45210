"""sRGB -> CIELab (D65): the pairwise loss's perceptual colour similarity (SOLOv2) and the colour
statistics of the weight-free ``PatchStats`` features (which rescale it to about [-1, 1])."""

from __future__ import annotations

import torch

# sRGB (linear) -> XYZ, D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_D65_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
# The rounded CIE constants of scikit-image's rgb2lab, which the BoxInst/FreeSOLO reference calls
# for the pairwise loss (the exact ones, (6/29)^3 and 841/108, differ below 1e-6 on dark colours).
_LINEAR_BELOW = 0.008856
_LINEAR_SLOPE = 7.787


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> Lab with L in [0, 100] and a, b roughly in [-128, 127]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = _RGB_TO_XYZ.to(rgb)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    xyz = xyz / _D65_WHITE.to(rgb)[None, :, None, None]
    # Cube root above the threshold, a linear segment below it (a finite derivative at 0).
    f = torch.where(
        xyz > _LINEAR_BELOW,
        xyz.clamp(min=_LINEAR_BELOW) ** (1.0 / 3.0),
        _LINEAR_SLOPE * xyz + 16.0 / 116.0,
    )
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)
