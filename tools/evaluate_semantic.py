#!/usr/bin/env python
"""Semantic mIoU (and matched instance AP) of predictions named by pseudo-class ids.

PRED is a folder of PNG id maps named like the images (IMAGE_ROOT/a/b.jpg -> PRED/a/b.png; ids
0..K, 0 the background; 8- or 16-bit gray or palette PNGs), or a COCO results json of instances
whose category_id is a cluster id 0..K-1: those scoring at least --score-thresh are painted as
ids 1..K, the most confident on top. The ground truth is a registered semantic split
(--dataset), a COCO-format instance json (--gt FILE.json) or a folder of label PNGs (--gt DIR
--num-classes C; 0 background, 1..C, 255 ignored). Writes OUT/semantic_metrics.json and
OUT/semantic_confusion_MATCHING.png; for an instance json against a COCO-json ground truth also
the matched instance AP (multi and single protocols) in OUT/matched_ap.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

import uis_d2  # noqa: F401  (detectron2 compatibility fixes first)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from uis_d2.data.semantic import (
    BACKGROUND_NAME,
    read_label_png,
    semantic_classes,
    semantic_map,
)
from uis_d2.data.semantic_datasets import (
    LabelFolderFiles,
    register_semantic_coco,
    register_semantic_labels,
)
from uis_d2.evaluation.cluster_matching import MATCHINGS
from uis_d2.evaluation.coco_agnostic import format_metrics_table, load_predictions
from uis_d2.evaluation.matched_ap import mapping_from_semantic, matched_instance_ap
from uis_d2.evaluation.semantic import (
    METRICS_FILE,
    UnsupervisedSemSegEvaluator,
    format_semantic_table,
    instances_to_ids,
)
from uis_d2.utils.files import atomic_write_json, read_json

MATCHED_AP_FILE = "matched_ap.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred", required=True, help="folder of PNG id maps, or a results json")
    gt = parser.add_mutually_exclusive_group(required=True)
    gt.add_argument("--dataset", help="a registered semantic split, e.g. uis_voc2012_val_sem")
    gt.add_argument("--gt", help="a COCO-format instance json, or a folder of label PNGs")
    parser.add_argument(
        "--image-root",
        help="with --gt FILE.json: the folder its file_name entries are relative to (default: "
        "the json's folder); only used to find the prediction PNGs",
    )
    parser.add_argument("--num-classes", type=int, help="with --gt DIR: classes C (no background)")
    parser.add_argument(
        "--split-name", help="with --gt: the split's name (default: the file or folder name)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--matching", nargs="+", default=["hungarian"], choices=MATCHINGS, help="one or more"
    )
    parser.add_argument(
        "--eval-size", type=int, default=0, help="0: the ground truth's size; N: N x N (Leopart)"
    )
    parser.add_argument(
        "--num-clusters", type=int, help="K (ids 0..K); default: the largest predicted id"
    )
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="instance json: lowest painted score"
    )
    parser.add_argument(
        "--missing",
        choices=("error", "background"),
        default="error",
        help="PNG folder: an image without a map is an error, or all background (pseudo-label "
        "folders leave out the images the clustering dropped)",
    )
    parser.add_argument(
        "--ap-mapping",
        default="instances",
        choices=("instances", "semantic"),
        help="matched AP: map clusters by mask overlaps with the instances (MaskDistill), or "
        "take the semantic evaluation's mapping of the first --matching",
    )
    parser.add_argument(
        "--allow-train-split",
        action="store_true",
        help="evaluate on a split named as training data (the matching is fitted on it)",
    )
    return parser.parse_args(argv)


def register_ground_truth(args: argparse.Namespace) -> str:
    """The registered split to evaluate on: ``--dataset``, or ``--gt`` registered now."""
    if args.dataset:
        if args.dataset not in DatasetCatalog.list():
            raise ValueError(f"dataset {args.dataset!r} is not registered")
        return args.dataset
    path = Path(args.gt).resolve()
    if path.is_dir():
        if args.num_classes is None or args.num_classes < 1:
            raise ValueError("--gt DIR (label PNGs) needs --num-classes C >= 1")
        name = args.split_name or path.name
        classes = [BACKGROUND_NAME, *(f"class_{c}" for c in range(1, args.num_classes + 1))]
        register_semantic_labels(name, LabelFolderFiles(str(path)), classes)
        return name
    name = args.split_name or path.stem
    classes, _ = semantic_classes(read_json(path, "ground-truth file").get("categories") or [])
    image_root = Path(args.image_root).resolve() if args.image_root else path.parent
    register_semantic_coco(name, str(path), str(image_root), classes)
    return name


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the semantic evaluation (and matched AP where it applies); returns the summary."""
    name = register_ground_truth(args)
    evaluator = UnsupervisedSemSegEvaluator(
        name,
        num_clusters=args.num_clusters,
        matchings=args.matching,
        eval_size=args.eval_size,
        output_dir=args.out,
        distributed=False,
        allow_train_split=args.allow_train_split,
    )
    records = DatasetCatalog.get(name)
    pred = Path(args.pred)
    if pred.is_dir():
        image_root = MetadataCatalog.get(name).image_root
        for record in records:
            relative = Path(os.path.relpath(record["file_name"], image_root))
            png = pred / relative.with_suffix(".png")
            gt = semantic_map(record)
            if png.is_file():
                ids = read_label_png(png)
            elif args.missing == "background":  # e.g. images a clustering filter dropped
                ids = np.zeros_like(gt)
            else:
                raise FileNotFoundError(f"prediction not found: {png} (for {record['file_name']})")
            evaluator.add_image(ids, gt, str(relative))
    else:
        by_image = defaultdict(list)
        for result in load_predictions(pred):
            by_image[result.get("image_id")].append(result)
        unknown = set(by_image) - {record["image_id"] for record in records}
        if unknown:
            raise ValueError(f"{pred}: image ids not in {name}: {sorted(map(str, unknown))[:10]}")
        for record in records:
            gt = semantic_map(record)
            ids = instances_to_ids(by_image[record["image_id"]], *gt.shape, args.score_thresh)
            evaluator.add_image(ids, gt, record["file_name"])
    evaluator.evaluate()
    summary = read_json(Path(args.out) / METRICS_FILE)
    print(format_semantic_table(summary))
    json_file = MetadataCatalog.get(name).get("json_file")
    if not pred.is_dir() and json_file:
        mapping = None
        if args.ap_mapping == "semantic":
            category_ids = [c["id"] for c in read_json(json_file)["categories"]]
            semantic = summary["matchings"][args.matching[0]]["mapping"]
            mapping = mapping_from_semantic(semantic, category_ids)
        report = matched_instance_ap(
            json_file,
            pred,
            mapping,
            matching=args.matching[0],
            split_name=name,
            allow_train_split=args.allow_train_split,
        )
        atomic_write_json(Path(args.out) / MATCHED_AP_FILE, report, indent=2)
        print(f"matched instance AP ({report['mapping_from']}), class-aware, in %:")
        print(format_metrics_table({p: report[p]["segm"] for p in ("multi", "single")}))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        evaluate(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out) / METRICS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
