"""MaskCut: our iterative eigensolver against the reference's dense generalised ``eigh``.

Both sides run the same MaskCut loop (uis_d2/proposals/maskcut.py: foreground rule, seed
component, painting, rejection) on the same features; only the eigenvector of each cut differs:

- reference, the way CutLER's ``maskcut.py`` computes it: per image and cut, the dense
  ``scipy.linalg.eigh(D - W, D, subset_by_index=[1, 2])`` in float64, first vector;
- ours: the leading eigenvector of the deflated normalised operator by the project's
  iterative solver (``PROPOSALS.MASKCUT.SOLVER``/``TOL``), all images of a batch per call.

Features: weight-free PatchStats of synthetic scenes at a 480 x 480 input with 8-px patches
(60 x 60 = 3,600 patches, CutLER's grid with ViT-B/8), or ``--vit``: ViT-B/8 keys, random
weights unless ``--checkpoint`` names the DINO file (the real model's shape and cost; on a GPU,
images/s of the whole generator). Reports s/image both ways, the ratio, and agreement: mean IoU
of our masks with the reference's (cut by cut; a cut only one side makes counts as IoU 0) and
the share of masks with IoU >= 0.9. Agreement needs features with structure: a random ViT's
keys all have cosine > 0.15 (a complete graph, every eigenvalue of the deflated operator 0), so
ours returns no mask while the reference cuts along an arbitrary vector of the degenerate
eigenspace; use PatchStats or the real checkpoint for it.

    python benchmarks/bench_maskcut.py --images 6 --json-out bench_maskcut.json
    python benchmarks/bench_maskcut.py --vit --device cuda --images 64 --reference-images 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

import uis_d2  # noqa: F401  (compat fixes and registration)
from uis_d2.config import get_cfg
from uis_d2.data.synthetic import render_scene
from uis_d2.features.base import extract_features
from uis_d2.proposals import build_pseudo_mask_generator
from uis_d2.proposals.maskcut import maskcut_grid_masks, square_resized
from uis_d2.utils.files import atomic_write_json

TARGET_SPEEDUP = 30.0
TARGET_MEAN_IOU = 0.95


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6, help="images timed for ours")
    parser.add_argument("--reference-images", type=int, default=0, help="0: as --images")
    parser.add_argument("--input-size", type=int, default=480)
    parser.add_argument("--vit", action="store_true", help="ViT-B/8 keys, not PatchStats")
    parser.add_argument("--checkpoint", default="", help="DINO ViT-B/8 file for --vit")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="images per eigensolver call")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args()


def maskcut_config(args: argparse.Namespace):
    cfg = get_cfg()
    p = cfg.PROPOSALS
    p.GENERATOR = "MaskCutGenerator"
    p.MASKCUT.INPUT_SIZE = args.input_size
    if args.vit:
        p.EXTRACTOR.ARCH = "vit_base_patch8_224"  # random weights: shapes and cost only ...
        p.EXTRACTOR.CHECKPOINT = args.checkpoint  # ... unless the real file is given
        p.EXTRACTOR.CHECKPOINT_FORMAT = "dino"
    else:
        p.EXTRACTOR.NAME, p.EXTRACTOR.PATCH_SIZE = "PatchStats", 8
    return cfg


def scenes(count: int, seed: int) -> list[torch.Tensor]:
    images = []
    for index in range(count):
        rgb, _ = render_scene(np.random.default_rng([seed, 11, index]))
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    return images


def reference_vectors(features: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """CutLER's cut, per image: dense generalised eigh of (D - W, D), second-smallest vector."""
    vectors = []
    for f in features.double().cpu().numpy():
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        w = np.where(f @ f.T > tau, 1.0, eps)
        d = np.diag(w.sum(axis=1))
        _, vecs = scipy.linalg.eigh(d - w, d, subset_by_index=[1, 2])
        vectors.append(vecs[:, 0])
    return torch.from_numpy(np.stack(vectors))


def mask_ious(ours: list[np.ndarray], reference: list[np.ndarray]) -> list[float]:
    """IoU of cut t with cut t, per image; a cut only one side made scores 0."""
    ious = []
    for a, b in zip(ours, reference, strict=True):
        for t in range(max(len(a), len(b))):
            if t >= len(a) or t >= len(b):
                ious.append(0.0)
                continue
            union = np.logical_or(a[t], b[t]).sum()
            ious.append(float(np.logical_and(a[t], b[t]).sum() / union) if union else 1.0)
    return ious


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


@torch.no_grad()
def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # scipy's BLAS/LAPACK too: both sides get the same threads
    cfg = maskcut_config(args)
    generator = build_pseudo_mask_generator(cfg).to(torch.device(args.device))
    params = generator.params
    images = scenes(args.images, args.seed)
    inputs = [square_resized(image, args.input_size) for image in images]
    features = torch.stack(extract_features(generator.extractor, inputs))
    grid = tuple(features.shape[-2:])
    print(f"{len(images)} images, {grid[0]} x {grid[1]} patches, {features.shape[1]}-d features")

    maskcut_grid_masks(features[:1], params)  # warm-up (allocations, thread pools)
    ours: list[np.ndarray] = []
    ours_s = 0.0
    for start in range(0, len(images), args.batch_size):
        masks, seconds = timed(
            lambda s=start: maskcut_grid_masks(features[s : s + args.batch_size], params),
            args.device,
        )
        ours += masks
        ours_s += seconds
    ours_per_image = ours_s / len(images)

    count = args.reference_images or len(images)
    reference: list[np.ndarray] = []
    reference_s = 0.0
    for index in range(count):
        masks, seconds = timed(
            lambda i=index: maskcut_grid_masks(
                features[i : i + 1].cpu(),
                params,
                solve=lambda x: reference_vectors(x, params.tau, params.eps),
            ),
            "cpu",
        )
        reference += masks
        reference_s += seconds
    reference_per_image = reference_s / count
    ious = mask_ious(ours[:count], reference)
    speedup = reference_per_image / ours_per_image

    _, generator_s = timed(lambda: generator(images), args.device)
    results = {
        "device": args.device,
        "threads": args.threads,
        "features": ("ViT-B/8 keys " + (args.checkpoint or "(random)"))
        if args.vit
        else "PatchStats (8 px)",
        "grid": list(grid),
        "images": len(images),
        "reference_images": count,
        "solver": params.solver,
        "tol": params.tol,
        "ours_s_per_image": ours_per_image,
        "reference_s_per_image": reference_per_image,
        "speedup": speedup,
        "masks_ours": int(sum(len(m) for m in ours[:count])),
        "masks_reference": int(sum(len(m) for m in reference)),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "share_iou_ge_0_9": float(np.mean(np.asarray(ious) >= 0.9)) if ious else None,
        "generator_images_per_s": len(images) / generator_s,
    }
    print(
        f"cuts (eigenvectors + foreground rule), s/image: ours {ours_per_image:.3f}, reference "
        f"{reference_per_image:.3f} (dense generalised eigh), speed-up {speedup:.1f}x "
        f"(target >= {TARGET_SPEEDUP:.0f}x: {'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'})"
    )
    mean_iou = results["mean_iou"]
    print(
        f"agreement over {len(ious)} cuts ({results['masks_ours']} ours, "
        f"{results['masks_reference']} reference): mean IoU {mean_iou:.3f} (target >= "
        f"{TARGET_MEAN_IOU}: {'PASS' if mean_iou >= TARGET_MEAN_IOU else 'FAIL'}), "
        f"IoU >= 0.9 for {results['share_iou_ge_0_9']:.1%}"
    )
    print(
        f"whole generator (features, cuts, masks at full size): "
        f"{results['generator_images_per_s']:.2f} images/s on {args.device}"
    )
    if args.json_out:
        atomic_write_json(args.json_out, results, indent=1)


if __name__ == "__main__":
    main()
