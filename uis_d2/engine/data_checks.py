"""Validate every annotation file a run will read, before the run starts.

A malformed pseudo-label json otherwise fails inside a data-loader worker when the first bad
annotation is drawn, possibly hours into training, with an error that does not name the file;
a malformed ground truth fails only at the final evaluation. Checking the files once, in the
launching process, turns both into a start-up error naming file, annotation id and field.
A training file without masks (a box-only detection json) gets one line saying so first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from uis_d2.data.pseudo_labels import iter_json
from uis_d2.data.validation import AnnotationError, ValidationReport, check_coco_json

logger = logging.getLogger(__name__)


def dataset_files(dataset_name: str) -> list[tuple[str, str | None]]:
    """(json file, image folder) pairs behind a registered dataset; [] when it has no json.

    Concatenated splits list every part (``json_files``); plain detectron2 registrations have
    a single ``json_file``.
    """
    metadata = MetadataCatalog.get(dataset_name)
    json_files = getattr(metadata, "json_files", None)
    if json_files is None:
        json_file = getattr(metadata, "json_file", None)
        json_files = [json_file] if json_file else []
        image_roots = [getattr(metadata, "image_root", None)]
    else:
        image_roots = getattr(metadata, "image_roots", [None] * len(json_files))
    return [(str(j), None if r is None else str(r)) for j, r in zip(json_files, image_roots)]


def _files_to_check(
    train: Iterable[str], test: Iterable[str]
) -> Iterator[tuple[str, str, str | None, str]]:
    """(dataset, json, image folder, kind), each json once, training use first."""
    seen: set[str] = set()
    # Training sets may be pseudo-labels or ground truth ("auto": scores decide); test sets are
    # ground truth, which must carry categories.
    for names, kind in ((train, "auto"), (test, "gt")):
        for name in names:
            for json_file, image_root in dataset_files(name):
                if json_file not in seen:
                    seen.add(json_file)
                    yield name, json_file, image_root, kind


def validate_datasets(cfg: CfgNode, train: bool = True) -> None:
    """``check_coco_json`` on the jsons of DATASETS.TRAIN (when ``train``) and DATASETS.TEST.

    Raises the first AnnotationError (its message lists every problem of that file with
    annotation id and field) or FileNotFoundError. Image files are checked to exist too.
    Datasets must be registered first (INPUT.PSEUDO_MASKS.REGISTER included).
    """
    train_names = cfg.DATASETS.TRAIN if train else ()
    for name, json_file, image_root, kind in _files_to_check(train_names, cfg.DATASETS.TEST):
        if kind == "auto":  # used for training
            require_masks(name, json_file)
        report = check_coco_json(json_file, images_dir=image_root, kind=kind)
        logger.info(f"dataset {name}: {report.summary()}")


def require_masks(dataset_name: str, json_file: str) -> None:
    """Raise an AnnotationError naming the file when its first annotation has no mask.

    Every model here (SOLOv2, Mask R-CNN, Cascade Mask R-CNN) trains on masks; a box-only file
    would otherwise fail validation with one line per annotation that does not say why. Only
    the first annotation is read; validation finds any later one without a mask.
    """
    try:
        first = next(iter_json(json_file, "annotations.item"), None)
    except ValueError:  # not valid json: validation reports it
        return
    if isinstance(first, dict) and not first.get("segmentation"):
        report = ValidationReport(path=json_file, kind="pseudo")
        report.add(
            f"annotation id={first.get('id')!r} has no 'segmentation': training set "
            f"{dataset_name!r} needs an instance mask (RLE or polygons) per annotation, and a "
            "box-only detection file has none"
        )
        raise AnnotationError(report)
