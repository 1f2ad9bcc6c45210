"""Class-agnostic detectron2 dataset registration for the benchmarks the papers use.

Registration is lazy: it only records where each split lives relative to the dataset root
(``$DETECTRON2_DATASETS``, default ``./datasets``). The root is resolved every time a split is
loaded or its ``json_file`` / ``image_root`` metadata is read, so setting the variable after
``import uis_d2`` still takes effect. Every split loads as one ``object`` class (category 0),
because unsupervised methods are evaluated class-agnostically; the original categories stay
in the json named by the metadata for per-category analyses. File layout: datasets/README.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json

from uis_d2.data import pseudo_labels
from uis_d2.data.pseudo_labels import THING_CLASSES, CompactDataset

CLASS_AGNOSTIC_META = {"evaluator_type": "class_agnostic", "thing_classes": THING_CLASSES}


@dataclass(frozen=True)
class SplitFiles:
    """One COCO-format json and the folder its ``file_name`` entries are relative to."""

    json_file: str
    image_root: str


# name -> parts (paths relative to the dataset root); several parts are concatenated.
BUILTIN_SPLITS: dict[str, tuple[SplitFiles, ...]] = {
    "uis_coco_train2017": (
        SplitFiles("coco/annotations/instances_train2017.json", "coco/train2017"),
    ),
    "uis_coco_unlabeled2017": (
        SplitFiles("coco/annotations/image_info_unlabeled2017.json", "coco/unlabeled2017"),
    ),
    "uis_coco_train2017_unlabeled2017": (
        SplitFiles("coco/annotations/instances_train2017.json", "coco/train2017"),
        SplitFiles("coco/annotations/image_info_unlabeled2017.json", "coco/unlabeled2017"),
    ),
    "uis_coco_val2017": (SplitFiles("coco/annotations/instances_val2017.json", "coco/val2017"),),
    "uis_coco20k": (SplitFiles("coco/annotations/coco20k_train2014.json", "coco/train2014"),),
    "uis_voc2012": (
        SplitFiles("voc/annotations/voc2012_trainval_instances.json", "voc/VOC2012/JPEGImages"),
    ),
    "uis_uvo_val": (
        SplitFiles("uvo/annotations/UVO_frame_val.json", "uvo/uvo_videos_sparse_frames"),
    ),
    "synthetic_train": (SplitFiles("synthetic/annotations/train.json", "synthetic/train"),),
    "synthetic_val": (SplitFiles("synthetic/annotations/val.json", "synthetic/val"),),
}
# Pseudo labels over the synthetic training images; extra annotation keys are kept.
SYNTHETIC_PSEUDO_SPLIT = (
    "synthetic_train_pseudo",
    SplitFiles("synthetic/pseudo/train.json", "synthetic/train"),
)


def datasets_root() -> Path:
    """The dataset root, read from ``$DETECTRON2_DATASETS`` at call time (default ./datasets)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _resolve(path: str | Path) -> Path:
    """Relative paths are taken under the dataset root; absolute ones are used as given."""
    path = Path(path)
    return path if path.is_absolute() else datasets_root() / path


class RootRelativeMetadata(Metadata):
    """Metadata whose file paths follow the dataset root at access time.

    detectron2 forbids changing a metadata value once set, so storing resolved paths at import
    would pin the root of that moment; properties compute them from ``split_parts`` instead.
    ``json_file`` / ``image_root`` name the first part (the only one except for concatenations).
    """

    @property
    def json_files(self) -> list[str]:
        return [str(_resolve(part.json_file)) for part in self.split_parts]

    @property
    def image_roots(self) -> list[str]:
        return [str(_resolve(part.image_root)) for part in self.split_parts]

    @property
    def json_file(self) -> str:
        return self.json_files[0]

    @property
    def image_root(self) -> str:
        return self.image_roots[0]

    def as_dict(self) -> dict[str, Any]:
        paths = {"json_file": self.json_file, "image_root": self.image_root}
        return {**super().as_dict(), **paths, "json_files": self.json_files}


def _existing_files(json_file: str | Path, image_root: str | Path) -> tuple[Path, Path]:
    """Root-resolved paths of a split, or an error naming the missing one. Relative paths are
    resolved under the dataset root now, so the root is read at load time."""
    json_path, image_dir = _resolve(json_file), _resolve(image_root)
    if not json_path.is_file():
        raise FileNotFoundError(
            f"annotation file not found: {json_path} (dataset root {datasets_root()}, "
            "set by $DETECTRON2_DATASETS; see datasets/README.md for the expected layout)"
        )
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (for {json_path})")
    return json_path, image_dir


def load_class_agnostic(json_file: str | Path, image_root: str | Path) -> list[dict[str, Any]]:
    """Load a COCO json (with or without annotations) as detectron2 dicts of one class."""
    json_path, image_dir = _existing_files(json_file, image_root)
    dicts = load_coco_json(str(json_path), str(image_dir))
    for record in dicts:
        for annotation in record["annotations"]:
            annotation["category_id"] = 0
    return dicts


def load_pseudo_labels(
    json_file: str | Path, image_root: str | Path, class_aware: bool = False
) -> CompactDataset:
    """Load a pseudo-label file (data/pseudo_labels.py) as a compact, serialized dataset of
    what the mapper and the losses read (masks, boxes, scores, embedding rows): class-agnostic,
    or with ``class_aware`` the file's categories (pseudo-classes) as classes 0..K-1."""
    json_path, image_dir = _existing_files(json_file, image_root)
    classes = None
    if class_aware:
        classes = {cid: i for i, cid in enumerate(pseudo_labels.pseudo_classes(json_path))}
    return pseudo_labels.load_compact_dataset(json_path, image_dir, classes)


def replace_registration(name: str, loader: Callable[[], Any], metadata: Metadata) -> None:
    """(Re-)register ``name``: replacing any previous entry keeps registration idempotent."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    MetadataCatalog.pop(name, None)
    DatasetCatalog.register(name, loader)
    MetadataCatalog[name] = metadata


def _register(
    name: str, parts: Sequence[SplitFiles], loader: Callable[[], list[dict[str, Any]]]
) -> None:
    metadata = RootRelativeMetadata(name=name, split_parts=tuple(parts), **CLASS_AGNOSTIC_META)
    replace_registration(name, loader, metadata)


def _concatenated_loader(
    parts: Sequence[SplitFiles], load_part: Callable[..., list[dict[str, Any]]]
) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        dicts: list[dict[str, Any]] = []
        for part in parts:
            dicts += load_part(part.json_file, part.image_root)
        return dicts

    return load


def register_class_agnostic(name: str, json_file: str, image_root: str) -> None:
    """Register any COCO-format split as one ``object`` class (paths may be root-relative)."""
    parts = (SplitFiles(json_file, image_root),)
    _register(name, parts, _concatenated_loader(parts, load_class_agnostic))


def register_pseudo_labels(
    name: str, json_file: str, image_root: str, class_aware: bool = False
) -> None:
    """Register a pseudo-label json (data/pseudo_labels.py), loaded by ``load_pseudo_labels``.
    ``class_aware`` (pseudo-classes, e.g. tools/cluster_pseudo_classes.py's output) reads the
    file's categories now, to name the classes in the metadata."""
    parts = (SplitFiles(json_file, image_root),)
    loader = lambda: load_pseudo_labels(json_file, image_root, class_aware)  # noqa: E731
    if not class_aware:
        _register(name, parts, loader)
        return
    json_path, _ = _existing_files(json_file, image_root)
    names = list(pseudo_labels.pseudo_classes(json_path).values())
    metadata = RootRelativeMetadata(
        name=name, split_parts=parts, evaluator_type="class_agnostic", thing_classes=names
    )
    replace_registration(name, loader, metadata)


def register_all() -> None:
    """Register every built-in split; called at import and safe to call again."""
    for name, parts in BUILTIN_SPLITS.items():
        _register(name, parts, _concatenated_loader(parts, load_class_agnostic))
    pseudo_name, pseudo_files = SYNTHETIC_PSEUDO_SPLIT
    register_pseudo_labels(pseudo_name, pseudo_files.json_file, pseudo_files.image_root)


register_all()
