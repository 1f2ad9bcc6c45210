"""DropLoss (CutLER, Wang et al. 2023): R-CNN heads that do not teach background where the
pseudo-masks are silent.

Pseudo-masks miss many objects. A proposal on a missed object matches no pseudo-box, so
detectron2's heads would train it as background and learn to suppress exactly the objects the
pseudo-masks missed. With DropLoss, a proposal whose regressed (predicted) box has IoU <=
``MODEL.ROI_HEADS.DROPLOSS.IOU_THRESH`` with every pseudo-box of its image gets weight 0 in the
classification and box-regression losses of every ROI-head stage.

Normaliser: detectron2 divides both losses by the number of sampled proposals (the box loss
sums over the foreground ones only); dropped proposals keep counting in that number, as in
CutLER's weighted mean, so DropLoss only removes terms and never rescales the kept ones. That is
computed as detectron2's own loss on the kept proposals times (kept / all). CutLER's code
weights only the classification loss; the box loss is weighted too here, as its paper and the
spec say (a foreground proposal overlaps its pseudo-box by the matcher's IoU before regression,
so this rarely differs).

The heads need every pseudo-box of an image where the predictor computes its losses, which
detectron2 passes only the proposals; they give each proposal its image's pseudo-boxes as an
expanded view (``IMAGE_GT_BOXES``, no copy).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    StandardROIHeads,
)
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

# Proposal field: (R, G, 4), the G pseudo-boxes (x1y1x2y2) of the proposal's image.
IMAGE_GT_BOXES = "image_gt_boxes"


def drop_loss_keep(
    regressed: torch.Tensor, pseudo_boxes: torch.Tensor, iou_thresh: float
) -> torch.Tensor:
    """(R,) bool: which of R regressed boxes (R, 4) overlap some of the image's pseudo-boxes
    (G, 4) by IoU > ``iou_thresh``; none when the image has no pseudo-box."""
    return (pairwise_iou(Boxes(regressed), Boxes(pseudo_boxes)) > iou_thresh).any(dim=1)


def with_image_gt_boxes(proposals: list[Instances], targets: list[Instances]) -> list[Instances]:
    """Give every proposal its image's pseudo-boxes (``IMAGE_GT_BOXES``); returns ``proposals``."""
    for proposals_per_image, targets_per_image in zip(proposals, targets, strict=True):
        boxes = targets_per_image.gt_boxes.tensor
        proposals_per_image.set(
            IMAGE_GT_BOXES, boxes.unsqueeze(0).expand(len(proposals_per_image), *boxes.shape)
        )
    return proposals


class DropLossOutputLayers(FastRCNNOutputLayers):
    """detectron2's box predictor whose losses skip the proposals DropLoss drops."""

    @configurable
    def __init__(self, *args, drop_iou_thresh: float | None, **kwargs):
        """
        Args:
            drop_iou_thresh: drop a proposal whose regressed box has IoU <= this with every
                pseudo-box of its image; None = detectron2's losses unchanged.
        """
        super().__init__(*args, **kwargs)
        self.drop_iou_thresh = drop_iou_thresh

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        drop = cfg.MODEL.ROI_HEADS.DROPLOSS
        ret["drop_iou_thresh"] = drop.IOU_THRESH if drop.ENABLED else None
        return ret

    def losses(self, predictions, proposals: list[Instances]) -> dict[str, torch.Tensor]:
        """detectron2's losses over the kept proposals, normalised by all of them (see the
        module docstring); logs the dropped share as ``fast_rcnn/droploss_dropped``."""
        if self.drop_iou_thresh is None or sum(len(p) for p in proposals) == 0:
            return super().losses(predictions, proposals)
        keep = self._keep(predictions, proposals)
        scores, deltas = predictions
        kept_proposals = [
            p[k] for p, k in zip(proposals, keep.split([len(p) for p in proposals]), strict=True)
        ]
        losses = super().losses((scores[keep], deltas[keep]), kept_proposals)
        kept_share = keep.float().mean()
        get_event_storage().put_scalar("fast_rcnn/droploss_dropped", 1.0 - kept_share.item())
        return {name: loss * kept_share for name, loss in losses.items()}

    @torch.no_grad()
    def _keep(self, predictions, proposals: list[Instances]) -> torch.Tensor:
        """(sum R,) bool over the proposals of all images, in their order."""
        regressed = self.predict_boxes_for_gt_classes(predictions, proposals)
        return torch.cat(
            [
                drop_loss_keep(boxes, p.get(IMAGE_GT_BOXES)[0], self.drop_iou_thresh)
                if len(p)
                else boxes.new_zeros(0, dtype=torch.bool)
                for boxes, p in zip(regressed, proposals, strict=True)
            ]
        )


def drop_loss_predictor(
    cfg, box_head: nn.Module, predictor: FastRCNNOutputLayers
) -> DropLossOutputLayers:
    """A ``DropLossOutputLayers`` in place of the ``predictor`` detectron2's ``_init_box_head``
    builds (it names the class itself), with its box coder (each cascade stage has its own)."""
    return DropLossOutputLayers(
        cfg, box_head.output_shape, box2box_transform=predictor.box2box_transform
    )


class _ImageGtBoxesOnProposals:
    """What both heads add: every sampled proposal carries its image's pseudo-boxes."""

    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances]
    ) -> list[Instances]:
        return with_image_gt_boxes(super().label_and_sample_proposals(proposals, targets), targets)


@ROI_HEADS_REGISTRY.register()
class DropLossROIHeads(_ImageGtBoxesOnProposals, StandardROIHeads):
    """Mask R-CNN's heads (``StandardROIHeads``) with a DropLoss box predictor."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = drop_loss_predictor(cfg, ret["box_head"], ret["box_predictor"])
        return ret


@ROI_HEADS_REGISTRY.register()
class DropLossCascadeROIHeads(_ImageGtBoxesOnProposals, CascadeROIHeads):
    """Cascade Mask R-CNN's heads with a DropLoss predictor in every stage; stages after the
    first re-match the previous stage's boxes, which then get the pseudo-boxes too."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            drop_loss_predictor(cfg, head, predictor)
            for head, predictor in zip(ret["box_heads"], ret["box_predictors"], strict=True)
        ]
        return ret

    def _match_and_label_boxes(
        self, proposals: list[Instances], stage: int, targets: list[Instances]
    ) -> list[Instances]:
        return with_image_gt_boxes(
            super()._match_and_label_boxes(proposals, stage, targets), targets
        )
