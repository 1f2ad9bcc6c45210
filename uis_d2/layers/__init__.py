"""Operations shared by the offline pseudo-mask stage and the SOLOv2 model (detectron2's name
for such a package): Matrix NMS and the sRGB -> CIELab conversion. Nothing here reads a config
or imports the rest of uis_d2."""

from uis_d2.layers.color import rgb_to_lab
from uis_d2.layers.matrix_nms import NMS_KERNELS, matrix_nms

__all__ = ["NMS_KERNELS", "matrix_nms", "rgb_to_lab"]
