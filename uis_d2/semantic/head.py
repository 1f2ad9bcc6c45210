"""DeepLab-v3 head for pseudo-label maps: detectron2's ``DeepLabV3Head`` with MaskDistill's OHEM.

detectron2's "hard_pixel_mining" loss (``DeepLabCE``) keeps a hard-coded 20% of *all* pixels,
ignored ones included, so on a map that is mostly ignore it averages zeros. MaskDistill (eq. 4,
ref ``segmentation/``) keeps the ``min(share x all pixels, valid pixels)`` largest losses of the
valid pixels only; this head swaps in that rule with the share as a key
(``MODEL.SEM_SEG_HEAD.OHEM_SHARE``) and is otherwise ``DeepLabV3Head`` unchanged (ASPP on res5,
1x1 classifier, logits upsampled by the output stride before the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3Head
from torch import nn


def hard_pixel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, share: float, ignore_value: int
) -> torch.Tensor:
    """Mean of the ``k = min(floor(share x all pixels), valid pixels)`` largest per-pixel
    cross-entropies of the valid (non-ignored) pixels of the batch; at least one pixel when any
    is valid, and a zero that keeps the graph when none is (a fully ignored batch)."""
    losses = F.cross_entropy(logits, labels, ignore_index=ignore_value, reduction="none")
    valid = losses[labels != ignore_value]
    if valid.numel() == 0:
        return logits.sum() * 0.0
    k = min(max(int(share * labels.numel()), 1), valid.numel())
    return valid.topk(k, sorted=False).values.mean()


class HardPixelCrossEntropy(nn.Module):
    """``hard_pixel_cross_entropy`` as the head's ``loss`` module."""

    def __init__(self, share: float, ignore_value: int):
        super().__init__()
        if not 0.0 < share <= 1.0:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.OHEM_SHARE = {share}: must lie in (0, 1]")
        self.share = share
        self.ignore_value = ignore_value

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hard_pixel_cross_entropy(logits, labels, self.share, self.ignore_value)


@SEM_SEG_HEADS_REGISTRY.register()
class PseudoLabelDeepLabV3Head(DeepLabV3Head):
    """``DeepLabV3Head`` whose "hard_pixel_mining" loss is MaskDistill's OHEM (module
    docstring); "cross_entropy" stays detectron2's mean over the valid pixels (COMUS)."""

    def __init__(self, cfg: CfgNode, input_shape: dict[str, ShapeSpec]):
        super().__init__(cfg, input_shape)
        if self.loss_type == "hard_pixel_mining":
            self.loss = HardPixelCrossEntropy(cfg.MODEL.SEM_SEG_HEAD.OHEM_SHARE, self.ignore_value)
