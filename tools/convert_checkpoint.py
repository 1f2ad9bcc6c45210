#!/usr/bin/env python
"""Convert a DenseCL / MoCo / torchvision ResNet checkpoint to a detectron2 backbone file.

    tools/convert_checkpoint.py checkpoints/densecl_r101_imagenet_200ep.pth \\
        checkpoints/densecl_r101_imagenet_200ep_d2.pkl [--format auto|densecl|moco|torchvision]

Use the output as MODEL.WEIGHTS with torchvision conventions (configs/Base-SOLOv2.yaml): RGB
input, ImageNet PIXEL_MEAN/PIXEL_STD in 0-255 units, MODEL.RESNETS.STRIDE_IN_1X1 False.
"""

from __future__ import annotations

import argparse
import sys

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.utils.checkpoint_convert import (
    CONVERT_FORMATS,
    convert_state_dict,
    read_checkpoint,
    save_detectron2_checkpoint,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="checkpoint file (.pth/.pth.tar)")
    parser.add_argument("output", help="detectron2 file to write (.pkl or .pth)")
    parser.add_argument("--format", default="auto", choices=CONVERT_FORMATS)
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow non-tensor objects in the file (unpickling can run code: trusted files only)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checkpoint = read_checkpoint(args.input, trust_pickle=args.trust_pickle)
        weights, report = convert_state_dict(checkpoint, args.format)
        save_detectron2_checkpoint(weights, args.output)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {len(weights)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
