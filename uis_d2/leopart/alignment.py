"""Leopart's loss: the student's prediction on one crop against the teacher's assignment on
another, on their common region only (SEED_SYSTEMS.md 3.5, paper eq. 1-2).

Both maps are RoIAligned over the crops' intersection to one ``roi_size`` x ``roi_size`` grid,
so bin (a, b) of either covers the same image region. Only bins lying entirely inside the
teacher's foreground count (``loss_bins``), which focuses the clustering on objects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

# A bin is "entirely foreground" when its aligned binary mask is 1; bilinear weights summing to
# one in float32 may land a hair below it.
_FULL_BIN = 1.0 - 1e-5


def align_to_boxes(maps: torch.Tensor, boxes: torch.Tensor, stride: int, size: int) -> torch.Tensor:
    """``maps`` (B, C, h, w) on a patch grid of ``stride`` pixels, sampled over one box per image
    (``boxes`` (B, 4), xyxy in the crop's pixels) onto (B, C, size, size); ``aligned=True``
    makes pixel edges, not centres, the box's coordinates (as the reference)."""
    indexed = torch.cat([torch.arange(len(boxes), device=boxes.device)[:, None], boxes], dim=1)
    return roi_align(
        maps.float(), indexed.float(), (size, size), spatial_scale=1.0 / stride, aligned=True
    )


LOSS_TOKENS = ("foreground", "background", "all")


def loss_bins(
    mask: torch.Tensor, boxes: torch.Tensor, stride: int, size: int, tokens: str
) -> torch.Tensor:
    """(B, size, size) bool: the bins the loss reads, from the teacher's binary foreground
    ``mask`` (B, h, w) aligned over ``boxes``: bins entirely inside it ("foreground", the
    paper's), entirely outside it ("background") or every bin ("all") (paper Table 1a)."""
    if tokens not in LOSS_TOKENS:
        raise ValueError(f"LEOPART.LOSS.TOKENS = {tokens!r}: must be one of {LOSS_TOKENS}")
    if tokens == "all":
        return torch.ones(len(boxes), size, size, dtype=torch.bool, device=mask.device)
    aligned = align_to_boxes(mask[:, None].float(), boxes.float(), stride, size)[:, 0]
    return aligned >= _FULL_BIN if tokens == "foreground" else aligned <= 1.0 - _FULL_BIN


def masked_cross_entropy(
    student_scores: torch.Tensor,
    targets: torch.Tensor,
    bins: torch.Tensor,
    temperature: float,
) -> torch.Tensor | None:
    """``-sum_bins bins * sum_k q log softmax(s / T) / sum_bins bins`` pooled over the batch.

    ``student_scores`` and ``targets`` (B, K, n, n) aligned, ``bins`` (B, n, n) bool. None when
    no bin counts: the pair then adds nothing (rather than a 0 that would dilute the mean).
    """
    count = bins.sum()
    if count == 0:
        return None
    log_p = F.log_softmax(student_scores / temperature, dim=1)
    per_bin = -(targets * log_p).sum(dim=1)
    return per_bin[bins].sum() / count
