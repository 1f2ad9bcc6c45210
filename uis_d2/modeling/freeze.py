"""Freezing parts of a detectron2 backbone (the paper trains SOLOv2 on a frozen backbone).

A frozen part gets ``requires_grad = False`` (detectron2's optimizer then skips it) and its
BatchNorm layers become FrozenBatchNorm2d, whose statistics cannot move in training mode, so the
part is bit-identical after any number of optimizer steps. GroupNorm has no running statistics
and needs nothing more.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from torch import nn


def freeze_module(module: nn.Module) -> None:
    """Stop gradients and statistic updates of ``module`` and all its children, in place."""
    for param in module.parameters():
        param.requires_grad_(False)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise TypeError("freeze_module converts BatchNorm children in place; pass their parent")
    FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def apply_freeze_config(backbone: nn.Module, cfg: CfgNode) -> None:
    """MODEL.FREEZE.BACKBONE freezes the bottom-up network; MODEL.FREEZE.FPN the FPN convs.

    An FPN backbone keeps its bottom-up network in ``bottom_up``; without one, FREEZE.BACKBONE
    freezes the whole backbone and FREEZE.FPN is an error (there is no FPN to freeze).
    """
    bottom_up = getattr(backbone, "bottom_up", None)
    if bottom_up is None:
        if cfg.MODEL.FREEZE.FPN:
            raise ValueError(
                f"MODEL.FREEZE.FPN = True but the backbone {cfg.MODEL.BACKBONE.NAME!r} has no FPN"
            )
        if cfg.MODEL.FREEZE.BACKBONE:
            freeze_module(backbone)
        return
    if cfg.MODEL.FREEZE.BACKBONE:
        freeze_module(bottom_up)
    if cfg.MODEL.FREEZE.FPN:
        for name, child in backbone.named_children():
            if name != "bottom_up":
                freeze_module(child)
