#!/usr/bin/env python
"""Class-agnostic COCO AP/AR of a predictions json against a ground-truth json.

PRED may be a COCO results list or a pseudo-label json (its "annotations" are scored as
predictions; a missing score counts as 1.0). Metrics are percentages; NaN marks a metric the
ground truth leaves undefined (no object in that size range).
"""

from __future__ import annotations

import argparse
import sys

import uis_d2  # noqa: F401  (detectron2 compatibility fixes first)
from uis_d2.evaluation.coco_agnostic import (
    BACKENDS,
    IOU_TYPES,
    evaluate_agnostic,
    format_metrics_table,
)
from uis_d2.utils.files import atomic_write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, help="ground-truth COCO json")
    parser.add_argument("--pred", required=True, help="predictions: COCO results or pseudo-labels")
    parser.add_argument("--json-out", help="write {'segm': {...}, 'bbox': {...}} here")
    parser.add_argument("--iou-types", nargs="+", default=list(IOU_TYPES), choices=IOU_TYPES)
    parser.add_argument("--backend", default="pycocotools", choices=BACKENDS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        metrics = evaluate_agnostic(args.gt, args.pred, args.iou_types, backend=args.backend)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_metrics_table(metrics))
    if args.json_out:
        atomic_write_json(args.json_out, metrics, indent=2)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
