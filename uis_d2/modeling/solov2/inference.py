"""SOLOv2 inference: grid peaks -> dynamic masks -> maskness-rescored Matrix NMS -> full-size
binary masks with boxes from their extents."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances

from uis_d2.layers.matrix_nms import matrix_nms
from uis_d2.utils.masks import masks_to_boxes_xyxy


@dataclass
class InferenceParams:
    """MODEL.SOLOV2 inference keys, read once."""

    score_thr: float
    mask_thr: float
    nms_pre: int
    update_thr: float
    max_per_img: int
    nms_kernel: str
    nms_sigma: float

    @classmethod
    def from_config(cls, cfg: CfgNode) -> InferenceParams:
        s = cfg.MODEL.SOLOV2
        return cls(
            score_thr=s.SCORE_THR,
            mask_thr=s.MASK_THR,
            nms_pre=s.NMS_PRE,
            update_thr=s.UPDATE_THR,
            max_per_img=s.MAX_PER_IMG,
            nms_kernel=s.NMS_KERNEL,
            nms_sigma=s.NMS_SIGMA,
        )


def grid_peaks(scores: torch.Tensor) -> torch.Tensor:
    """Zero every (B, C, S, S) score that is not the maximum of its 2x2 window (a cheap NMS on
    the grid: neighbouring cells of one object fire together)."""
    pooled = F.max_pool2d(scores, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
    return scores * (pooled == scores)


def empty_instances(
    image_size: tuple[int, int], device: torch.device, embeddings: torch.Tensor | None = None
) -> Instances:
    """No detection, with the fields (and embedding width) of a non-empty result."""
    result = Instances(image_size)
    result.pred_masks = torch.zeros((0, *image_size), dtype=torch.bool, device=device)
    result.pred_boxes = Boxes(torch.zeros((0, 4), device=device))
    result.scores = torch.zeros(0, device=device)
    result.pred_classes = torch.zeros(0, dtype=torch.long, device=device)
    if embeddings is not None:
        result.pred_embeddings = embeddings.new_zeros((0, embeddings.shape[1]))
    return result


def decode_image(
    scores: torch.Tensor,
    kernels: torch.Tensor,
    strides: torch.Tensor,
    mask_features: torch.Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    params: InferenceParams,
    mask_stride: int = 4,
    embeddings: torch.Tensor | None = None,
) -> Instances:
    """Instances of one image.

    scores: (cells, C) peak-selected probabilities over all levels; kernels: (cells, E);
    strides: (cells,) stride of each cell's level; mask_features: (E, Hm, Wm) of the padded
    image; image_size: the network input before padding; output_size: the original image;
    embeddings: (cells, D) of the semantic-embedding branch, returned per instance as
    ``pred_embeddings`` (a self-training round writes them as the next round's ``emb``).
    """
    device = scores.device
    cells, classes = torch.nonzero(scores > params.score_thr, as_tuple=True)
    if cells.numel() == 0:
        return empty_instances(output_size, device, embeddings)
    cate_scores = scores[cells, classes]
    height, width = mask_features.shape[-2:]
    soft = torch.sigmoid(kernels[cells] @ mask_features.flatten(1)).view(-1, height, width)
    binary = soft > params.mask_thr
    areas = binary.sum(dim=(1, 2)).float()
    # A mask not larger than its level's stride (in mask-feature pixels) is noise.
    keep = areas > strides[cells].float()
    if not bool(keep.any()):
        return empty_instances(output_size, device, embeddings)
    soft, binary, areas = soft[keep], binary[keep], areas[keep]
    cells, classes, cate_scores = cells[keep], classes[keep], cate_scores[keep]
    # Maskness: mean probability inside the binary mask, so hesitant masks score lower.
    maskness = (soft * binary).sum(dim=(1, 2)) / areas
    final_scores = cate_scores * maskness

    top = torch.argsort(final_scores, descending=True)[: params.nms_pre]
    soft, binary, cells = soft[top], binary[top], cells[top]
    classes, final_scores = classes[top], final_scores[top]
    final_scores = matrix_nms(
        binary, final_scores, classes, kernel=params.nms_kernel, sigma=params.nms_sigma
    )
    keep = final_scores >= params.update_thr
    if not bool(keep.any()):
        return empty_instances(output_size, device, embeddings)
    soft, cells, classes, final_scores = soft[keep], cells[keep], classes[keep], final_scores[keep]
    top = torch.argsort(final_scores, descending=True)[: params.max_per_img]
    soft, cells, classes, final_scores = soft[top], cells[top], classes[top], final_scores[top]

    masks = upsample_masks(soft, mask_stride, image_size, output_size) > params.mask_thr
    # A mask that lay only in the padding is empty once cropped: a sure false positive (ref:
    # sum_masks > 0).
    present = masks.flatten(1).any(dim=1)
    masks, cells, classes, final_scores = (
        masks[present],
        cells[present],
        classes[present],
        final_scores[present],
    )
    result = Instances(output_size)
    result.pred_masks = masks
    result.pred_boxes = Boxes(masks_to_boxes_xyxy(masks))
    result.scores = final_scores
    result.pred_classes = classes
    if embeddings is not None:
        result.pred_embeddings = embeddings[cells]
    return result


def upsample_masks(
    soft: torch.Tensor,
    mask_stride: int,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """Soft (K, Hm, Wm) masks -> padded input size -> crop the padding -> original size."""
    padded = (soft.shape[-2] * mask_stride, soft.shape[-1] * mask_stride)
    up = F.interpolate(soft[None], size=padded, mode="bilinear", align_corners=False)
    up = up[..., : image_size[0], : image_size[1]]
    return F.interpolate(up, size=output_size, mode="bilinear", align_corners=False)[0]
