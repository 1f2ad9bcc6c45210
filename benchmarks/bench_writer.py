"""Time of ``proposals_to_line`` per image, against the per-mask path it replaced.

The writer runs once per image in tools/generate_proposals.py's main loop, so its time caps the
tool's images/s. "before" is the earlier implementation, kept here as the baseline: per mask a
``mask_to_rle`` (column-major copy + pycocotools), ``mask_to_box_xywh`` and ``mask.sum()``, and
each embedding value rounded by Python's ``round``. Both sides write the same lines (checked
before timing; embeddings may differ by one unit in the 4th decimal at near-ties).

Masks are unions of random ellipses (realistic run counts), as numpy arrays, CPU tensors and,
with ``--device cuda``, CUDA tensors (the "before" path then copies them to the host first).

    python benchmarks/bench_writer.py --threads 1 --json-out bench_writer.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uis_d2  # noqa: F401  (compat fixes)
from uis_d2.data.pseudo_labels import EMBEDDING_DECIMALS, SCORE_DECIMALS
from uis_d2.proposals.base import Proposals
from uis_d2.proposals.writer import proposals_to_line, to_numpy
from uis_d2.utils.files import atomic_write_json
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json-out", type=Path, help="write the figures to this json file")
    parser.add_argument("--num-masks", type=int, default=11, help="masks per image")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--emb-dim", type=int, default=768)
    parser.add_argument("--images", type=int, default=20, help="distinct images timed")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the fastest counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def blob_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """(count, H, W) masks, each the union of 1-3 random ellipses."""
    ys, xs = np.mgrid[:height, :width]
    masks = np.zeros((count, height, width), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(8, height / 3), rng.uniform(8, width / 3)
            mask |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    return masks


def random_proposals(masks: np.ndarray, dim: int, rng: np.random.Generator) -> Proposals:
    """Proposals of the given masks with random scores, ``dim``-d embeddings and the spectral
    generator's extras (also used by bench_pseudo_labels.py)."""
    n = len(masks)
    return Proposals(
        masks=masks,
        scores=rng.random(n, dtype=np.float32),
        embeddings=rng.standard_normal((n, dim), dtype=np.float32),
        extras={"k": rng.integers(2, 5, n), "saliency_overlap": rng.random(n, dtype=np.float32)},
    )


def make_proposals(args: argparse.Namespace, rng: np.random.Generator) -> Proposals:
    masks = blob_masks(rng, args.num_masks, args.height, args.width)
    return random_proposals(masks, args.emb_dim, rng)


def before_line(
    image_id: int, file_name: str, height: int, width: int, proposals: Proposals
) -> dict[str, Any]:
    """The per-mask writer this module measures against (shape checks left out)."""

    def json_float(value: float, decimals: int) -> float | None:
        value = float(value)
        return round(value, decimals) if np.isfinite(value) else None

    masks = to_numpy(proposals.masks).astype(bool)
    scores = to_numpy(proposals.scores).astype(np.float64)
    embeddings = to_numpy(proposals.embeddings).astype(np.float64)
    extras = {name: to_numpy(values) for name, values in proposals.extras.items()}
    annotations = []
    for i, mask in enumerate(masks):
        area = int(mask.sum())
        if area == 0:
            continue
        annotation = {
            "segmentation": mask_to_rle(mask),
            "bbox": mask_to_box_xywh(mask),
            "area": area,
            "score": json_float(scores[i], SCORE_DECIMALS),
            "emb": [json_float(x, EMBEDDING_DECIMALS) for x in embeddings[i].tolist()],
        }
        for name, values in extras.items():
            item = values[i].item()
            annotation[name] = json_float(item, SCORE_DECIMALS) if isinstance(item, float) else item
        annotations.append(annotation)
    return {
        "image_id": image_id,
        "file_name": file_name,
        "height": height,
        "width": width,
        "annotations": annotations,
    }


def check_same_lines(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Everything equal but embeddings, which may differ by one rounding unit at near-ties."""
    emb_before = [a.pop("emb") for a in before["annotations"]]
    emb_after = [a.pop("emb") for a in after["annotations"]]
    if before != after:
        raise AssertionError("the new writer's line differs from the per-mask one")
    gap = np.abs(np.asarray(emb_before) - np.asarray(emb_after)).max(initial=0.0)
    if gap > 1.5 * 10.0**-EMBEDDING_DECIMALS:
        raise AssertionError(f"embeddings differ by {gap}")


def ms_per_image(writer: Callable[..., dict[str, Any]], images: list[Proposals], repeats: int):
    """Fastest pass over all images, in ms per image (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index, proposals in enumerate(images):
            h, w = proposals.masks.shape[1:]
            writer(index, f"{index}.jpg", h, w, proposals)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(images)


def with_masks(proposals: Proposals, masks: np.ndarray | torch.Tensor) -> Proposals:
    return Proposals(masks, proposals.scores, proposals.embeddings, proposals.extras)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    images = [make_proposals(args, rng) for _ in range(args.images)]
    variants = {
        "numpy": images,
        "cpu_tensor": [with_masks(p, torch.from_numpy(p.masks)) for p in images],
    }
    if args.device == "cuda":
        variants["cuda_tensor"] = [with_masks(p, torch.from_numpy(p.masks).cuda()) for p in images]
    figures: dict[str, Any] = {"config": vars(args) | {"json_out": str(args.json_out)}}
    for name, variant in variants.items():
        for proposals in variant[:3]:
            h, w = proposals.masks.shape[1:]
            check_same_lines(
                before_line(0, "x", h, w, proposals), proposals_to_line(0, "x", h, w, proposals)
            )
        before = ms_per_image(before_line, variant, args.repeats)
        after = ms_per_image(proposals_to_line, variant, args.repeats)
        figures[name] = {"before_ms": before, "after_ms": after, "speedup": before / after}
        print(
            f"{name:12s} before {before:7.2f} ms/image   after {after:7.2f} ms/image   "
            f"x{before / after:.1f}  ({args.num_masks} masks {args.height}x{args.width}, "
            f"{args.emb_dim}-d embeddings, {args.threads} thread(s))"
        )
    if args.json_out:
        atomic_write_json(args.json_out, figures)


if __name__ == "__main__":
    main()
