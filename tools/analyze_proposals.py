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
import sys
from pathlib import Path

import uis_d2  # noqa: F401  (detectron2 compatibility fixes first)
from uis_d2.evaluation.coco_agnostic import BACKENDS
from uis_d2.evaluation.plotting import plot_recall_by_count
from uis_d2.evaluation.proposal_report import (
    csv_bytes,
    evaluate_proposal_sets,
    format_table,
    report,
    set_names,
)
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

TABLE_METRICS = ("AP", "AP50", "AR100")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", nargs="+", required=True, help="proposal json file(s)")
    parser.add_argument("--names", nargs="+", help="one display name per proposals file")
    parser.add_argument("--gt", required=True, help="ground-truth COCO json (with categories)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--backend", default="pycocotools", choices=BACKENDS)
    args = parser.parse_args(argv)
    try:
        args.names = set_names(args.names, args.proposals, "files")
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = dict(zip(args.names, args.proposals))
        qualities = evaluate_proposal_sets(args.gt, files, backend=args.backend)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    out = Path(args.out)
    print(format_table(qualities, TABLE_METRICS))
    atomic_write_bytes(out / "recall_by_count.csv", csv_bytes(qualities))
    atomic_write_json(out / "recall_by_count.json", report(qualities, gt=args.gt), indent=2)
    recalls = {name: quality.recall for name, quality in qualities.items()}
    plot_recall_by_count(recalls, out / "recall_by_count.png")
    print(f"wrote {out}/recall_by_count.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
