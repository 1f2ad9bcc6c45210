"""Dense-CRF refinement: the torch backend against the reference pydensecrf, at 480 x 480.

Images: synthetic scenes resized to 480 x 480 (CutLER runs its CRF there). Coarse masks: each
scene's ground-truth instances pooled to the 60 x 60 patch grid of a ViT/8 (> half covered)
and blown back up, the blocky masks a patch-level generator hands over. Both backends run the
CRF with CutLER's constants (``PROPOSALS.REFINE`` defaults) on every mask of an image; the
torch backend takes them in one batch, pydensecrf one at a time (``--reference-images 0``
skips it, e.g. where pydensecrf2 is not installed). Reports s/image and s/mask for each,
agreement (mean IoU of torch's masks with the reference's, a pair of empty masks counting as
1, and the share with IoU >= 0.9), and each backend's mean IoU with the ground truth before
and after the CRF.

    python benchmarks/bench_refine.py --images 4 --json-out bench_refine.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import uis_d2  # noqa: F401  (compat fixes and registration)
from uis_d2.config import get_cfg
from uis_d2.data.synthetic import render_scene
from uis_d2.proposals.base import Proposals
from uis_d2.proposals.refine import MaskRefiner, paired_iou
from uis_d2.utils.files import atomic_write_json

SIDE = 480
PATCH = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4, help="images timed for torch")
    parser.add_argument("--reference-images", type=int, default=-1, help="-1: as --images")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args()


def scene(index: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, 480, 480) uint8 image, (M, 480, 480) bool ground truth and coarse masks."""
    rgb, instances = render_scene(np.random.default_rng([seed, 12, index]))
    image = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
    image = F.interpolate(image, (SIDE, SIDE), mode="bilinear", antialias=True)[0]
    truth = torch.from_numpy(np.stack([i.mask for i in instances])).float()[None]
    truth = F.interpolate(truth, (SIDE, SIDE), mode="bilinear")[0] > 0.5
    grid = F.avg_pool2d(truth.float()[None], PATCH)[0] > 0.5
    coarse = grid.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
    keep = coarse.flatten(1).any(1)
    return image.round().byte().to(device), truth[keep].to(device), coarse[keep].to(device)


def crf_only(backend: str) -> MaskRefiner:
    """The refiner's CRF and hole filling, without the IoU rule (agreement is per mask)."""
    cfg = get_cfg()
    cfg.PROPOSALS.REFINE.ENABLED = True
    cfg.PROPOSALS.REFINE.BACKEND = backend
    cfg.PROPOSALS.REFINE.MIN_IOU = 0.0
    return MaskRefiner(cfg)


def run(backend: str, scenes: list) -> tuple[list[torch.Tensor], float]:
    refiner = crf_only(backend)
    outputs, start = [], time.perf_counter()
    for image, _, coarse in scenes:
        n = len(coarse)
        proposals = Proposals(coarse, np.ones(n, np.float32), np.zeros((n, 1), np.float32))
        outputs.append(refiner(image, proposals).masks)
    if scenes and scenes[0][0].is_cuda:
        torch.cuda.synchronize()
    return outputs, time.perf_counter() - start


def mean_iou_with(masks: list[torch.Tensor], truths: list[torch.Tensor]) -> float:
    return float(torch.cat([paired_iou(m, t) for m, t in zip(masks, truths)]).mean())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    scenes = [scene(i, args.seed, args.device) for i in range(args.images)]
    truths = [truth for _, truth, _ in scenes]
    num_masks = sum(len(t) for t in truths)
    run("torch", scenes[:1])  # warm-up
    ours, seconds = run("torch", scenes)
    result = {
        "images": args.images,
        "masks": num_masks,
        "size": [SIDE, SIDE],
        "device": args.device,
        "threads": args.threads,
        "coarse_iou_with_truth": mean_iou_with([c for _, _, c in scenes], truths),
        "torch": {
            "s_per_image": seconds / args.images,
            "s_per_mask": seconds / num_masks,
            "iou_with_truth": mean_iou_with(ours, truths),
        },
    }
    n_ref = args.images if args.reference_images < 0 else args.reference_images
    if n_ref:
        reference, ref_seconds = run("pydensecrf", scenes[:n_ref])
        ious = torch.cat(
            [
                torch.where((a | b).flatten(1).any(1), paired_iou(a, b), 1.0)
                for a, b in zip(ours, reference)
            ]
        )
        ref_masks = sum(len(r) for r in reference)
        result["pydensecrf"] = {
            "images": n_ref,
            "s_per_image": ref_seconds / n_ref,
            "s_per_mask": ref_seconds / ref_masks,
            "iou_with_truth": mean_iou_with(reference, truths[:n_ref]),
        }
        result["agreement"] = {
            "mean_iou": float(ious.mean()),
            "share_iou_ge_0.9": float((ious >= 0.9).float().mean()),
        }
        result["speedup"] = result["pydensecrf"]["s_per_image"] / result["torch"]["s_per_image"]
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json_out:
        atomic_write_json(args.json_out, result, indent=1)


if __name__ == "__main__":
    main()
