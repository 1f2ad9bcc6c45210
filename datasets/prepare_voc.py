#!/usr/bin/env python
"""Convert PASCAL VOC 2012 instance masks (SegmentationObject PNGs) to a COCO json.

VOC stores instances only as palette PNGs: in SegmentationObject each object has its own index
(0 background, 255 the void border), and SegmentationClass gives the class of every pixel.
Each instance becomes an RLE mask whose category is the majority class of its pixels; void
pixels belong to no instance. The default split is trainval (2,913 images): the "official VOC2012
object segmentation set" that MaskDistill evaluates instance masks on, whose numbers engstler
(Table 3) compares with on PASCAL VOC.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import uis_d2  # noqa: F401  (compat fixes before anything imports detectron2)
from uis_d2.data.datasets import datasets_root
from uis_d2.data.semantic import read_label_png
from uis_d2.data.semantic_datasets import VOC_CLASSES
from uis_d2.utils.files import atomic_write_json
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle

BACKGROUND, VOID = 0, 255


def image_instances(objects: np.ndarray, classes: np.ndarray, source: Path) -> list[dict[str, Any]]:
    """COCO annotation bodies (without ids) for every instance index in ``objects``."""
    if objects.shape != classes.shape:
        raise ValueError(f"{source}: object and class PNGs differ in size")
    annotations = []
    for index in np.unique(objects):
        if index in (BACKGROUND, VOID):
            continue
        mask = objects == index
        labels = classes[mask]
        labels = labels[(labels != BACKGROUND) & (labels != VOID)]
        if labels.size == 0:
            raise ValueError(f"{source}: instance {index} has no class in SegmentationClass")
        category_id = int(np.bincount(labels).argmax())
        if not 1 <= category_id <= len(VOC_CLASSES):
            raise ValueError(f"{source}: instance {index} has unknown class {category_id}")
        annotations.append(
            {
                "category_id": category_id,
                "iscrowd": 0,
                "segmentation": mask_to_rle(mask),
                "bbox": mask_to_box_xywh(mask),
                "area": int(mask.sum()),
            }
        )
    return annotations


def convert_voc(voc_root: str | Path, split: str) -> dict[str, Any]:
    """COCO json of the instance masks of ``split`` (a file in ImageSets/Segmentation)."""
    voc_root = Path(voc_root)
    split_file = voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"VOC split file not found: {split_file}")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    images, annotations = [], []
    for image_id, name in enumerate(tqdm(names, desc=f"VOC {split}", unit="img"), start=1):
        if not (voc_root / "JPEGImages" / f"{name}.jpg").is_file():
            raise FileNotFoundError(f"VOC image not found: {voc_root / 'JPEGImages' / name}.jpg")
        object_png = voc_root / "SegmentationObject" / f"{name}.png"
        objects = read_label_png(object_png)
        classes = read_label_png(voc_root / "SegmentationClass" / f"{name}.png")
        height, width = objects.shape
        images.append(
            {"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width}
        )
        for body in image_instances(objects, classes, object_png):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **body})
    categories = [
        {"id": i, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES, 1)
    ]
    return {
        "info": {"description": f"PASCAL VOC 2012 {split} instance masks (SegmentationObject)"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def main(argv: list[str] | None = None) -> int:
    voc = datasets_root() / "voc"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--voc-root",
        default=str(voc / "VOC2012"),
        help="VOC2012 folder holding JPEGImages, SegmentationObject, SegmentationClass, ImageSets",
    )
    parser.add_argument(
        "--split", default="trainval", help="ImageSets/Segmentation split (default trainval)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="output json (default: voc/annotations/voc2012_SPLIT_instances.json under "
        "$DETECTRON2_DATASETS, where uis_voc2012 is registered for trainval)",
    )
    args = parser.parse_args(argv)
    output = args.output or voc / "annotations" / f"voc2012_{args.split}_instances.json"
    coco = convert_voc(args.voc_root, args.split)
    atomic_write_json(output, coco)
    print(f"wrote {output}: {len(coco['images'])} images, {len(coco['annotations'])} instances")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
