#!/usr/bin/env python
"""Generate the embedded synthetic COCO-format instance dataset (see uis_d2.data.synthetic).

Example: python tools/make_synthetic.py --output datasets/synthetic
which is where the synthetic_train / synthetic_val datasets are registered.
"""

from __future__ import annotations

import argparse
import time

import uis_d2  # noqa: F401  (compat fixes before anything imports detectron2)
from uis_d2.data.datasets import datasets_root
from uis_d2.data.synthetic import generate_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        default=None,
        help="output folder (default: $DETECTRON2_DATASETS/synthetic, i.e. ./datasets/synthetic)",
    )
    parser.add_argument("--num-train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    for option in ("num_train", "num_val", "seed"):
        if getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')} must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output if args.output is not None else datasets_root() / "synthetic"
    start = time.perf_counter()
    paths = generate_synthetic_dataset(output, args.num_train, args.num_val, args.seed)
    elapsed = time.perf_counter() - start
    print(f"wrote {args.num_train} train + {args.num_val} val images in {elapsed:.1f} s:")
    for key, path in paths.items():
        print(f"  {key}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
