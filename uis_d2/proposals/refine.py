"""Optional dense-CRF refinement of any generator's proposals (``PROPOSALS.REFINE``).

CutLER's MaskCut snaps its patch-grid masks to colour edges with a dense CRF (SEED_SYSTEMS.md
4.5); here the same step runs after every generator, on each image's proposals, before they are
written (proposals/runner.py). Per mask: the image and the mask are resized so the long side is
at most ``MAX_SIDE`` (aspect kept; the masks by area, then > 0.5), the CRF of
proposals/dense_crf.py relabels it, holes are filled, and the mask is dropped when its refined
version has IoU < ``MIN_IOU`` with the coarse one at that resolution (the CRF then changed it
too much to trust, CutLER's rule); a kept mask is resized back bilinearly (> 0.5). A dropped mask
drops its score, embedding and extras rows. Embeddings stay those of the coarse masks: the
generator's features are gone by then.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.proposals.base import Proposals
from uis_d2.proposals.dense_crf import CRFParams, dense_crf, require_pydensecrf


@dataclass(frozen=True)
class RefineParams:
    """``PROPOSALS.REFINE``, one field per key (ENABLED decides whether a refiner is built)."""

    crf: CRFParams
    backend: str
    max_side: int
    fill_holes: bool
    min_iou: float


class MaskRefiner:
    """Refines the proposals of one image at a time, on the image's device."""

    @configurable
    def __init__(self, *, params: RefineParams) -> None:
        if params.backend == "pydensecrf":
            require_pydensecrf()  # fail at start-up, naming the extra, not at the first image
        self.params = params

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        r = cfg.PROPOSALS.REFINE
        crf = CRFParams(
            iters=r.ITERS,
            gaussian_sxy=float(r.GAUSSIAN_SXY),
            gaussian_compat=float(r.GAUSSIAN_COMPAT),
            bilateral_sxy=float(r.BILATERAL_SXY),
            bilateral_srgb=float(r.BILATERAL_SRGB),
            bilateral_compat=float(r.BILATERAL_COMPAT),
        )
        params = RefineParams(crf, r.BACKEND, r.MAX_SIDE, r.FILL_HOLES, float(r.MIN_IOU))
        return {"params": params}

    def describe(self) -> dict[str, Any]:
        """Provenance recorded in the output json's ``info["refine"]``."""
        return {"method": "dense CRF", **dataclasses.asdict(self.params)}

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, proposals: Proposals) -> Proposals:
        """``image``: RGB uint8 (3, H, W), the one the proposals' masks (N, H, W) belong to."""
        p = self.params
        masks = torch.as_tensor(proposals.masks, device=image.device).bool()
        if len(masks) == 0:
            return proposals
        size = tuple(image.shape[1:])
        work = working_size(size, p.max_side)
        pixels, coarse = image.float(), masks
        if work != size:
            pixels = F.interpolate(pixels[None], work, mode="bilinear", antialias=True)[0]
            coarse = F.interpolate(masks[None].float(), work, mode="area")[0] > 0.5
        refined = dense_crf(pixels, coarse, p.crf, p.backend)
        if p.fill_holes:
            refined = fill_holes(refined)
        keep = paired_iou(refined, coarse) >= p.min_iou
        refined = refined[keep]
        if work != size:
            refined = _upsample(refined, size)
        rows = keep.cpu().numpy()
        return Proposals(
            masks=refined,
            scores=_take(proposals.scores, rows),
            embeddings=_take(proposals.embeddings, rows),
            extras={name: _take(values, rows) for name, values in proposals.extras.items()},
            debug=proposals.debug,
        )


def build_mask_refiner(cfg) -> MaskRefiner | None:
    """The refiner of ``cfg.PROPOSALS.REFINE``, or None when it is disabled."""
    return MaskRefiner(cfg) if cfg.PROPOSALS.REFINE.ENABLED else None


def working_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) scaled so the long side is at most ``max_side`` (0: unchanged), aspect kept."""
    if max_side <= 0 or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return tuple(max(1, round(side * scale)) for side in size)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for (N, H, W) bool masks; 0 where both are empty."""
    inter = (a & b).flatten(1).sum(1)
    union = (a | b).flatten(1).sum(1)
    return inter / union.clamp_min(1)


def fill_holes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks with every background region that does not reach the image border
    (4-connected, as scipy.ndimage.binary_fill_holes) set to True.

    Border background spreads along whole rows, then whole columns, until nothing changes: each
    round reaches every pixel one more turn of a path away, a handful of rounds for real masks.
    """
    if masks.numel() == 0:
        return masks.clone()
    free = ~masks
    reached = torch.zeros_like(free)
    for edge in (reached[:, 0], reached[:, -1], reached[:, :, 0], reached[:, :, -1]):
        edge.fill_(True)
    reached &= free
    while True:
        spread = _spread_along_rows(free, reached)
        spread = _spread_along_rows(free.transpose(1, 2), spread.transpose(1, 2)).transpose(1, 2)
        if torch.equal(spread, reached):
            return ~reached
        reached = spread


def _spread_along_rows(free: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
    """Every pixel of a row's run of ``free`` pixels becomes reached when one of them is."""
    starts = free.clone()
    starts[..., 1:] &= ~free[..., :-1]
    run = torch.cumsum(starts.flatten(), 0) - 1  # the run of each free pixel
    hit = torch.zeros(max(1, int(run[-1]) + 1), dtype=torch.bool, device=free.device)
    hit[run[reached.flatten()]] = True  # duplicate indices all write True: order-free
    return free & hit[run.clamp_min(0)].view_as(free)


def _upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) bool -> (N, H, W) bool, bilinear then > 0.5; N may be 0."""
    if len(masks) == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].float(), size, mode="bilinear")[0] > 0.5


def _take(values: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` (bool) of a per-mask array or tensor."""
    if isinstance(values, torch.Tensor):
        return values[torch.from_numpy(rows).to(values.device)]
    return np.asarray(values)[rows]
