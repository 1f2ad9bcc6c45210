"""Matrix NMS (SOLOv2): soft suppression of duplicate masks in one parallel step.

Instead of removing a mask that overlaps a higher-scored one (greedy NMS, sequential), every
mask's score is multiplied by a decay computed from all its overlaps at once. The decay caused by
a higher-scored mask i on mask j is divided by the decay that i itself suffered (its own largest
overlap with a mask above it), so a mask already suppressed suppresses others less.
"""

from __future__ import annotations

import torch

NMS_KERNELS = ("gaussian", "linear")


def matrix_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor | None = None,
    kernel: str = "gaussian",
    sigma: float = 2.0,
) -> torch.Tensor:
    """Decayed scores of (N, H, W) binary masks, returned in the input order.

    ``labels`` given: only masks of the same label suppress each other (class-aware); None:
    class-agnostic. Gaussian decay ``exp(-sigma * iou^2)``, linear ``1 - iou``.
    """
    if kernel not in NMS_KERNELS:
        raise ValueError(f"Matrix NMS kernel {kernel!r} is invalid: must be one of {NMS_KERNELS}")
    n = scores.shape[0]
    if n == 0:
        return scores.clone()
    order = torch.argsort(scores, descending=True)
    flat = masks[order].reshape(n, -1).float()
    inter = flat @ flat.T
    areas = flat.sum(dim=1)
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1.0)
    # iou[i, j] for i scored above j only: the upper triangle of the sorted matrix.
    above = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    if labels is not None:
        sorted_labels = labels[order]
        above &= sorted_labels[:, None] == sorted_labels[None, :]
    iou = iou * above
    # For each mask i, its largest overlap with any mask scored above it.
    compensate = iou.max(dim=0).values[:, None].expand(n, n)
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou.square() - compensate.square()))
    else:
        decay = (1.0 - iou) / (1.0 - compensate).clamp(min=1e-6)
    # Pairs that are not (higher, lower) must not decay anything.
    decay = torch.where(above, decay, torch.ones_like(decay))
    decayed = scores[order] * decay.min(dim=0).values
    out = torch.empty_like(decayed)
    out[order] = decayed
    return out
