"""Registered semantic splits, lazy like ``datasets.py``: nothing is read until a split loads.

Each split's metadata names its classes (``stuff_classes``, background first), the ignore label
(255) and ``evaluator_type == "unsupervised_sem_seg"`` (``UnsupervisedSemSegEvaluator``).
COCO-format sources (COCO val2017, the synthetic data) reuse the instance splits' files and
paint their maps on demand (``uis_d2.data.semantic``); VOC reads its label PNGs. The class
lists are fixed here so that registration touches no file; loading checks them against the
json. File layout: datasets/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from detectron2.data.catalog import Metadata
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from uis_d2.data import synthetic
from uis_d2.data.datasets import (
    BUILTIN_SPLITS,
    RootRelativeMetadata,
    SplitFiles,
    _existing_files,
    _resolve,
    replace_registration,
)
from uis_d2.data.semantic import (
    BACKGROUND_NAME,
    IGNORE_LABEL,
    load_coco_semantic,
    load_label_folder,
)

SEMANTIC_EVALUATOR_TYPE = "unsupervised_sem_seg"
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_SEMANTIC_CLASSES = (BACKGROUND_NAME, *VOC_CLASSES)  # 21, VOC's label indices
# COCO's 80 thing categories in ascending id order (detectron2's table): 81 with background.
COCO_SEMANTIC_CLASSES = (BACKGROUND_NAME, *(c["name"] for c in COCO_CATEGORIES if c["isthing"]))
SYNTHETIC_SEMANTIC_CLASSES = (
    BACKGROUND_NAME,
    *(c.name for c in sorted(synthetic.CATEGORIES, key=lambda c: c.id)),
)


@dataclass(frozen=True)
class LabelFolderFiles:
    """A folder of label PNGs, optionally its images and a list of names (paths may be
    relative to the dataset root)."""

    label_root: str
    image_root: str | None = None
    split_file: str | None = None


COCO_SEMANTIC_SPLITS: dict[str, tuple[SplitFiles, tuple[str, ...]]] = {
    "uis_coco_val2017_sem": (BUILTIN_SPLITS["uis_coco_val2017"][0], COCO_SEMANTIC_CLASSES),
    "uis_coco_train2017_sem": (BUILTIN_SPLITS["uis_coco_train2017"][0], COCO_SEMANTIC_CLASSES),
    "synthetic_train_sem": (BUILTIN_SPLITS["synthetic_train"][0], SYNTHETIC_SEMANTIC_CLASSES),
    "synthetic_val_sem": (BUILTIN_SPLITS["synthetic_val"][0], SYNTHETIC_SEMANTIC_CLASSES),
}
VOC_SEMANTIC_SPLITS: dict[str, LabelFolderFiles] = {
    "uis_voc2012_val_sem": LabelFolderFiles(
        "voc/VOC2012/SegmentationClass",
        "voc/VOC2012/JPEGImages",
        "voc/VOC2012/ImageSets/Segmentation/val.txt",
    ),
    "uis_voc2012_train_sem": LabelFolderFiles(
        "voc/VOC2012/SegmentationClass",
        "voc/VOC2012/JPEGImages",
        "voc/VOC2012/ImageSets/Segmentation/train.txt",
    ),
    "uis_voc2012_trainaug_sem": LabelFolderFiles(
        "voc/VOC2012/SegmentationClassAug",
        "voc/VOC2012/JPEGImages",
        "voc/VOC2012/ImageSets/Segmentation/trainaug.txt",
    ),
}


class LabelFolderMetadata(Metadata):
    """Metadata of a label-folder split whose paths follow the dataset root at access time
    (as ``RootRelativeMetadata``). ``image_root`` is the label folder when there are no images,
    matching the records' ``file_name``."""

    @property
    def sem_seg_root(self) -> str:
        return str(_resolve(self.label_files.label_root))

    @property
    def image_root(self) -> str:
        images = self.label_files.image_root
        return self.sem_seg_root if images is None else str(_resolve(images))

    @property
    def split_file(self) -> str | None:
        split = self.label_files.split_file
        return None if split is None else str(_resolve(split))

    def as_dict(self) -> dict[str, Any]:
        paths = {"sem_seg_root": self.sem_seg_root, "image_root": self.image_root}
        return {**super().as_dict(), **paths, "split_file": self.split_file}


def _semantic_meta(classes: Sequence[str]) -> dict[str, Any]:
    return {
        "stuff_classes": list(classes),
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": SEMANTIC_EVALUATOR_TYPE,
    }


def register_semantic_coco(
    name: str, json_file: str, image_root: str, classes: Sequence[str]
) -> None:
    """Register a COCO-format instance json as a semantic split of ``classes`` (background
    first, then the json's categories by ascending id; checked when it loads)."""
    parts = (SplitFiles(json_file, image_root),)

    def load() -> list[dict[str, Any]]:
        return load_coco_semantic(*_existing_files(json_file, image_root), classes)

    metadata = RootRelativeMetadata(name=name, split_parts=parts, **_semantic_meta(classes))
    replace_registration(name, load, metadata)


def register_semantic_labels(name: str, files: LabelFolderFiles, classes: Sequence[str]) -> None:
    """Register a folder of label PNGs (values = class indices, 255 ignored) as a split."""

    def load() -> list[dict[str, Any]]:
        return load_label_folder(
            _resolve(files.label_root),
            None if files.image_root is None else _resolve(files.image_root),
            None if files.split_file is None else _resolve(files.split_file),
        )

    metadata = LabelFolderMetadata(name=name, label_files=files, **_semantic_meta(classes))
    replace_registration(name, load, metadata)


def register_all_semantic() -> None:
    """Register every built-in semantic split; called at import and safe to call again."""
    for name, (files, classes) in COCO_SEMANTIC_SPLITS.items():
        register_semantic_coco(name, files.json_file, files.image_root, classes)
    for name, files in VOC_SEMANTIC_SPLITS.items():
        register_semantic_labels(name, files, VOC_SEMANTIC_CLASSES)


register_all_semantic()
