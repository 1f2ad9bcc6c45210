"""FreeSOLO / SOLOv2 loss terms on tiny tensors with hand-computed values."""

from __future__ import annotations

import math

import uis_d2  # noqa: F401

# isort: split
import pytest
import torch
from detectron2.utils.events import EventStorage

from uis_d2.config import get_cfg
from uis_d2.layers.color import rgb_to_lab
from uis_d2.modeling.solov2.losses import (
    DICE_EPS,
    LossWeights,
    dice_loss,
    embedding_loss,
    neighbour_offsets,
    pairwise_affinity_sums,
    pairwise_warmup,
    projection_dice_losses,
    reduce_over_instances,
    solov2_losses,
)
from uis_d2.modeling.solov2.targets import GridTargets


def test_dice_hand_value_and_perfect_prediction():
    pred = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[1.0, 1.0]])
    assert dice_loss(pred, target).item() == pytest.approx(1 - 2 / (3 + DICE_EPS))
    perfect = torch.tensor([[0.2, 0.9, 0.0]])
    assert dice_loss(perfect, perfect).item() == pytest.approx(0.0, abs=1e-3)


def test_projection_dice_hand_values():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    avg, peak = projection_dice_losses(pred, target)
    # avg over x: pred (0.5, 0) vs target (1, 0) -> 1 - 1/1.25; over y: (0.5, 0) vs (0.5, 0.5)
    # -> 1 - 0.5/0.75. max over x: equal -> 0; over y: (1, 0) vs (1, 1) -> 1 - 2/3.
    assert avg.item() == pytest.approx(0.2 + 1 / 3, abs=2e-3)
    assert peak.item() == pytest.approx(1 / 3, abs=2e-3)
    avg, peak = projection_dice_losses(target, target)
    assert avg.item() == pytest.approx(0.0, abs=2e-3) and peak.item() == pytest.approx(
        0.0, abs=2e-3
    )


def small_square(size: int, side: int, top_left: int = 40) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, top_left : top_left + side, top_left : top_left + side] = 1.0
    return mask


def test_perfect_small_object_costs_nothing_and_a_grown_mask_costs_more():
    """Average projections of a 16-pixel object have tiny squared sums: a large Dice eps (1e-3)
    made its perfect prediction cost 0.23 here and put the minimum at a larger mask."""
    target = small_square(128, 4)
    avg, peak = projection_dice_losses(target, target)
    assert avg.item() < 0.01 and peak.item() < 0.01
    grown = small_square(128, 6, top_left=39)
    assert projection_dice_losses(grown, target)[0].item() > avg.item() + 0.01


def test_projections_ignore_what_the_projection_cannot_see():
    # Max projections of a filled box and of its outline are equal: the weak loss is box-level.
    box = torch.zeros(1, 6, 6)
    box[0, 1:5, 1:5] = 1.0
    outline = box.clone()
    outline[0, 2:4, 2:4] = 0.0
    _, peak = projection_dice_losses(outline, box)
    assert peak.item() == pytest.approx(0.0, abs=1e-3)


def uniform_lab(height: int, width: int) -> torch.Tensor:
    return torch.zeros(1, 3, height, width)


def full_box(height: int, width: int) -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, float(width), float(height)]])


def pairwise_loss(logits, lab, box, valid=None) -> float:
    """Mean over the counted pairs of one instance."""
    total, count = pairwise_affinity_sums(logits, lab, torch.tensor([0]), box, 0.3, valid=valid)
    return (total / count.clamp(min=1.0)).item()


def test_pairwise_hand_value_on_constant_logits():
    # Every pair has p = 0.75: -log(0.75^2 + 0.25^2) = -log(0.625).
    logits = torch.full((1, 3, 3), math.log(3.0))
    loss = pairwise_loss(logits, uniform_lab(3, 3), full_box(3, 3))
    assert loss == pytest.approx(-math.log(0.625), rel=1e-5)


def test_pairwise_is_finite_and_large_for_confident_disagreement():
    logits = torch.full((1, 4, 4), 100.0)
    logits[0, :, 2:] = -100.0
    loss = pairwise_loss(logits, uniform_lab(4, 4), full_box(4, 4))
    assert math.isfinite(loss) and loss > 10


def test_pairwise_counts_pairs_by_their_centre_pixel():
    """(i, j) counts when the centre i is in the box, wherever j lies (ref); so a pair with one
    pixel on each side of the box edge counts once, a pair inside twice, one outside never."""
    logits = torch.zeros(1, 1, 3)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # only pixel (0, 0)
    total, count = pairwise_affinity_sums(
        logits, uniform_lab(1, 3), torch.tensor([0]), box, 0.3, dilation=2
    )
    assert count.item() == 1.0  # (0,0) -> (0,2); never (0,2) -> (0,0)
    assert total.item() == pytest.approx(-math.log(0.5), rel=1e-5)
    _, both_inside = pairwise_affinity_sums(
        logits, uniform_lab(1, 3), torch.tensor([0]), full_box(1, 3), 0.3, dilation=2
    )
    assert both_inside.item() == 2.0


def test_pairwise_border_pair_with_a_disagreeing_outside_neighbour_counts():
    logits = torch.full((1, 8, 8), 10.0)
    logits[0, :, 6:] = -10.0  # the object stops at column 6; the box at column 4
    box = torch.tensor([[0.0, 0.0, 4.0, 8.0]])
    # At dilation 2, the box's last column (3) pairs with column 5, which agrees...
    assert pairwise_loss(logits, uniform_lab(8, 8), box) < 1e-3
    # ...while a box one column wider pairs its column 4 with the disagreeing column 6.
    wider = torch.tensor([[0.0, 0.0, 5.0, 8.0]])
    assert pairwise_loss(logits, uniform_lab(8, 8), wider) > 0.5


def test_pairwise_ignores_pairs_with_both_pixels_outside_the_box():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 10, 10, generator=gen) * 10  # noisy everywhere...
    logits[0, 2:8, 2:8] = 10.0  # ...and confident in and around the box [4, 6)
    box = torch.tensor([[4.0, 4.0, 6.0, 6.0]])
    loss = pairwise_loss(logits, uniform_lab(10, 10), box)
    assert loss < 1e-3
    # Noise where no pixel of the box reaches it (dilation 2) changes nothing.
    assert pairwise_loss(logits.clamp(max=-3.0), uniform_lab(10, 10), full_box(10, 10)) > 0
    far = logits.clone()
    far[0, :2] = far[0, 8:] = 0.0
    assert pairwise_loss(far, uniform_lab(10, 10), box) == pytest.approx(loss, abs=1e-9)


def test_pairwise_never_pairs_a_pixel_with_the_padding():
    logits = torch.full((1, 4, 6), 10.0)
    logits[0, :, 4:] = -10.0  # the padding columns 4-5 are predicted background
    valid = torch.zeros(1, 4, 6, dtype=torch.bool)
    valid[0, :, :4] = True
    box = full_box(4, 4)
    assert pairwise_loss(logits, uniform_lab(4, 6), box, valid) < 1e-3
    assert pairwise_loss(logits, uniform_lab(4, 6), box) > 1.0


def test_pairwise_ignores_pairs_of_dissimilar_colour():
    # Left half black, right half white; the prediction splits the image along that edge.
    rgb = torch.zeros(1, 3, 6, 6)
    rgb[..., 3:] = 1.0
    lab = rgb_to_lab(rgb)
    logits = torch.full((1, 6, 6), -10.0)
    logits[0, :, 3:] = 10.0
    assert pairwise_loss(logits, lab, full_box(6, 6)) < 1e-3
    assert pairwise_loss(logits, uniform_lab(6, 6), full_box(6, 6)) > 1.0


def test_level_reduction_averages_each_level_then_the_levels():
    values = torch.tensor([1.0, 1.0, 1.0, 5.0])
    levels = torch.tensor([0, 0, 0, 3])
    ones = torch.ones(4)
    assert reduce_over_instances(values, ones, levels, "level").item() == pytest.approx(3.0)
    assert reduce_over_instances(values, ones, levels, "instance").item() == pytest.approx(2.0)
    # Ratios (the pairwise term): each level's summed loss over its counted pairs.
    counts = torch.tensor([2.0, 2.0, 0.0, 5.0])
    assert reduce_over_instances(values, counts, levels, "level").item() == pytest.approx(
        (3.0 / 4.0 + 1.0) / 2
    )


def test_neighbour_offsets_cover_each_unordered_pair_once():
    offsets = neighbour_offsets(3, 2)
    assert len(offsets) == 4
    full = {(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)} - {(0, 0)}
    assert set(offsets) | {(-dy, -dx) for dy, dx in offsets} == full


def test_rgb_to_lab_reference_colours():
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    lab = rgb_to_lab(colours.T[None, :, :, None])[0, :, :, 0].T
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert lab[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.01)
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.05)


def test_focal_term_hand_values():
    """loss_focal = fvcore's summed focal loss over the grid / (positives + 1)."""
    weights = LossWeights.from_config(get_cfg())
    targets = one_positive_targets(None)
    logits = torch.zeros(1, 4, 4)
    # One positive cell and two background cells, all at logit 0 (p = 0.5).
    losses = solov2_losses(
        weights, torch.zeros(1, 3, 1), logits, None, targets, torch.zeros(1, 3, 4, 4)
    )
    fg, bg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    assert losses["loss_focal"].item() == pytest.approx((fg + 2 * bg) / 2)


def test_embedding_loss_is_one_minus_cosine():
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([[0.0, 3.0], [-1.0, 0.0], [5.0, 0.0]])
    assert embedding_loss(pred, target).tolist() == pytest.approx([1.0, 2.0, 0.0])


def test_pairwise_warmup_reads_the_trainer_iteration():
    assert pairwise_warmup(1000) == 1.0  # no trainer
    with EventStorage(250):
        assert pairwise_warmup(1000) == pytest.approx(0.25)
    with EventStorage(5000):
        assert pairwise_warmup(1000) == 1.0
    with EventStorage(0):
        assert pairwise_warmup(0) == 1.0


def one_positive_targets(embedding: torch.Tensor | None) -> GridTargets:
    mask = torch.zeros(1, 4, 4)
    mask[0, 1:3, 1:3] = 1.0
    return GridTargets(
        labels=torch.tensor([[0, 1, 1]]),
        pos_image=torch.tensor([0]),
        pos_cell=torch.tensor([0]),
        pos_level=torch.tensor([0]),
        mask_targets=mask,
        boxes=torch.tensor([[1.0, 1.0, 3.0, 3.0]]),
        embeddings=embedding,
        has_embedding=torch.tensor([embedding is not None]),
    )


def test_solov2_losses_weights_and_keys():
    weights = LossWeights.from_config(get_cfg())
    targets = one_positive_targets(torch.tensor([[0.0, 1.0]]))
    perfect = torch.where(targets.mask_targets > 0, 20.0, -20.0)
    cate = torch.tensor([[[20.0], [-20.0], [-20.0]]])
    embed = torch.tensor([[1.0, 0.0]], requires_grad=True)
    # A white object on black: the pairs across its border differ in colour and do not count.
    lab = rgb_to_lab(targets.mask_targets[:, None].expand(1, 3, 4, 4))
    losses = solov2_losses(weights, cate, perfect, embed, targets, lab)
    assert set(losses) == {
        "loss_focal",
        "loss_avg_proj",
        "loss_max_proj",
        "loss_pairwise",
        "loss_sem",
    }
    for key in ("loss_focal", "loss_avg_proj", "loss_max_proj", "loss_pairwise"):
        assert losses[key].item() == pytest.approx(0.0, abs=1e-3), key
    assert losses["loss_sem"].item() == pytest.approx(4.0)  # beta x (1 - cos 90 deg)


def test_semantic_loss_is_a_graph_connected_zero_without_embeddings():
    weights = LossWeights.from_config(get_cfg())
    targets = one_positive_targets(None)
    embed = torch.tensor([[1.0, 0.0]], requires_grad=True)
    logits = torch.zeros(1, 4, 4)
    losses = solov2_losses(
        weights, torch.zeros(1, 3, 1), logits, embed, targets, torch.zeros(1, 3, 4, 4)
    )
    assert losses["loss_sem"].item() == 0.0
    losses["loss_sem"].backward()
    assert embed.grad is not None and torch.equal(embed.grad, torch.zeros(1, 2))


def test_embedding_dimension_mismatch_names_the_config_key():
    weights = LossWeights.from_config(get_cfg())
    targets = one_positive_targets(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="EMBED_DIM"):
        solov2_losses(
            weights,
            torch.zeros(1, 3, 1),
            torch.zeros(1, 4, 4),
            torch.zeros(1, 2),
            targets,
            torch.zeros(1, 3, 4, 4),
        )
