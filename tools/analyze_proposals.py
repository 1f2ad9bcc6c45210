#!/usr/bin/env python
"""Recall of mask proposals by instance count (Engstler et al. 2023, Table 1), plus COCO AP/AR.

For each proposals file: average recall (IoU 0.5:0.95, every proposal of an image, greedy
one-to-one class-agnostic matching by IoU) split by how many ground-truth instances of the same
category the image holds (1..5, 6+), and the class-agnostic mask AP/AR (COCO protocol, at most
100 proposals per image by score). Several files are compared side by side.
Writes DIR/recall_by_count.{csv,json,png}.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import uis_d2  # noqa: F401  (detectron2 compatibility fixes first)
from uis_d2.evaluation.coco_agnostic import (
    BACKENDS,
    METRIC_KEYS,
    evaluate_agnostic,
    load_ground_truth,
    load_predictions,
)
from uis_d2.evaluation.plotting import plot_recall_by_count
from uis_d2.evaluation.recall_by_count import (
    ALL_LABEL,
    BUCKET_LABELS,
    RecallByCount,
    recall_by_instance_count,
)
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

MATCHING = (
    "per image, class-agnostic one-to-one matching greedy by mask IoU over all proposals "
    "(no maxDets cap, scores unused); recall pooled over instances, averaged over IoU 0.5:0.95; "
    "crowd annotations left out"
)
TABLE_METRICS = ("AP", "AP50", "AR100")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", nargs="+", required=True, help="proposal json file(s)")
    parser.add_argument("--names", nargs="+", help="one display name per proposals file")
    parser.add_argument("--gt", required=True, help="ground-truth COCO json (with categories)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--backend", default="pycocotools", choices=BACKENDS)
    args = parser.parse_args(argv)
    names = args.names or [Path(p).stem for p in args.proposals]
    if len(names) != len(args.proposals):
        parser.error(f"--names gives {len(names)} names for {len(args.proposals)} files")
    if len(set(names)) != len(names):
        parser.error(f"names must be unique, got {names}; pass --names")
    args.names = names
    return args


def format_table(results: dict[str, RecallByCount], coco: dict[str, dict[str, float]]) -> str:
    labels = [*BUCKET_LABELS, ALL_LABEL]
    width = max(14, *(len(name) + 2 for name in results))
    counts = next(iter(results.values())).num_instances
    lines = [
        f"{'AR (%)':<{width}}" + "".join(f"{c:>8}" for c in (*labels, *TABLE_METRICS)),
        f"{'GT instances':<{width}}" + "".join(f"{counts[label]:>8}" for label in labels),
    ]
    for name, result in results.items():
        recalls = "".join(f"{result.average_recall[label]:>8.1f}" for label in labels)
        metrics = "".join(f"{coco[name][key]:>8.1f}" for key in TABLE_METRICS)
        lines.append(f"{name:<{width}}" + recalls + metrics)
    return "\n".join(lines)


def csv_bytes(
    results: dict[str, RecallByCount], coco: dict[str, dict[str, float]], files: dict[str, str]
) -> bytes:
    labels = [*BUCKET_LABELS, ALL_LABEL]
    header = ["name", "file", "num_proposals"]
    header += [f"AR_{label}" for label in labels] + [f"instances_{label}" for label in labels]
    header += [f"segm_{key}" for key in METRIC_KEYS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for name, result in results.items():
        writer.writerow(
            [name, files[name], result.num_proposals]
            + [f"{result.average_recall[label]:.4f}" for label in labels]
            + [result.num_instances[label] for label in labels]
            + [f"{coco[name][key]:.4f}" for key in METRIC_KEYS]
        )
    return buffer.getvalue().encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gt = load_ground_truth(args.gt)
        results: dict[str, RecallByCount] = {}
        coco: dict[str, dict[str, float]] = {}
        for name, path in zip(args.names, args.proposals):
            proposals = load_predictions(path)
            results[name] = recall_by_instance_count(gt, proposals)
            coco[name] = evaluate_agnostic(gt, proposals, ("segm",), backend=args.backend)["segm"]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    out = Path(args.out)
    files = dict(zip(args.names, args.proposals))
    report: dict[str, Any] = {
        "gt": args.gt,
        "matching": MATCHING,
        "buckets": [*BUCKET_LABELS, ALL_LABEL],
        "num_instances": next(iter(results.values())).num_instances,
        "proposals": {
            name: {"file": files[name], "recall_by_count": r.to_dict(), "coco_segm": coco[name]}
            for name, r in results.items()
        },
    }
    print(format_table(results, coco))
    atomic_write_bytes(out / "recall_by_count.csv", csv_bytes(results, coco, files))
    atomic_write_json(out / "recall_by_count.json", report, indent=2)
    plot_recall_by_count(results, out / "recall_by_count.png")
    print(f"wrote {out}/recall_by_count.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
