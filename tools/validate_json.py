#!/usr/bin/env python
"""Check a ground-truth or pseudo-label COCO json before training or evaluating on it.

Example (pseudo labels, also checking that every image file exists):
    python tools/validate_json.py pseudo/train.json --images synthetic/train --kind pseudo
Prints a summary and every problem (file, annotation/image id, field); exit code 0 if clean, else 1.
A pseudo-label file's embedding store (FILE.emb.npy beside FILE.json) is checked with it. The
file is streamed, so COCO-scale files validate in flat memory.
"""

from __future__ import annotations

import argparse
import sys

import uis_d2  # noqa: F401  (compat fixes before anything imports detectron2)
from uis_d2.data.validation import KINDS, validate_coco_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="COCO json file to check")
    parser.add_argument("--images", default=None, help="image folder: also check files exist")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="auto",
        help="gt requires categories, pseudo requires scores; auto: pseudo if scores are present",
    )
    parser.add_argument(
        "--max-problems", type=int, default=1000, help="problems to print (all are counted)"
    )
    args = parser.parse_args(argv)
    if args.max_problems < 1:
        parser.error("--max-problems must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = validate_coco_json(
            args.file,
            images_dir=args.images,
            kind=args.kind,
            max_problems=args.max_problems,
            progress=sys.stderr.isatty(),
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    if not report.ok:
        print(report.details())
    print("OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
