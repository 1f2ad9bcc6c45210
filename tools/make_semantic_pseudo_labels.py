#!/usr/bin/env python
"""Write a folder of semantic pseudo-label maps (uint8 PNGs: 0 = background, 1..K = pseudo-classes).

    # COMUS: initial maps of a clustered pseudo-label json (tools/cluster_pseudo_classes.py)
    tools/make_semantic_pseudo_labels.py --clustered CLUSTERED.json --output MAPS_DIR
    # MaskDistill: confident maps of a class-aware instance model's COCO results json
    tools/make_semantic_pseudo_labels.py --predictions coco_instances_results.json \\
        --dataset NAME [--categories CLUSTERED.json] [--score-thresh 0.9] --output MAPS_DIR

Maps mirror the image names relative to the image root (a/b.jpg -> MAPS_DIR/a/b.png); train on
them with SEMANTIC.PSEUDO_LABELS [[name, images, MAPS_DIR]] (uis_d2/semantic/pseudo_maps.py).
A rerun keeps the maps already written (--overwrite repaints them); MAPS_DIR/labels_info.json,
written last, holds the counts. Rules: uis_d2/semantic/painting.py and writers.py.
"""

from __future__ import annotations

import argparse
import json
import sys

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.semantic.painting import CONFIDENT_SCORE
from uis_d2.semantic.writers import write_confident_maps, write_initial_maps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--clustered", help="clustered pseudo-label json (COMUS initial maps)")
    source.add_argument(
        "--predictions", help="COCO results json of a class-aware model (MaskDistill)"
    )
    parser.add_argument(
        "--dataset", help="with --predictions: the registered dataset or folder:PATH predicted on"
    )
    parser.add_argument(
        "--categories",
        help="with --predictions: a json whose 'categories' define the K classes by ascending "
        "id (e.g. the clustered json the model trained on); default: ids are classes 0..K-1",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=CONFIDENT_SCORE,
        help="with --predictions: confidence a kept prediction needs (MaskDistill: 0.9)",
    )
    parser.add_argument("--output", required=True, help="folder of the label maps")
    parser.add_argument("--overwrite", action="store_true", help="repaint existing maps")
    args = parser.parse_args(argv)
    if args.predictions and not args.dataset:
        parser.error("--predictions needs --dataset (the images the predictions are of)")
    if args.clustered and (args.dataset or args.categories):
        parser.error("--dataset and --categories go with --predictions only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.clustered:
            summary = write_initial_maps(args.clustered, args.output, overwrite=args.overwrite)
        else:
            summary = write_confident_maps(
                args.predictions,
                args.dataset,
                args.output,
                categories_json=args.categories,
                score_thresh=args.score_thresh,
                overwrite=args.overwrite,
            )
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
