"""SOLOv2 / FreeSOLO losses: focal on the grid, Dice (supervised) or projection Dice + pairwise
affinity (weak, FreeSOLO eq. 5-7), and the semantic-embedding loss (eq. 8-9).

Every term is returned under its own key so the trainer logs each. Terms that have nothing to
supervise in a batch are zeros that still touch the predictions they would use, so every
parameter gets a (zero) gradient and DistributedDataParallel never waits for a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss

from uis_d2.modeling.solov2.targets import GridTargets

# The reference's 1e-5. Average projections of small objects have tiny squared sums: with 1e-3 a
# perfect 16-pixel prediction costs 0.34 instead of 0.004, and the loss teaches small masks to grow.
DICE_EPS = 1e-5
# MODEL.SOLOV2.LOSS.MODE: FreeSOLO's weak mask losses or full-mask Dice on the pseudo-masks.
LOSS_MODES = ("weak", "supervised")
# How a mask term is averaged over the positive instances of a batch (MODEL.SOLOV2.LOSS.REDUCTION):
# "level" = over each FPN level's positives, then over the levels that have any (FreeSOLO ref);
# "instance" = over all positives at once (levels with many positives weigh more).
LOSS_REDUCTIONS = ("level", "instance")


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Per instance ``1 - 2 sum(p t) / (sum p^2 + sum t^2 + eps)`` over all but the first dim."""
    pred = pred.flatten(1)
    target = target.flatten(1)
    inter = (pred * target).sum(dim=1)
    denom = pred.square().sum(dim=1) + target.square().sum(dim=1) + eps
    return 1.0 - 2.0 * inter / denom


def projection_dice_losses(
    probs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per instance (avg-projection, max-projection) Dice of (P, H, W) masks: each projects onto
    the y axis (reduce over x) and onto the x axis (reduce over y), FreeSOLO eq. 5 and 6."""
    avg = dice_loss(probs.mean(dim=2), targets.mean(dim=2)) + dice_loss(
        probs.mean(dim=1), targets.mean(dim=1)
    )
    peak = dice_loss(probs.amax(dim=2), targets.amax(dim=2)) + dice_loss(
        probs.amax(dim=1), targets.amax(dim=1)
    )
    return avg, peak


def neighbour_offsets(size: int, dilation: int) -> list[tuple[int, int]]:
    """Half of a size x size neighbourhood (dilated), one offset per unordered pixel pair.

    The pairwise loss and its weights are symmetric in (i, j), so averaging over these offsets
    equals averaging over all size^2 - 1 neighbours, at half the cost.
    """
    r = size // 2
    return [
        (dy * dilation, dx * dilation)
        for dy in range(0, r + 1)
        for dx in range(-r, r + 1)
        if dy > 0 or dx > 0
    ]


def pair_views(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned views (x_i, x_j) of the last two dims where j = i + (dy, dx) lies in the map."""
    h, w = x.shape[-2:]
    rows_i = slice(max(0, -dy), h - max(0, dy))
    rows_j = slice(max(0, dy), h - max(0, -dy))
    cols_i = slice(max(0, -dx), w - max(0, dx))
    cols_j = slice(max(0, dx), w - max(0, -dx))
    return x[..., rows_i, cols_i], x[..., rows_j, cols_j]


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(P, H, W) bool: pixel centres inside each x1 y1 x2 y2 box (pixel units)."""
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    return inside_y[:, :, None] & inside_x[:, None, :]


def pairwise_affinity_sums(
    mask_logits: torch.Tensor,
    lab_images: torch.Tensor,
    image_index: torch.Tensor,
    boxes: torch.Tensor,
    color_thresh: float,
    size: int = 3,
    dilation: int = 2,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BoxInst's pairwise term: neighbouring pixels of similar colour should agree.

    For each directed pair (i, j), ``-log(p_i p_j + (1 - p_i)(1 - p_j))`` evaluated in log space
    (a logaddexp of log-sigmoids, finite for any logit) counts when the colour similarity
    ``exp(-||lab_i - lab_j|| / 2)`` is >= ``color_thresh``, the centre pixel i lies in the
    instance's box and the neighbour j in the image (ref: j may lie outside the box, never in
    the padding or off the map). ``lab_images`` (B, 3, H, W) are at the logits' resolution;
    ``image_index`` (P,) picks each instance's image; ``valid`` (B, H, W) marks the image
    pixels (None: all). Returns per instance (summed loss, number of counted pairs).
    """
    log_fg = F.logsigmoid(mask_logits)
    log_bg = F.logsigmoid(-mask_logits)
    inside = box_masks(boxes, *mask_logits.shape[-2:])
    in_image = torch.ones_like(inside) if valid is None else valid[image_index]
    total = mask_logits.new_zeros(mask_logits.shape[0])
    count = mask_logits.new_zeros(mask_logits.shape[0])
    # One pass per unordered pair: (i, j) counts when i is in the box, (j, i) when j is.
    for dy, dx in neighbour_offsets(size, dilation):
        lab_i, lab_j = pair_views(lab_images, dy, dx)
        similarity = torch.exp(-torch.linalg.vector_norm(lab_i - lab_j, dim=1) * 0.5)
        fg_i, fg_j = pair_views(log_fg, dy, dx)
        bg_i, bg_j = pair_views(log_bg, dy, dx)
        box_i, box_j = pair_views(inside, dy, dx)
        img_i, img_j = pair_views(in_image, dy, dx)
        directions = (box_i & img_j).to(mask_logits.dtype) + (box_j & img_i).to(mask_logits.dtype)
        weight = (similarity[image_index] >= color_thresh).to(mask_logits.dtype) * directions
        neg_log_same = -torch.logaddexp(fg_i + fg_j, bg_i + bg_j)
        total = total + (neg_log_same * weight).sum(dim=(1, 2))
        count = count + weight.sum(dim=(1, 2))
    return total, count


def reduce_over_instances(
    sums: torch.Tensor, counts: torch.Tensor, levels: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Per-instance ``sums`` over ``counts`` (what each instance averages over: 1 for a Dice
    term, its pairs for the pairwise term), reduced as LOSS_REDUCTIONS describes."""
    if reduction == "instance":
        return sums.sum() / counts.sum().clamp(min=1.0)
    num_levels = int(levels.max()) + 1
    level_sums = sums.new_zeros(num_levels).index_add(0, levels, sums)
    level_counts = counts.new_zeros(num_levels).index_add(0, levels, counts)
    present = torch.bincount(levels, minlength=num_levels) > 0
    return (level_sums[present] / level_counts[present].clamp(min=1.0)).mean()


def embedding_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per instance ``1 - cos(pred, target)`` (FreeSOLO eq. 8)."""
    return 1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)


def pairwise_warmup(warmup_iters: int) -> float:
    """Linear ramp 0 -> 1 over the first iterations (the pairwise term is noise while the masks
    are random); 1 outside a trainer, where there is no event storage to read."""
    if warmup_iters <= 0:
        return 1.0
    try:
        iteration = get_event_storage().iter
    except AssertionError:
        return 1.0
    return min(float(iteration) / warmup_iters, 1.0)


def zero_touching(*tensors: torch.Tensor | None) -> torch.Tensor:
    """A zero that depends on the tensors, so their parameters still receive (zero) gradients."""
    present = [t.sum() for t in tensors if t is not None]
    return sum(present) * 0.0


@dataclass
class LossWeights:
    """MODEL.SOLOV2.LOSS, read once."""

    mode: str
    focal_alpha: float
    focal_gamma: float
    focal_weight: float
    dice_weight: float
    avg_proj_weight: float
    max_proj_weight: float
    pairwise_weight: float
    pairwise_size: int
    pairwise_dilation: int
    pairwise_color_thresh: float
    pairwise_warmup_iters: int
    sem_weight: float
    reduction: str

    @classmethod
    def from_config(cls, cfg: CfgNode) -> LossWeights:
        loss = cfg.MODEL.SOLOV2.LOSS
        return cls(
            mode=loss.MODE,
            focal_alpha=loss.FOCAL_ALPHA,
            focal_gamma=loss.FOCAL_GAMMA,
            focal_weight=loss.FOCAL_WEIGHT,
            dice_weight=loss.DICE_WEIGHT,
            avg_proj_weight=loss.AVG_PROJ_WEIGHT,
            max_proj_weight=loss.MAX_PROJ_WEIGHT,
            pairwise_weight=loss.PAIRWISE_WEIGHT,
            pairwise_size=loss.PAIRWISE_SIZE,
            pairwise_dilation=loss.PAIRWISE_DILATION,
            pairwise_color_thresh=loss.PAIRWISE_COLOR_THRESH,
            pairwise_warmup_iters=loss.PAIRWISE_WARMUP_ITERS,
            sem_weight=loss.SEM_WEIGHT,
            reduction=loss.REDUCTION,
        )


def solov2_losses(
    weights: LossWeights,
    cate_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    pred_embeddings: torch.Tensor | None,
    targets: GridTargets,
    lab_images: torch.Tensor | None,
    unused_preds: tuple[torch.Tensor, ...] = (),
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms of one batch.

    cate_logits: (B, cells, C) over all levels; mask_logits: (P, Hm, Wm) of the positives;
    pred_embeddings: (P, D) or None when the model has no embedding head; lab_images: (B, 3, Hm, Wm)
    CIELab images for the pairwise term (weak mode only); unused_preds: the raw kernel and
    embedding maps, touched when there is no positive so DDP sees their gradients; valid:
    (B, Hm, Wm) bool, the pixels of each image that are not padding (None: all are).
    """
    num_classes = cate_logits.shape[-1]
    onehot = F.one_hot(targets.labels, num_classes + 1)[..., :num_classes].to(cate_logits.dtype)
    focal = sigmoid_focal_loss(
        cate_logits, onehot, weights.focal_alpha, weights.focal_gamma, reduction="sum"
    ) / (targets.num_positives + 1)
    losses = {"loss_focal": weights.focal_weight * focal}

    if targets.num_positives == 0:
        zero = zero_touching(mask_logits, pred_embeddings, *unused_preds)
        mask_keys = (
            ["loss_dice"]
            if weights.mode == "supervised"
            else ["loss_avg_proj", "loss_max_proj", "loss_pairwise"]
        )
        losses.update({key: zero for key in mask_keys})
        losses["loss_sem"] = zero
        return losses

    probs = torch.sigmoid(mask_logits)
    ones = probs.new_ones(targets.num_positives)

    def mean(per_instance: torch.Tensor) -> torch.Tensor:
        return reduce_over_instances(per_instance, ones, targets.pos_level, weights.reduction)

    if weights.mode == "supervised":
        losses["loss_dice"] = weights.dice_weight * mean(dice_loss(probs, targets.mask_targets))
    else:
        avg_proj, max_proj = projection_dice_losses(probs, targets.mask_targets)
        losses["loss_avg_proj"] = weights.avg_proj_weight * mean(avg_proj)
        losses["loss_max_proj"] = weights.max_proj_weight * mean(max_proj)
        if lab_images is None:
            raise ValueError("weak-mode losses need the CIELab images for the pairwise term")
        pair_sums, pair_counts = pairwise_affinity_sums(
            mask_logits,
            lab_images,
            targets.pos_image,
            targets.boxes,
            weights.pairwise_color_thresh,
            weights.pairwise_size,
            weights.pairwise_dilation,
            valid,
        )
        pairwise = reduce_over_instances(
            pair_sums, pair_counts, targets.pos_level, weights.reduction
        )
        ramp = pairwise_warmup(weights.pairwise_warmup_iters)
        losses["loss_pairwise"] = weights.pairwise_weight * ramp * pairwise
    losses["loss_sem"] = _semantic_loss(weights.sem_weight, pred_embeddings, targets)
    return losses


def _semantic_loss(
    sem_weight: float, pred_embeddings: torch.Tensor | None, targets: GridTargets
) -> torch.Tensor:
    """beta x mean(1 - cos) over positives whose image has embeddings; a graph-connected zero
    when none has (or the model has no embedding head, then a plain zero).

    Embeddings without a head to learn them mean EMBED_DIM was never resolved (a cfg that did
    not go through engine/run_config.py): an error, not a silently untrained L_sem.
    """
    has_targets = targets.embeddings is not None and bool(targets.has_embedding.any())
    if pred_embeddings is None:
        if has_targets and sem_weight > 0:
            raise ValueError(
                "the pseudo-labels carry embeddings but the model has no embedding head "
                "(MODEL.SOLOV2.EMBED_DIM = 0): prepare the cfg with "
                "uis_d2.engine.run_config.prepare_run_config, or set LOSS.SEM_WEIGHT 0"
            )
        return targets.mask_targets.new_zeros(())
    if not has_targets:
        return zero_touching(pred_embeddings)
    if targets.embeddings.shape[1] != pred_embeddings.shape[1]:
        raise ValueError(
            f"gt_embeddings have dimension {targets.embeddings.shape[1]} but "
            f"MODEL.SOLOV2.EMBED_DIM = {pred_embeddings.shape[1]}: set EMBED_DIM to the "
            "pseudo-labels' `emb` length"
        )
    keep = targets.has_embedding
    return sem_weight * embedding_loss(pred_embeddings[keep], targets.embeddings[keep]).mean()
