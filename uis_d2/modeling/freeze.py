"""Freezing the FPN of a detectron2 backbone (MODEL.FREEZE.FPN).

The bottom-up ResNet is frozen by detectron2 itself (MODEL.BACKBONE.FREEZE_AT; 5 freezes the
whole network, the paper's frozen backbone). A frozen part gets ``requires_grad = False``
(detectron2's optimizer then skips it) and its BatchNorm layers become FrozenBatchNorm2d, whose
statistics cannot move in training mode, so the part is bit-identical after any number of
optimizer steps. GroupNorm has no running statistics and needs nothing more.
"""

from __future__ import annotations

from detectron2.layers import FrozenBatchNorm2d
from torch import nn


def freeze_module(module: nn.Module) -> None:
    """Stop gradients and statistic updates of ``module`` and all its children, in place."""
    for param in module.parameters():
        param.requires_grad_(False)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise TypeError("freeze_module converts BatchNorm children in place; pass their parent")
    FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def freeze_fpn(backbone: nn.Module, which: str) -> None:
    """Freeze every part of an FPN backbone but its bottom-up network; ``which`` names the
    backbone in the error raised when it has no FPN."""
    if getattr(backbone, "bottom_up", None) is None:
        raise ValueError(f"MODEL.FREEZE.FPN = True but the backbone ({which}) has no FPN")
    for name, child in backbone.named_children():
        if name != "bottom_up":
            freeze_module(child)
