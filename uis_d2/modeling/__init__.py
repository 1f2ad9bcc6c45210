"""Models; importing registers the "SOLOv2" meta-architecture with detectron2."""

from uis_d2.modeling.freeze import freeze_fpn, freeze_module
from uis_d2.modeling.solov2 import SOLOv2, matrix_nms

__all__ = ["SOLOv2", "freeze_fpn", "freeze_module", "matrix_nms"]
