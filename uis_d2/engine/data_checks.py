"""Validate every annotation file a run will read, before the run starts.

A malformed pseudo-label json otherwise fails inside a data-loader worker when the first bad
annotation is drawn, possibly hours into training, with an error that does not name the file;
a malformed ground truth fails only at the final evaluation. Checking the files once, in the
launching process, turns both into a start-up error naming file, annotation id and field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from uis_d2.data.validation import check_coco_json

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
        report = check_coco_json(json_file, images_dir=image_root, kind=kind)
        logger.info(f"dataset {name}: {report.summary()}")
