"""Semantic maps, in one place: painted from COCO-format instances, read from label PNGs.

A semantic map is an (H, W) uint8 array: 0 = background, 1..C = the classes, 255 = ignore.

- **COCO-format jsons** (``load_coco_semantic``): class c is the json's c-th category in
  ascending id order, so any instance json (COCO's 80 categories, VOC's 20, the synthetic
  data's 6) gives C + 1 classes with the background. Maps are not written to disk: records
  carry ``sem_seg_annotations`` (masks with their class index) and ``semantic_map`` paints them
  when asked. Crowd regions are painted 255 first; visible masks go on top in decreasing area,
  so where two instances overlap the smaller one wins (a small object overlapping a large one
  is usually in front of it, and painting it first would erase it); equal areas keep json
  order, later on top. The synthetic data's visible masks never overlap.
- **Label PNGs** (``load_label_folder``): VOC's ``SegmentationClass`` (palette indices are the
  classes, 255 the void border kept as ignore) or any folder of gray/16-bit label PNGs.
  Records carry detectron2's ``sem_seg_file_name``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from uis_d2.utils.files import read_json
from uis_d2.utils.masks import to_compressed_rle

BACKGROUND = 0
IGNORE_LABEL = 255
BACKGROUND_NAME = "background"
LABEL_PNG_MODES = ("P", "L", "I;16", "I")  # integer images: palette, 8-bit, 16-bit, 32-bit


def read_label_png(path: str | Path) -> np.ndarray:
    """The integer labels of a PNG (palette indices, gray values or 16/32-bit values), as
    stored: a colour PNG is refused rather than converted, since its values are no labels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label PNG not found: {path}")
    with Image.open(path) as image:
        if image.mode not in LABEL_PNG_MODES:
            raise ValueError(
                f"{path}: expected a label PNG of mode {'/'.join(LABEL_PNG_MODES)}, "
                f"got mode {image.mode}"
            )
        return np.array(image)


def semantic_classes(
    categories: Sequence[Mapping[str, Any]], source: str = "categories"
) -> tuple[list[str], dict[int, int]]:
    """Class names (background first) and json category id -> class index (1..C, ascending id)."""
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: duplicate category ids {sorted(ids)}")
    if len(ids) > IGNORE_LABEL - 1:
        raise ValueError(f"{source}: {len(ids)} categories do not fit uint8 maps with 255 = ignore")
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    names = [BACKGROUND_NAME, *(str(c["name"]) for c in ordered)]
    return names, {int(c["id"]): index for index, c in enumerate(ordered, start=1)}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """An (H, W) bool mask from any COCO segmentation; a mask of another size is an error."""
    rle = to_compressed_rle(segmentation, height, width)
    if tuple(rle["size"]) != (height, width):
        raise ValueError(f"a {rle['size']} mask in an image of size {[height, width]}")
    return mask_utils.decode(rle).astype(bool)


def paint_masks(
    masks: Sequence[np.ndarray],
    labels: Sequence[int],
    height: int,
    width: int,
    dtype: type = np.uint8,
) -> np.ndarray:
    """A background map with ``labels`` painted where their ``masks`` are, later on top
    (``dtype`` wider than uint8 for id maps of more than 255 ids)."""
    out = np.full((height, width), BACKGROUND, dtype=dtype)
    for mask, label in zip(masks, labels):
        out[mask] = label
    return out


def semantic_map_from_annotations(
    annotations: Sequence[Mapping[str, Any]], height: int, width: int
) -> np.ndarray:
    """Paint ``annotations`` (``category_id`` = class index, ``iscrowd``, ``segmentation``):
    crowd regions 255 first, then visible masks by decreasing area (the smaller on top)."""
    masks = [decode_segmentation(a["segmentation"], height, width) for a in annotations]
    crowd = [bool(a.get("iscrowd", 0)) for a in annotations]
    # Stable sort: crowd first, then larger before smaller, json order among equals.
    order = sorted(range(len(masks)), key=lambda i: (not crowd[i], -int(masks[i].sum())))
    labels = [IGNORE_LABEL if crowd[i] else int(annotations[i]["category_id"]) for i in order]
    return paint_masks([masks[i] for i in order], labels, height, width)


def load_coco_semantic(
    json_file: str | Path, image_root: str | Path, classes: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Records of a COCO-format instance json whose maps ``semantic_map`` paints on demand.

    Each record: ``file_name``, ``image_id``, ``height``, ``width`` and ``sem_seg_annotations``
    (``category_id`` already the class index 1..C, ``iscrowd``, ``segmentation``). ``classes``
    (background first), when given, must equal the json's: a split registered for one dataset
    then never silently evaluates another's json.
    """
    coco = read_json(json_file, "annotation file")
    names, class_of = semantic_classes(coco.get("categories") or [], str(json_file))
    if classes is not None and list(classes) != names:
        raise ValueError(
            f"{json_file}: categories {names[1:]} differ from the split's classes "
            f"{list(classes)[1:]}"
        )
    records: dict[Any, dict[str, Any]] = {}
    for image in coco.get("images", []):
        records[image["id"]] = {
            "file_name": str(Path(image_root) / image["file_name"]),
            "image_id": image["id"],
            "height": int(image["height"]),
            "width": int(image["width"]),
            "sem_seg_annotations": [],
        }
    for ann in coco.get("annotations", []):
        where = f"{json_file}: annotation {ann.get('id')}"
        if ann.get("image_id") not in records:
            raise ValueError(f"{where} has image_id {ann.get('image_id')!r}, not in 'images'")
        if ann.get("category_id") not in class_of:
            raise ValueError(
                f"{where} has category_id {ann.get('category_id')!r}, not in 'categories'"
            )
        if not ann.get("segmentation"):
            raise ValueError(f"{where} has no segmentation: semantic maps need masks")
        records[ann["image_id"]]["sem_seg_annotations"].append(
            {
                "category_id": class_of[ann["category_id"]],
                "iscrowd": int(ann.get("iscrowd", 0)),
                "segmentation": ann["segmentation"],
            }
        )
    return list(records.values())


def load_label_folder(
    label_root: str | Path,
    image_root: str | Path | None = None,
    split_file: str | Path | None = None,
    image_ext: str = ".jpg",
) -> list[dict[str, Any]]:
    """Records of a folder of label PNGs (``sem_seg_file_name``), one per name of
    ``split_file`` (VOC's ImageSets/Segmentation/*.txt) or per PNG of the folder.

    ``file_name`` is ``image_root/NAME{image_ext}``, or the label PNG itself without images
    (an evaluation needs no pixels); ``image_id`` is the 1-based position of the name, the
    numbering of ``datasets/prepare_voc.py``, so instance results on its json line up.
    """
    label_root = Path(label_root)
    if not label_root.is_dir():
        raise FileNotFoundError(f"label folder not found: {label_root}")
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"image folder not found: {image_root} (for {label_root})")
    if split_file is not None:
        split_file = Path(split_file)
        if not split_file.is_file():
            raise FileNotFoundError(f"split file not found: {split_file}")
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    else:
        names = sorted(path.stem for path in label_root.glob("*.png"))
    return [
        {
            "file_name": str(
                Path(image_root) / f"{name}{image_ext}"
                if image_root is not None
                else label_root / f"{name}.png"
            ),
            "image_id": image_id,
            "sem_seg_file_name": str(label_root / f"{name}.png"),
        }
        for image_id, name in enumerate(names, start=1)
    ]


def semantic_map(record: Mapping[str, Any]) -> np.ndarray:
    """The ground-truth map of a record of either loader: its label PNG, or its painted masks."""
    if "sem_seg_file_name" in record:
        return read_label_png(record["sem_seg_file_name"])
    try:
        return semantic_map_from_annotations(
            record["sem_seg_annotations"], record["height"], record["width"]
        )
    except KeyError as e:
        raise ValueError(
            f"{record.get('file_name')}: a semantic record needs 'sem_seg_file_name' or "
            f"'sem_seg_annotations' with 'height' and 'width' (missing {e})"
        ) from e


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (H, W), sampling at pixel centres (as PIL's
    NEAREST), so no label is ever blended into another."""
    if labels.shape == tuple(size):
        return labels
    height, width = labels.shape
    rows = ((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64)
    return labels[np.minimum(rows, height - 1)[:, None], np.minimum(cols, width - 1)[None, :]]


__all__ = [
    "BACKGROUND",
    "BACKGROUND_NAME",
    "IGNORE_LABEL",
    "decode_segmentation",
    "load_coco_semantic",
    "load_label_folder",
    "paint_masks",
    "read_label_png",
    "resize_labels",
    "semantic_classes",
    "semantic_map",
    "semantic_map_from_annotations",
]
