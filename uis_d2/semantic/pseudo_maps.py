"""Semantic pseudo-label maps on disk, and their registration as a detectron2 training set.

A map is a single-channel uint8 PNG at its image's size: 0 = background, 1..K = pseudo-classes,
255 = ignore. A folder of maps mirrors its images: the map of the image recorded as ``a/b.jpg``
relative to the dataset's image root is ``LABEL_DIR/a/b.png`` (an image outside the root uses
its base name; the layout of ``ExternalMaps``' saliency folders). An image without a map is not
trained on: COMUS excludes the images its clustering filter drops rather than teaching them as
background.

``register_semantic_pseudo_labels`` pairs "the images of a registered dataset (or a
``folder:PATH`` spec) + a map folder" as a dataset of records with detectron2's
``sem_seg_file_name``, which detectron2's ``DatasetMapper`` loads and augments with the image.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from PIL import Image

from uis_d2.data.datasets import replace_registration
from uis_d2.data.image_folder import ensure_dataset
from uis_d2.data.semantic import IGNORE_LABEL
from uis_d2.utils.files import atomic_write_bytes

logger = logging.getLogger(__name__)

LABEL_SUFFIX = ".png"
# Written last into a map folder by the tools that fill it: its presence marks the folder
# complete (counts and settings inside).
LABELS_INFO_FILE = "labels_info.json"


def relative_image_name(file_name: str, image_root: str | None) -> str:
    """``file_name`` relative to ``image_root`` (posix), or its base name when it lies outside
    the root or there is none; a relative name is taken as already relative to the root."""
    path = Path(file_name)
    if not path.is_absolute() and image_root is None:
        return path.as_posix()
    if image_root is not None:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(image_root))
        if not relative.startswith(os.pardir):
            return Path(relative).as_posix()
    return path.name


def label_map_path(label_dir: str | Path, relative_name: str) -> Path:
    """Where the map of the image ``relative_name`` (relative to its image root) lives."""
    relative = Path(relative_name)
    if relative.is_absolute():
        relative = Path(relative.name)
    return Path(label_dir) / relative.parent / (relative.stem + LABEL_SUFFIX)


def write_label_map(path: str | Path, labels: np.ndarray) -> None:
    """Write an (H, W) uint8 map as a grey PNG, atomically (a resumed run skips finished maps,
    so a half-written one must never appear)."""
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"{path}: a label map is (H, W) uint8, got {labels.dtype} {labels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(labels, mode="L").save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def dataset_image_root(dataset_name: str) -> str | None:
    """The folder a registered dataset's ``file_name`` entries are relative to, if it says."""
    root = MetadataCatalog.get(dataset_name).get("image_root", None)
    return None if root is None else str(root)


def load_semantic_pseudo_labels(images: str, label_dir: str | Path) -> list[dict[str, Any]]:
    """Records (file_name, image_id, height, width, sem_seg_file_name) of the images of
    dataset ``images`` that have a map in ``label_dir``; the rest are counted and left out."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise FileNotFoundError(f"label map folder not found: {label_dir}")
    image_root = dataset_image_root(images)
    records, missing = [], 0
    for record in DatasetCatalog.get(images):
        path = label_map_path(label_dir, relative_image_name(record["file_name"], image_root))
        if not path.is_file():
            missing += 1
            continue
        kept = {k: record[k] for k in ("file_name", "image_id", "height", "width") if k in record}
        records.append({**kept, "sem_seg_file_name": str(path)})
    if not records:
        raise FileNotFoundError(
            f"no label map in {label_dir} for any image of {images!r} (expected e.g. "
            f"{label_map_path(label_dir, 'IMAGE_NAME')} for IMAGE_NAME.jpg under {image_root})"
        )
    if missing:
        logger.info(
            f"{missing} of {missing + len(records)} images of {images!r} have no map in "
            f"{label_dir}: left out of training"
        )
    return records


def register_semantic_pseudo_labels(
    name: str, images: str, label_dir: str | Path, bad_image_policy: str = "skip"
) -> str:
    """Register dataset ``name``: the images of ``images`` (a registered name or a
    ``folder:PATH`` spec, registered here with ``bad_image_policy``) with their maps in
    ``label_dir`` (idempotent; nothing is read until it loads)."""
    ensure_dataset(images, bad_image_policy)
    label_dir = os.path.abspath(os.path.expanduser(str(label_dir)))
    metadata = Metadata(
        name=name, label_dir=label_dir, source_dataset=images, ignore_label=IGNORE_LABEL
    )
    replace_registration(name, lambda: load_semantic_pseudo_labels(images, label_dir), metadata)
    return name
