"""Models; importing registers the "SOLOv2" meta-architecture and the DropLoss R-CNN heads
("DropLossROIHeads", "DropLossCascadeROIHeads") with detectron2."""

from uis_d2.modeling.freeze import freeze_fpn, freeze_module
from uis_d2.modeling.roi_heads import DropLossCascadeROIHeads, DropLossROIHeads
from uis_d2.modeling.solov2 import SOLOv2, matrix_nms

__all__ = [
    "DropLossCascadeROIHeads",
    "DropLossROIHeads",
    "SOLOv2",
    "freeze_fpn",
    "freeze_module",
    "matrix_nms",
]
