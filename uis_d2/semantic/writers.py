"""Folders of semantic pseudo-label maps painted from instance files (the work of
tools/make_semantic_pseudo_labels.py).

- ``write_initial_maps`` (COMUS): a clustered pseudo-label json (tools/cluster_pseudo_classes.py:
  ``category_id`` = pseudo-class id, ``categories`` listing all K) becomes one map per image
  that kept a mask (``paint_initial``); the images the clustering filter dropped are not in its
  ``images`` or keep no annotation, and get no map, so training leaves them out.
- ``write_confident_maps`` (MaskDistill): a COCO results json of a class-aware instance model
  (image_id, category_id, segmentation, score) on a registered dataset becomes one map per
  image of that dataset (``paint_confident``); an image without any prediction gets an
  all-background map.

Class k of the K pseudo-classes is the k-th category id in ascending order of the file's (or
``categories_json``'s) ``categories``, so its painted value is 1 + k whatever the ids' base; a
results json without ``categories_json`` names the classes 0..K-1 directly, as the models'
``pred_classes``. Existing maps are kept unless ``overwrite`` (an interrupted run resumes); a
summary goes to ``labels_info.json`` last, which marks the folder complete.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog

from uis_d2.data.image_folder import ensure_dataset
from uis_d2.data.image_io import image_size
from uis_d2.data.pseudo_labels import annotation_score, iter_json, read_info
from uis_d2.data.semantic import decode_segmentation, semantic_classes
from uis_d2.semantic.painting import CONFIDENT_SCORE, paint_confident, paint_initial
from uis_d2.semantic.pseudo_maps import (
    LABELS_INFO_FILE,
    dataset_image_root,
    label_map_path,
    relative_image_name,
    write_label_map,
)
from uis_d2.utils.files import atomic_write_json

logger = logging.getLogger(__name__)


def class_indices(categories: Sequence[Mapping[str, Any]], source: str) -> dict[int, int]:
    """Category id -> pseudo-class 0..K-1, by ascending id."""
    _, class_of = semantic_classes(categories, source)
    return {category_id: index - 1 for category_id, index in class_of.items()}


def _decoded(
    annotations: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    class_of: Callable[[Any], int],
    where: str,
) -> tuple[np.ndarray, list[float], list[int]]:
    """(N, H, W) masks, scores and classes of one image's annotations."""
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for i, annotation in enumerate(annotations):
        try:
            masks[i] = decode_segmentation(annotation["segmentation"], height, width)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{where}: annotation {annotation.get('id')}: {err}") from err
    scores = [annotation_score(a) for a in annotations]
    return masks, scores, [class_of(a.get("category_id")) for a in annotations]


def _write_maps(
    images: Iterable[tuple[str, int, int, list[dict[str, Any]]]],
    output_dir: Path,
    paint: Callable[[np.ndarray, list[float], list[int]], np.ndarray],
    class_of: Callable[[Any], int],
    overwrite: bool,
) -> dict[str, int]:
    """Paint and write (name, height, width, annotations) per image; returns the counts."""
    counts = {"written": 0, "kept_existing": 0}
    for name, height, width, image_annotations in images:
        path = label_map_path(output_dir, name)
        if path.is_file() and not overwrite:
            counts["kept_existing"] += 1
            continue
        masks, scores, classes = _decoded(image_annotations, height, width, class_of, name)
        write_label_map(path, paint(masks, scores, classes))
        counts["written"] += 1
    return counts


def _grouped(annotations: Iterable[Mapping[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for annotation in annotations:
        by_image[annotation.get("image_id")].append(dict(annotation))
    return by_image


def _image_size(record: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of a dataset record, from its image's header when it records none."""
    if "height" in record and "width" in record:
        return int(record["height"]), int(record["width"])
    return image_size(record["file_name"])


def _finish(output_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    atomic_write_json(output_dir / LABELS_INFO_FILE, summary, indent=2)
    logger.info(f"Semantic pseudo-labels in {output_dir}: {summary}")
    return summary


def write_initial_maps(
    clustered_json: str | Path, output_dir: str | Path, *, overwrite: bool = False
) -> dict[str, Any]:
    """COMUS's initial maps of a clustered pseudo-label json (module docstring); returns the
    summary written to ``labels_info.json``."""
    clustered_json, output_dir = Path(clustered_json), Path(output_dir)
    categories = next(iter_json(clustered_json, "categories"), None) or []
    indices = class_indices(categories, str(clustered_json))

    def class_of(category_id: Any) -> int:
        if category_id not in indices:
            raise ValueError(
                f"category_id {category_id!r} is not in the file's categories "
                f"{sorted(indices)}: is {clustered_json} a clustered pseudo-label json?"
            )
        return indices[category_id]

    by_image = _grouped(iter_json(clustered_json, "annotations.item"))
    listed = list(iter_json(clustered_json, "images.item"))
    with_masks = [
        (image["file_name"], int(image["height"]), int(image["width"]), by_image[image["id"]])
        for image in listed
        if by_image.get(image["id"])
    ]
    counts = _write_maps(
        with_masks, output_dir, lambda m, s, c: paint_initial(m, c, s), class_of, overwrite
    )
    return _finish(
        output_dir,
        {
            "mode": "comus_initial",
            "source": str(clustered_json),
            "image_root": read_info(clustered_json).get("image_root"),
            "num_classes": len(indices),
            "images": len(listed),
            "without_map": len(listed) - len(with_masks),
            **counts,
        },
    )


def write_confident_maps(
    predictions_json: str | Path,
    dataset_name: str,
    output_dir: str | Path,
    *,
    categories_json: str | Path | None = None,
    score_thresh: float = CONFIDENT_SCORE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """MaskDistill's confident maps of a COCO results json on ``dataset_name`` (a registered
    dataset or ``folder:PATH``; module docstring); returns the summary."""
    predictions_json, output_dir = Path(predictions_json), Path(output_dir)
    if categories_json is None:
        num_classes = None

        def class_of(category_id: Any) -> int:
            return int(category_id)

    else:
        categories = next(iter_json(categories_json, "categories"), None) or []
        indices = class_indices(categories, str(categories_json))
        num_classes = len(indices)

        def class_of(category_id: Any) -> int:
            if category_id not in indices:
                raise ValueError(f"category_id {category_id!r} is not in {categories_json}")
            return indices[category_id]

    ensure_dataset(dataset_name)
    image_root = dataset_image_root(dataset_name)
    by_image = _grouped(iter_json(predictions_json, "item"))
    records = DatasetCatalog.get(dataset_name)
    unknown = set(by_image) - {record["image_id"] for record in records}
    if unknown:
        raise ValueError(
            f"{predictions_json}: image ids {sorted(unknown)[:5]} are not in dataset "
            f"{dataset_name!r} (predictions of another dataset?)"
        )
    images = [
        (
            relative_image_name(record["file_name"], image_root),
            *_image_size(record),
            by_image.get(record["image_id"], []),
        )
        for record in records
    ]

    def paint(masks: np.ndarray, scores: list[float], classes: list[int]) -> np.ndarray:
        return paint_confident(masks, scores, classes, score_thresh)

    counts = _write_maps(images, output_dir, paint, class_of, overwrite)
    return _finish(
        output_dir,
        {
            "mode": "maskdistill_confident",
            "source": str(predictions_json),
            "dataset": dataset_name,
            "image_root": image_root,
            "score_thresh": score_thresh,
            "num_classes": num_classes,
            "images": len(images),
            "without_prediction": sum(1 for image in images if not image[3]),
            **counts,
        },
    )
