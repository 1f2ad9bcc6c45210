"""SOLOv2's two heads: the per-grid-cell instance head and the shared mask-feature head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) normalised x and y in [-1, 1]: lets convolutions know where a cell is."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).expand(b, 2, h, w)


# MODEL.SOLOV2.NORM of the heads: GroupNorm(32) (ref) or none.
NORMS = ("GN", "")


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (no bias when normalised) + optional GroupNorm(32) + ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not norm),
    ]
    if norm == "GN":
        layers.append(nn.GroupNorm(32, out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_normal(module: nn.Module, std: float = 0.01) -> None:
    """SOLOv2's initialisation: every conv weight ~ N(0, std), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class InstanceHead(nn.Module):
    """Per level, resizes the features to an S x S grid and predicts for every cell a class
    score, a dynamic 1x1 mask kernel and (optionally) a semantic embedding.

    The towers are shared across levels. Coordinates go to the kernel branch only: a kernel must
    know where its instance is, a category score must not depend on it.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_convs: int,
        num_classes: int,
        num_kernels: int,
        embedding_dim: int,
        prior_prob: float,
        norm: str,
        use_coord_conv: bool = True,
    ):
        super().__init__()
        self.use_coord_conv = use_coord_conv
        kernel_in = in_channels + (2 if use_coord_conv else 0)
        self.cate_tower = nn.Sequential(
            *(
                conv_norm_relu(in_channels if i == 0 else channels, channels, norm)
                for i in range(num_convs)
            )
        )
        self.kernel_tower = nn.Sequential(
            *(
                conv_norm_relu(kernel_in if i == 0 else channels, channels, norm)
                for i in range(num_convs)
            )
        )
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.kernel_pred = nn.Conv2d(channels, num_kernels, 3, padding=1)
        # FreeSOLO: one conv beside the last category layer predicts the object's embedding.
        self.embedding_pred = (
            nn.Conv2d(channels, embedding_dim, 3, padding=1) if embedding_dim > 0 else None
        )
        init_normal(self)
        # Focal-loss prior: start every cell at background probability 1 - prior_prob.
        nn.init.constant_(self.cate_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(
        self, features: list[torch.Tensor], grids: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
        """Per level: category logits (B, C, S, S), kernels (B, E, S, S) and embeddings
        (B, D, S, S), the last None without an embedding head."""
        cate_logits, kernels, embeddings = [], [], []
        for feature, grid in zip(features, grids, strict=True):
            if self.use_coord_conv:
                feature = torch.cat([feature, coordinate_channels(feature)], dim=1)
            feature = F.interpolate(
                feature, size=(grid, grid), mode="bilinear", align_corners=False
            )
            kernels.append(self.kernel_pred(self.kernel_tower(feature)))
            cate_in = feature[:, :-2] if self.use_coord_conv else feature
            cate_features = self.cate_tower(cate_in)
            cate_logits.append(self.cate_pred(cate_features))
            if self.embedding_pred is not None:
                embeddings.append(self.embedding_pred(cate_features))
        return cate_logits, kernels, (embeddings if self.embedding_pred is not None else None)


class MaskFeatureHead(nn.Module):
    """Merges p2..p5 into one stride-4 map that every dynamic kernel is convolved with.

    Level i is brought to stride 4 by i rounds of (conv, norm, ReLU, x2 bilinear); level 0 gets
    one conv. Coordinates are added at the coarsest level so the mask features can encode
    position, which is what lets a 1x1 kernel select one instance.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_levels: int,
        num_masks: int,
        norm: str,
        use_coord_conv: bool = True,
    ):
        super().__init__()
        self.use_coord_conv = use_coord_conv
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            is_coarsest = level == num_levels - 1
            first_in = in_channels + (2 if is_coarsest and use_coord_conv else 0)
            layers: list[nn.Module] = []
            for step in range(max(level, 1)):
                layers.append(conv_norm_relu(first_in if step == 0 else channels, channels, norm))
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*layers))
        out: list[nn.Module] = [nn.Conv2d(channels, num_masks, 1, bias=not norm)]
        if norm == "GN":
            out.append(nn.GroupNorm(32, num_masks))
        out.append(nn.ReLU(inplace=True))
        self.output = nn.Sequential(*out)
        init_normal(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, NUM_MASKS, H/4, W/4) mask features from [p2, ..., p5]."""
        merged = None
        for level, (feature, branch) in enumerate(zip(features, self.levels, strict=True)):
            if level == len(features) - 1 and self.use_coord_conv:
                feature = torch.cat([feature, coordinate_channels(feature)], dim=1)
            out = branch(feature)
            if merged is not None and out.shape[-2:] != merged.shape[-2:]:
                out = F.interpolate(
                    out, size=merged.shape[-2:], mode="bilinear", align_corners=False
                )
            merged = out if merged is None else merged + out
        return self.output(merged)
