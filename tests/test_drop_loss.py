"""DropLoss: exactly the proposals whose regressed box overlaps no pseudo-box lose their losses,
and the kept ones keep detectron2's normaliser (uis_d2.modeling.roi_heads.drop_loss)."""

import pytest
import torch
import torch.nn.functional as F

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from uis_d2.modeling.roi_heads.drop_loss import (
    IMAGE_GT_BOXES,
    DropLossOutputLayers,
    drop_loss_keep,
    with_image_gt_boxes,
)

TRANSFORM = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
PSEUDO_BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
FAR = [200.0, 200.0, 220.0, 220.0]  # overlaps no pseudo-box


def _predictor(cls, **extra):
    return cls(
        input_shape=ShapeSpec(channels=4),
        box2box_transform=TRANSFORM,
        num_classes=1,
        cls_agnostic_bbox_reg=True,
        smooth_l1_beta=0.0,  # plain L1: the expected value below is written out
        **extra,
    )


def _case():
    """Five proposals of one image and predictions chosen so that the *regressed* box decides:

    0: on pseudo-box A, not moved (foreground)        -> kept
    1: on pseudo-box B, not moved (foreground)        -> kept
    2: far from both, not moved (background)          -> dropped
    3: overlaps A, regressed far away (foreground)    -> dropped, box loss included
    4: far from both, regressed onto A (background)   -> kept
    """
    proposal_boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [52.0, 52.0, 68.0, 68.0], FAR, [2.0, 2.0, 12.0, 12.0], FAR]
    )
    deltas = torch.zeros(5, 4)
    deltas[3] = TRANSFORM.get_deltas(proposal_boxes[3:4], torch.tensor([FAR]))[0]
    deltas[4] = TRANSFORM.get_deltas(proposal_boxes[4:5], PSEUDO_BOXES[:1])[0]
    deltas[[0, 1]] = torch.tensor([[0.3, -0.2, 0.1, 0.05], [-0.1, 0.2, -0.3, 0.4]])
    proposals = Instances((240, 240))
    proposals.proposal_boxes = Boxes(proposal_boxes)
    proposals.gt_classes = torch.tensor([0, 0, 1, 0, 1])
    proposals.gt_boxes = Boxes(PSEUDO_BOXES[[0, 1, 0, 0, 0]])
    targets = Instances((240, 240))
    targets.gt_boxes = Boxes(PSEUDO_BOXES)
    with_image_gt_boxes([proposals], [targets])
    scores = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    return scores.requires_grad_(), deltas.requires_grad_(), proposals


def test_losses_are_those_of_the_kept_proposals_over_all_of_them():
    scores, deltas, proposals = _case()
    with EventStorage() as storage:
        losses = _predictor(DropLossOutputLayers, drop_iou_thresh=0.01).losses(
            (scores, deltas), [proposals]
        )
        dropped = storage.latest()["fast_rcnn/droploss_dropped"][0]

    kept = torch.tensor([0, 1, 4])
    expected_cls = F.cross_entropy(scores[kept], proposals.gt_classes[kept], reduction="sum") / 5
    targets = TRANSFORM.get_deltas(proposals.proposal_boxes.tensor, proposals.gt_boxes.tensor)
    foreground_kept = torch.tensor([0, 1])  # proposal 3 is foreground but dropped
    expected_box = (deltas - targets)[foreground_kept].abs().sum() / 5
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_box_reg"], expected_box)
    assert dropped == pytest.approx(2 / 5)

    # Dropped proposals get no gradient at all; kept ones do.
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    assert scores.grad[[2, 3]].abs().sum() == 0 and deltas.grad[[2, 3]].abs().sum() == 0
    assert (scores.grad[kept].abs().sum(dim=1) > 0).all()
    assert (deltas.grad[[0, 1]].abs().sum(dim=1) > 0).all()


def test_disabled_drop_loss_is_detectron2s_loss():
    scores, deltas, proposals = _case()
    plain, disabled = (
        _predictor(FastRCNNOutputLayers),
        _predictor(DropLossOutputLayers, drop_iou_thresh=None),
    )
    with EventStorage():
        expected = plain.losses((scores, deltas), [proposals])
        losses = disabled.losses((scores, deltas), [proposals])
    assert losses.keys() == expected.keys()
    for name in losses:
        torch.testing.assert_close(losses[name], expected[name])


def test_every_proposal_dropped_gives_zero_losses_that_still_backpropagate():
    scores, deltas, proposals = _case()
    proposals.set(IMAGE_GT_BOXES, torch.zeros(5, 0, 4))  # an image without pseudo-boxes
    with EventStorage():
        losses = _predictor(DropLossOutputLayers, drop_iou_thresh=0.01).losses(
            (scores, deltas), [proposals]
        )
    assert all(loss.item() == 0 for loss in losses.values())
    sum(losses.values()).backward()  # connected to the graph, as detectron2's empty case


def test_threshold_is_inclusive_and_no_pseudo_box_drops_everything():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    quarter = torch.tensor([[0.0, 0.0, 10.0, 2.5]])  # IoU exactly 0.25
    assert drop_loss_keep(box, quarter, 0.25).tolist() == [False]
    assert drop_loss_keep(box, quarter, 0.2499).tolist() == [True]
    assert drop_loss_keep(box, torch.zeros(0, 4), 0.01).tolist() == [False]


def test_image_gt_boxes_are_a_view_per_proposal():
    proposals, targets = Instances((32, 32)), Instances((32, 32))
    proposals.proposal_boxes = Boxes(torch.zeros(7, 4))
    targets.gt_boxes = Boxes(PSEUDO_BOXES)
    with_image_gt_boxes([proposals], [targets])
    boxes = proposals.get(IMAGE_GT_BOXES)
    assert boxes.shape == (7, 2, 4) and boxes.stride(0) == 0  # no copy per proposal
    assert torch.equal(proposals[torch.tensor([1, 5])].get(IMAGE_GT_BOXES)[1], PSEUDO_BOXES)


def test_both_variants_are_registered_subclasses_of_detectron2s_heads():
    from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

    assert issubclass(ROI_HEADS_REGISTRY.get("DropLossROIHeads"), StandardROIHeads)
    assert issubclass(ROI_HEADS_REGISTRY.get("DropLossCascadeROIHeads"), CascadeROIHeads)
