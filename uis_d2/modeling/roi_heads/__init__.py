"""R-CNN heads for pseudo-masks; importing registers them in detectron2's ROI_HEADS_REGISTRY."""

from uis_d2.modeling.roi_heads.drop_loss import (
    DropLossCascadeROIHeads,
    DropLossOutputLayers,
    DropLossROIHeads,
)

__all__ = ["DropLossCascadeROIHeads", "DropLossOutputLayers", "DropLossROIHeads"]
