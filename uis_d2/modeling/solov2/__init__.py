"""SOLOv2 meta-architecture, FreeSOLO losses and Matrix NMS."""

from uis_d2.layers.matrix_nms import matrix_nms
from uis_d2.modeling.solov2.meta_arch import SOLOv2

__all__ = ["SOLOv2", "matrix_nms"]
