#!/usr/bin/env python
"""Foreground quality of saliency providers against the union of the ground-truth instances.

Example (the weight-free features on the embedded data):

    python tools/evaluate_foreground.py --config-file configs/proposals/synthetic_maskcut.yaml \
        --dataset synthetic_val --providers SpectralBorder MaskCutUnion --combine intersection \
        --out output/foreground

Each provider of FOREGROUND_REGISTRY named by --providers is built from the config as the
spectral generator builds it (sharing one PROPOSALS.SALIENCY.EXTRACTOR module) and run on every
image; --combine adds their intersection or union (CombinedForeground, as
PROPOSALS.SALIENCY.COMBINE). Each map is resized to the image's ground-truth size (resize_map)
and compared with the union of the image's instance masks, crowd regions counted as foreground
(uis_d2/evaluation/foreground.py): foreground Jaccard (pooled over the dataset, and the mean
per image) and boundary F1 within --boundary-tolerance pixels (pooled, and the mean).
Unreadable images follow INPUT.BAD_IMAGE_POLICY ("skip": left out, listed in the json).
Writes DIR/foreground.{json,csv} and DIR/foreground_grid.png (the first --grid images).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2 is used)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from uis_d2.config import load_config
from uis_d2.data.datasets import load_class_agnostic
from uis_d2.data.image_folder import FOLDER_PREFIX, ensure_dataset, spec_path
from uis_d2.data.image_io import BadImageError, read_image
from uis_d2.evaluation.foreground import (
    ForegroundCounts,
    foreground_counts,
    ground_truth_union,
    summarize,
)
from uis_d2.evaluation.foreground_grid import save_foreground_grid
from uis_d2.foreground.base import (
    COMBINE_MODES,
    FOREGROUND_REGISTRY,
    CombinedForeground,
    ForegroundProvider,
    build_foreground_provider,
    build_saliency_extractor,
    resize_map,
    run_providers,
)
from uis_d2.proposals.runner import ImageRecord, image_record, uses_cuda
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

logger = logging.getLogger("uis_d2.evaluate_foreground")

GROUND_TRUTH = "union of every instance mask of the image, crowd regions counted as foreground"
RESOLUTION = "the image's (ground-truth height x width); provider maps resized with resize_map"
COMBINED_SYMBOL = {"intersection": "&", "union": "|"}
CSV_KEYS = (
    "jaccard",
    "mean_jaccard",
    "boundary_f1",
    "mean_boundary_f1",
    "boundary_precision",
    "boundary_recall",
    "num_images",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="proposal config (configs/proposals)")
    parser.add_argument(
        "--dataset",
        help="registered detectron2 dataset name with ground truth (a folder:PATH has none: give "
        "--gt and --images)",
    )
    parser.add_argument("--gt", help="ground-truth COCO json (instead of --dataset)")
    parser.add_argument("--images", help="folder the --gt file names are relative to")
    parser.add_argument("--providers", nargs="+", required=True, help="FOREGROUND_REGISTRY names")
    parser.add_argument("--combine", choices=COMBINE_MODES, help="also evaluate their combination")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="only the first N image ids")
    parser.add_argument("--grid", type=int, default=6, help="images in the PNG grid")
    parser.add_argument(
        "--boundary-tolerance",
        type=float,
        default=3.0,
        help="pixels between matched boundary pixels (default 3)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    # --providers swallows the KEY VALUE overrides when they follow it; registry names have no
    # dot and config keys always do, so the overrides start at the first dotted word.
    dotted = [i for i, name in enumerate(args.providers) if "." in name]
    if dotted:
        args.opts = args.providers[dotted[0] :] + args.opts
        args.providers = args.providers[: dotted[0]]
    if not args.providers:
        parser.error("--providers needs at least one name")
    if (args.dataset is None) == (args.gt is None and args.images is None):
        parser.error("give either --dataset or both --gt and --images")
    if args.dataset is None and (args.gt is None or args.images is None):
        parser.error("--gt and --images go together")
    if len(set(args.providers)) != len(args.providers):
        parser.error(f"--providers repeats a name: {args.providers}")
    if args.combine and len(args.providers) < 2:
        parser.error("--combine needs at least two providers")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.grid < 0 or args.boundary_tolerance < 0:
        parser.error("--grid and --boundary-tolerance must be >= 0")
    return args


def load_records(args: argparse.Namespace) -> list[tuple[ImageRecord, dict[str, Any]]]:
    """(record, dataset dict) per image, by image id, at most --limit. Records name images as
    generate_proposals.py does (relative to the image root), which ExternalMaps looks up."""
    if args.dataset is not None:
        if args.dataset.startswith(FOLDER_PREFIX):
            raise ValueError(
                f"--dataset {args.dataset}: an image folder has no ground truth to compare with; "
                f"give --gt GT.json --images {spec_path(args.dataset)}"
            )
        dataset, dicts = args.dataset, DatasetCatalog.get(ensure_dataset(args.dataset))
        image_root = MetadataCatalog.get(args.dataset).get("image_root", None)
        image_root = str(image_root) if image_root is not None else None
    else:
        dataset, dicts, image_root = args.gt, load_class_agnostic(args.gt, args.images), args.images
    pairs = sorted(
        ((image_record(d, image_root, dataset), d) for d in dicts), key=lambda p: p[0].image_id
    )
    return pairs[: args.limit]


def combined_name(providers: list[str], mode: str) -> str:
    return COMBINED_SYMBOL[mode].join(providers)


class _Replay(ForegroundProvider):
    """Hands CombinedForeground maps already computed for the batch, so a combination costs no
    second run of its providers."""

    def __init__(self, maps: list[torch.Tensor]) -> None:
        self.maps = maps

    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        return self.maps


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def format_table(results: dict[str, dict[str, float | int]]) -> str:
    width = max(16, *(len(name) + 2 for name in results))
    columns = ("jaccard", "mean_jaccard", "boundary_f1", "mean_boundary_f1")
    header = ("J pooled", "J mean", "BF1 pooled", "BF1 mean")
    lines = [f"{'provider (%)':<{width}}" + "".join(f"{h:>12}" for h in header)]
    for name, result in results.items():
        lines.append(f"{name:<{width}}" + "".join(f"{100 * result[c]:>12.1f}" for c in columns))
    return "\n".join(lines)


def csv_bytes(results: dict[str, dict[str, float | int]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["provider", *CSV_KEYS])
    for name, result in results.items():
        writer.writerow([name, *(result[key] for key in CSV_KEYS)])
    return buffer.getvalue().encode("utf-8")


def evaluate(args: argparse.Namespace, cfg) -> dict[str, Any]:
    """Run every provider over the images; returns the report (the json) and writes the grid."""
    pairs = load_records(args)
    device = torch.device("cuda") if uses_cuda(cfg) else torch.device("cpu")
    needs_extractor = any(
        name in FOREGROUND_REGISTRY and FOREGROUND_REGISTRY.get(name).needs_extractor
        for name in args.providers
    )  # unknown names fail clearly in build_foreground_provider
    shared = build_saliency_extractor(cfg) if needs_extractor else None
    providers = {
        name: build_foreground_provider(cfg, name, extractor=shared).to(device)
        for name in args.providers
    }
    names = list(providers)
    if args.combine:
        names.append(combined_name(args.providers, args.combine))
    counts: dict[str, list[ForegroundCounts]] = {name: [] for name in names}
    per_image: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    skipped: list[dict[str, str]] = []
    grid_rows = []
    for batch in tqdm(list(batches(pairs, cfg.PROPOSALS.BATCH_SIZE)), desc="foreground"):
        kept, images = [], []
        for record, d in batch:
            try:
                pixels = read_image(record.path, fmt="RGB")
            except BadImageError as err:
                if cfg.INPUT.BAD_IMAGE_POLICY == "fail":
                    raise
                logger.warning("skipping unreadable image %s: %s", record.path, err.reason)
                skipped.append({"file_name": record.file_name, "reason": err.reason})
                continue
            kept.append((record, d, pixels))
            images.append(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))
        if not kept:
            continue
        images = [image.to(device) for image in images]
        file_names = [record.file_name for record, _, _ in kept]
        per_provider = run_providers(list(providers.values()), shared, images, names=file_names)
        maps = dict(zip(providers, per_provider, strict=True))
        if args.combine:
            replays = [_Replay(maps[name]) for name in args.providers]
            maps[names[-1]] = CombinedForeground(replays, args.combine)(images)
        for i, (record, d, pixels) in enumerate(kept):
            gt = ground_truth_union(d)
            row_maps = {"ground truth (union)": gt}
            for name in names:
                pred = resize_map(maps[name][i], gt.shape).cpu().numpy()
                c = foreground_counts(pred, gt, args.boundary_tolerance)
                counts[name].append(c)
                per_image[name].append(
                    {
                        "image_id": record.image_id,
                        "file_name": record.file_name,
                        "jaccard": c.jaccard,
                        "boundary_f1": c.boundary_f1,
                    }
                )
                row_maps[f"{name} J {100 * c.jaccard:.0f}"] = pred
            if len(grid_rows) < args.grid:
                grid_rows.append((record.file_name, pixels, row_maps))
    if not counts[names[0]]:
        raise ValueError("no readable image to evaluate")
    out = Path(args.out)
    if grid_rows:
        save_foreground_grid(grid_rows, out / "foreground_grid.png")
    results = {name: summarize(counts[name]) for name in names}
    return {
        "config_file": args.config_file,
        "dataset": args.dataset,
        "gt": args.gt,
        "images": args.images,
        "ground_truth": GROUND_TRUTH,
        "resolution": RESOLUTION,
        "boundary_tolerance_px": args.boundary_tolerance,
        "combine": args.combine,
        # Provenance as the proposals' info records it (checkpoint hashes; paths as strings).
        "providers": json.loads(
            json.dumps({n: p.describe() for n, p in providers.items()}, default=str)
        ),
        "skipped": skipped,
        "results": results,
        "per_image": per_image,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        report = evaluate(args, cfg)
    except (FileNotFoundError, KeyError, ValueError) as err:  # BadImageError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    atomic_write_json(out / "foreground.json", report, indent=2)
    atomic_write_bytes(out / "foreground.csv", csv_bytes(report["results"]))
    print(format_table(report["results"]))
    if report["skipped"]:
        print(f"{len(report['skipped'])} unreadable images skipped (listed in foreground.json)")
    grid = " and foreground_grid.png" if args.grid else ""
    print(f"wrote {out}/foreground.{{json,csv}}{grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
