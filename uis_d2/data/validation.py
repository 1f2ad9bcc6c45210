"""Validation of ground-truth and pseudo-label COCO json files before anything trains on them.

A malformed annotation file otherwise surfaces hours into training as a shape error inside a
data-loader worker, or never (boxes silently in the wrong convention). This pass collects every
problem (up to a cap, all of them counted) and names the file, the annotation or image id and the
field of each.

Cost: everything is O(file size) with cheap per-annotation checks. Masks are never decoded to
pixels: compressed RLE strings are parsed to their run lengths by vectorised numpy passes over
all annotations at once (``rle_string_totals``), which proves them decodable (valid characters,
no dangling continuation, non-negative runs summing exactly to the ``size`` field's h*w);
pycocotools' ``toBbox`` then yields the mask boxes in C, but only for RLEs that passed, because
its decoder does not bounds-check corrupt counts. Uncompressed (list) counts are checked the same
way (non-negative ints summing to h*w). The garbage collector is paused while checking: the
many small json objects hold no reference cycles, and its repeated full scans of them otherwise
dominate the run time.

Memory: a file is read as a stream (annotations parsed one at a time and checked in batches of
``ANNOTATION_BATCH``), never held as json objects. Ids (of images, annotations, embedding rows,
annotated images) and image sizes are kept as runs of consecutive values (data/int_runs.py): a
handful of runs for the 1, 2, 3... numbering that writers use, 24 bytes per id at worst. What
grows with every file is 8 bytes per image (a hash of its file name, to find repeated names
without keeping them), so the pass is flat in the number of images within a few MB at COCO scale
(benchmarks/bench_pseudo_labels.py). Embedding rows (``emb_row``) are checked against the file's
embedding store (data/pseudo_labels.py): its existence, dtype, shape and finite values.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from uis_d2.data.int_runs import IntRuns
from uis_d2.data.pseudo_labels import (
    EMBEDDING_KEY,
    EMBEDDING_ROW_KEY,
    EMBEDDING_STORE_DTYPE,
    SCORE_KEY,
    embedding_store_path,
    iter_json,
    open_embedding_store,
    read_store_blocks,
)

KINDS = ("auto", "gt", "pseudo")
# Boxes may overshoot the image by float rounding (COCO has x + w = 640.01); masks are pixel-exact.
BOX_TOLERANCE_PX = 1.0
XYXY_HINT = "boxes look like x1y1x2y2 (COCO needs x,y,w,h; the known FreeSOLO export bug)"
# Longest run-length character group pycocotools can emit for a 32-bit count (7 x 5 bits).
_MAX_RLE_GROUP_CHARS = 7
# Characters parsed per vectorised pass (a few hundred MB of temporaries at most).
_CHUNK_CHARS = 4_000_000
# Annotations checked together: large enough for the vectorised passes, small enough that
# memory does not grow with the file.
ANNOTATION_BATCH = 500
# Store rows checked for finite values per read of the file (read, not mapped: see
# pseudo_labels.read_store_blocks).
_STORE_ROWS_PER_READ = 4_096
_MISSING = object()
# Image heights and widths are packed into one int64 (height << 32 | width) per run of images.
_MAX_SIDE = 2**31 - 1


class AnnotationError(ValueError):
    """A COCO json with problems; the message lists them (file, id, field)."""

    def __init__(self, report: ValidationReport):
        super().__init__(
            f"{report.path}: {report.num_problems} problem(s) in COCO json:\n{report.details()}"
        )
        self.report = report


@dataclass
class ValidationReport:
    """Counts of what was checked plus the problems found (``problems`` is capped)."""

    path: str
    kind: str = "gt"
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    num_images_without_annotations: int = 0
    embedding_dim: int | None = None
    problems: list[str] = field(default_factory=list)
    num_problems: int = 0
    max_problems: int = 100

    @property
    def ok(self) -> bool:
        return self.num_problems == 0

    def add(self, problem: str) -> None:
        self.num_problems += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def raise_if_problems(self) -> None:
        if not self.ok:
            raise AnnotationError(self)

    def details(self) -> str:
        """One line per kept problem, plus how many more were counted."""
        lines = [f"  - {problem}" for problem in self.problems]
        if self.num_problems > len(self.problems):
            lines.append(f"  ... and {self.num_problems - len(self.problems)} more")
        return "\n".join(lines)

    def summary(self) -> str:
        width = f", embedding dim {self.embedding_dim}" if self.embedding_dim else ""
        return (
            f"{self.path} ({self.kind}): {self.num_images} images, {self.num_annotations} "
            f"annotations, {self.num_categories} categories, {self.num_images_without_annotations}"
            f" images without annotations{width}; {self.num_problems} problem(s)"
        )


def validate_coco_json(
    path: str | Path,
    images_dir: str | Path | None = None,
    kind: str = "auto",
    max_problems: int = 100,
    progress: bool = False,
) -> ValidationReport:
    """Check a COCO json file, streaming it, and report every problem (does not raise for
    content problems).

    ``kind``: "gt" requires categories, "pseudo" requires a score per annotation, "auto" picks
    "pseudo" when the annotations carry scores. ``images_dir``: also check the image files exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO json not found: {path}")
    report = ValidationReport(path=str(path), max_problems=max_problems)
    with open(path, "rb") as f:
        first = f.read(64).lstrip()[:1]
    if first != b"{":
        report.add("top level must be a json object" + (" (empty file)" if not first else ""))
        return report
    with _gc_paused():
        try:
            info = _first_value(path, "info")
            categories = _first_value(path, "categories")
            annotations = iter_json(path, "annotations.item")
            validate_coco_parts(
                report,
                lambda: iter_json(path, "images.item"),
                lambda: _first_value(path, "images"),
                categories,
                annotations,
                lambda: _first_value(path, "annotations"),
                images_dir,
                kind,
                embedding_store_path(path),
                progress,
                _described_width(info),
            )
        except ValueError as exc:  # malformed json, met wherever it is in the stream
            report.add(f"not valid json ({exc})")
    return report


def _described_width(info: Any) -> int | None:
    """The embedding width the file's writer recorded (``info.embedding_store.dim``)."""
    store = info.get("embedding_store") if isinstance(info, dict) else None
    return store.get("dim") if isinstance(store, dict) else None


def _first_value(path: Path, prefix: str) -> Any:
    """The value at a top-level key (``_MISSING`` when absent), parsed on its own."""
    return next(iter_json(path, prefix), _MISSING)


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_coco_json(
    path: str | Path, images_dir: str | Path | None = None, kind: str = "auto"
) -> ValidationReport:
    """``validate_coco_json`` that raises one AnnotationError listing all problems."""
    report = validate_coco_json(path, images_dir=images_dir, kind=kind)
    report.raise_if_problems()
    return report


def validate_coco_dict(
    data: Any,
    report: ValidationReport,
    images_dir: str | Path | None = None,
    kind: str = "auto",
    progress: bool = False,
    embedding_store: str | Path | None = None,
) -> ValidationReport:
    """Check an already-loaded COCO dict, adding problems and counts to ``report``."""
    if not isinstance(data, dict):
        report.add(f"top level must be a json object, got {type(data).__name__}")
        return report
    images, annotations = data.get("images", _MISSING), data.get("annotations", _MISSING)
    return validate_coco_parts(
        report,
        lambda: images if isinstance(images, list) else [],
        lambda: images,
        data.get("categories", _MISSING),
        annotations if isinstance(annotations, list) else [],
        lambda: annotations,
        images_dir,
        kind,
        embedding_store,
        progress,
    )


def validate_coco_parts(
    report: ValidationReport,
    images: Callable[[], Iterable[Any]],
    whole_images: Callable[[], Any],
    categories: Any,
    annotations: Iterable[Any],
    whole_annotations: Callable[[], Any],
    images_dir: str | Path | None,
    kind: str,
    embedding_store: str | Path | None,
    progress: bool = False,
    store_width: int | None = None,
) -> ValidationReport:
    """The checks of a file given as its parts: ``images()`` a fresh stream of the image items
    (read a second time only to name repeated file names), ``annotations`` a stream of items,
    ``categories`` whole (or ``_MISSING``). ``whole_images()`` / ``whole_annotations()`` give the
    top-level value itself, asked for only when its stream is empty, to tell a missing key or a
    non-list from an empty list."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    first_images, _, no_images = _opened_stream(images(), whole_images, "images", report)
    annotations, first, no_annotations = _opened_stream(
        annotations, whole_annotations, "annotations", report
    )
    if kind == "auto":
        kind = "pseudo" if isinstance(first, dict) and SCORE_KEY in first else "gt"
    report.kind = kind
    if categories is _MISSING and kind == "gt":
        report.add("missing top-level key 'categories' (required for ground truth)")
    category_ids = None if categories is _MISSING else _check_categories(categories, report)
    if no_images:
        report.add("'images' is empty")
    image_sizes = _check_images(first_images, images, images_dir, report)
    if no_annotations:
        report.add("'annotations' is empty")
    checker = _AnnotationChecker(
        image_sizes, category_ids, kind, report, embedding_store, store_width
    )
    checker.run(annotations, progress)
    return report


def _opened_stream(
    items: Iterable[Any], whole: Callable[[], Any], key: str, report: ValidationReport
) -> tuple[Iterator[Any], Any, bool]:
    """A top-level list's items as a stream, its first item, and whether it is an empty list;
    the whole value is asked for only when the stream is empty, to report a missing key or a
    non-list."""
    stream = iter(items)
    first = next(stream, _MISSING)
    if first is not _MISSING:
        return itertools.chain([first], stream), first, False
    value = whole()
    _required_list(value, key, report)
    return iter(()), _MISSING, value == []


def _required_list(value: Any, key: str, report: ValidationReport) -> None:
    if value is _MISSING or value is None:
        report.add(f"missing top-level key '{key}'")
    elif not isinstance(value, list):
        report.add(f"top-level '{key}' must be a list, got {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_unique_id(value: Any, seen: set, where: str, report: ValidationReport) -> bool:
    """Report an id that is not an int or repeats one in ``seen``; True when it is an int."""
    if not _is_int(value):
        report.add(f"{where}: field 'id' must be an int")
        return False
    if value in seen:
        report.add(f"{where}: field 'id' is duplicated")
    seen.add(value)
    return True


def _check_categories(categories: Any, report: ValidationReport) -> set[int]:
    if not isinstance(categories, list):
        report.add(f"top-level 'categories' must be a list, got {type(categories).__name__}")
        return set()
    report.num_categories = len(categories)
    ids: set[int] = set()
    for index, category in enumerate(categories):
        cat_id = category.get("id") if isinstance(category, dict) else None
        where = f"category #{index} (id={cat_id})"
        if not _check_unique_id(cat_id, ids, where, report):
            continue
        if not isinstance(category.get("name"), str):
            report.add(f"{where}: field 'name' must be a string")
    return ids


def _check_images(
    images: Iterable[Any],
    reread: Callable[[], Iterable[Any]],
    images_dir: str | Path | None,
    report: ValidationReport,
) -> IntRuns:
    """Returns the ids of images with a usable size, each run carrying its packed size
    (``_unpack_size``). ``reread()`` streams the images again, only to name repeated files."""
    if images_dir is not None and not Path(images_dir).is_dir():
        report.add(f"images_dir not found: {images_dir}")
        images_dir = None
    ids, sized = IntRuns(), IntRuns()
    name_hashes = array("q")  # hash() of each file name (its index), never the names
    for index, image in enumerate(images):
        report.num_images = index + 1
        image_id = image.get("id") if isinstance(image, dict) else None
        where = f"image #{index} (id={image_id})"
        if not _add_id(ids, image_id, index, where, report):
            name_hashes.append(0)  # keeps the hashes in step with the image indices
            continue
        height, width = image.get("height"), image.get("width")
        size_ok = True
        for name, value in (("height", height), ("width", width)):
            if not _is_int(value) or not 0 < value <= _MAX_SIDE:
                report.add(f"{where}: field '{name}' must be a positive int, got {value!r}")
                size_ok = False
        if size_ok:
            sized.add(image_id, height << 32 | width, index)
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            report.add(f"{where}: field 'file_name' must be a non-empty string")
            name_hashes.append(0)
            continue
        name_hashes.append(hash(file_name) or 1)  # 0 marks an image without a name
        if images_dir is not None and not os.path.isfile(os.path.join(images_dir, file_name)):
            report.add(f"{where}: field 'file_name': image file not found in {images_dir}")
    for repeat in ids.repeats():
        report.add(f"image #{repeat.position} (id={repeat.first}): field 'id' is duplicated")
    _check_repeated_names(name_hashes, reread, report)
    return sized


def _add_id(ids: IntRuns, value: Any, index: int, where: str, report: ValidationReport) -> bool:
    """Record an int id (repeats are found at the end); report a missing or unusable one."""
    if not _is_int(value):
        report.add(f"{where}: field 'id' must be an int")
        return False
    try:
        ids.add(value, position=index)
    except OverflowError:
        report.add(f"{where}: field 'id' {value} does not fit in 64 bits")
        return False
    return True


def _unpack_size(packed: int) -> tuple[int, int]:
    return packed >> 32, packed & 0xFFFFFFFF


def _check_repeated_names(
    name_hashes: array, reread: Callable[[], Iterable[Any]], report: ValidationReport
) -> None:
    """Names the images whose file name an earlier image has; the images are read again only
    when two name hashes are equal (a repeat, or a hash collision that the names then clear)."""
    hashes = np.frombuffer(name_hashes, dtype=np.int64) if name_hashes else np.zeros(0, np.int64)
    values, counts = np.unique(hashes[hashes != 0], return_counts=True)
    suspects = set(values[counts > 1].tolist())
    if not suspects:
        return
    owners: dict[str, Any] = {}
    for index, image in enumerate(reread()):
        if index >= len(hashes) or int(hashes[index]) not in suspects:
            continue
        file_name, image_id = image["file_name"], image.get("id")
        if file_name in owners:
            report.add(
                f"image #{index} (id={image_id}): field 'file_name' {file_name!r} repeats image "
                f"id={owners[file_name]}"
            )
        else:
            owners[file_name] = image_id


class _AnnotationChecker:
    """Per-annotation scalar checks in one loop; masks, boxes and embeddings checked in batches
    of ``ANNOTATION_BATCH`` annotations, ids and embedding rows once at the end."""

    def __init__(
        self,
        image_sizes: IntRuns,
        category_ids: set[int] | None,
        kind: str,
        report: ValidationReport,
        embedding_store: str | Path | None = None,
        store_width: int | None = None,
    ):
        self.image_sizes = image_sizes
        self.category_ids = category_ids
        self.kind = kind
        self.report = report
        self.embedding_store = embedding_store
        self.store_width = store_width
        self.annotated_images = IntRuns()
        self._last_image: tuple[Any, tuple[int, int] | None] = (None, None)
        # Collected for the batch checks: annotation label, image size, and the value.
        self.rle_strings: list[tuple[str, tuple[int, int], str]] = []
        self.rle_lists: list[tuple[str, tuple[int, int], list]] = []
        self.boxes: list[tuple[str, tuple[int, int], list[float]]] = []
        self.embeddings: list[tuple[str, list]] = []
        # Kept for the whole file as runs: annotation ids, and embedding rows by position.
        self.ids = IntRuns()
        self.rows = IntRuns()

    def run(self, annotations: Iterable[Any], progress: bool) -> None:
        for index, ann in enumerate(
            tqdm(annotations, desc="annotations", unit="ann", disable=not progress, mininterval=1)
        ):
            self.report.num_annotations = index + 1
            if index % ANNOTATION_BATCH == 0:
                self._check_batch()
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            where = f"annotation #{index} (id={ann_id})"
            if not isinstance(ann, dict):
                self.report.add(f"{where}: must be a json object")
                continue
            _add_id(self.ids, ann_id, index, where, self.report)
            self._check_one(ann, where)
        self._check_batch()
        self.report.num_images_without_annotations = (
            self.image_sizes.num_distinct() - self.annotated_images.num_distinct()
        )
        self._check_duplicate_ids()
        self._check_embedding_rows()

    def _check_batch(self) -> None:
        self._check_boxes(self._check_masks())
        self._check_embeddings()
        for pending in (self.rle_strings, self.rle_lists, self.boxes, self.embeddings):
            pending.clear()

    def _check_duplicate_ids(self) -> None:
        for repeat in self.ids.repeats():
            also = f", as are ids up to {repeat.last}" if repeat.last > repeat.first else ""
            self.report.add(
                f"annotation id={repeat.first}: field 'id' is duplicated (again at annotation "
                f"#{repeat.position}{also})"
            )

    def _check_embedding_rows(self) -> None:
        """``emb_row``: one distinct row of an existing float16 store per annotation naming
        one, the store holding exactly those rows, of finite values."""
        rows = self.rows
        if not rows:
            return
        add = self.report.add
        path = self.embedding_store
        if path is None or not Path(path).is_file():
            add(
                f"{len(rows)} annotations name rows of an embedding store, which is missing: {path}"
            )
            return
        try:
            store = open_embedding_store(path)
        except ValueError as err:
            add(str(err))
            return
        if self.store_width is not None and store.shape[1] != self.store_width:
            add(f"{path}: width {store.shape[1]}, but the json's info says {self.store_width}")
        if store.dtype != EMBEDDING_STORE_DTYPE:
            add(f"{path}: dtype {store.dtype}, expected {EMBEDDING_STORE_DTYPE}")
        if len(store) != len(rows):
            add(
                f"{path}: holds {len(store)} rows but {len(rows)} annotations name one (the store "
                "of another file, or cut short)"
            )
        starts, ends = rows.distinct()
        beyond = np.maximum(ends - np.maximum(starts, len(store)), 0)
        if beyond.any():
            first = np.maximum(starts, len(store))[beyond > 0]
            add(
                f"{path}: {int(beyond.sum())} rows beyond its {len(store)} are named, e.g. "
                f"{first[:3].tolist()}"
            )
        repeats = rows.repeats()
        if repeats:
            named = [repeat.first for repeat in repeats[:3]]
            add(f"{path}: rows {named} are named by several annotations")
        if self.embeddings or self.report.embedding_dim:
            add(f"{path}: the file mixes inline '{EMBEDDING_KEY}' lists and store rows")
        self.report.embedding_dim = int(store.shape[1])
        for start, block in read_store_blocks(path, _STORE_ROWS_PER_READ):
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            for row in bad[:3]:
                add(f"{path}: row {start + row} holds non-finite values")

    def _check_one(self, ann: dict, where: str) -> None:
        add = self.report.add
        image_id = ann.get("image_id")
        size = self._image_size(image_id)
        if size is None:
            add(f"{where}: field 'image_id' {image_id!r} is not a known image with a valid size")
        category_id = ann.get("category_id")
        if not _is_int(category_id):
            add(f"{where}: field 'category_id' must be an int, got {category_id!r}")
        elif self.category_ids is not None and category_id not in self.category_ids:
            add(f"{where}: field 'category_id' {category_id} is not a known category")
        if ann.get("iscrowd", 0) not in (0, 1):
            add(f"{where}: field 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}")
        area = ann.get("area")
        if not _is_finite_number(area) or area < 0:
            add(f"{where}: field 'area' must be a finite number >= 0, got {area!r}")
        if SCORE_KEY in ann or self.kind == "pseudo":
            score = ann.get(SCORE_KEY)
            if not _is_finite_number(score) or not 0.0 <= score <= 1.0:
                add(f"{where}: field '{SCORE_KEY}' must be a number in [0, 1], got {score!r}")
        if EMBEDDING_KEY in ann:
            embedding = ann[EMBEDDING_KEY]
            if isinstance(embedding, list) and embedding:
                self.embeddings.append((where, embedding))
            else:
                add(f"{where}: field '{EMBEDDING_KEY}' must be a non-empty list of floats")
        if EMBEDDING_ROW_KEY in ann:
            row = ann[EMBEDDING_ROW_KEY]
            if _is_int(row) and 0 <= row < 2**63:
                self.rows.add(row)
            else:
                add(f"{where}: field '{EMBEDDING_ROW_KEY}' must be an int >= 0, got {row!r}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_finite_number, bbox))):
            add(f"{where}: field 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        elif bbox[2] < 0 or bbox[3] < 0:
            add(f"{where}: field 'bbox' {bbox} has a negative width or height")
        elif size is not None:
            self.boxes.append((where, size, bbox))
        self._check_segmentation_structure(ann.get("segmentation"), where, size)

    def _image_size(self, image_id: Any) -> tuple[int, int] | None:
        """(height, width) of a known image with a valid size; annotations come grouped by
        image, so the last answer is kept and each image joins ``annotated_images`` once."""
        last_id, last_size = self._last_image
        if image_id == last_id and _is_int(image_id):
            return last_size
        packed = self.image_sizes.lookup(image_id) if _is_int(image_id) else None
        size = None if packed is None else _unpack_size(packed)
        if size is not None:
            self.annotated_images.add(image_id)
        self._last_image = (image_id, size)
        return size

    def _check_segmentation_structure(self, seg: Any, where: str, size: tuple | None) -> None:
        add = self.report.add
        if isinstance(seg, list):
            if not seg:
                add(f"{where}: field 'segmentation' is an empty polygon list")
            for polygon in seg:
                if not (
                    isinstance(polygon, list)
                    and len(polygon) >= 6
                    and len(polygon) % 2 == 0
                    and all(map(_is_finite_number, polygon))
                ):
                    add(
                        f"{where}: field 'segmentation': each polygon must be a list of an even "
                        "number (>= 6) of finite coordinates"
                    )
                    break
            return
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            add(f"{where}: field 'segmentation' must be polygons or an RLE dict with size, counts")
            return
        rle_size = seg["size"]
        if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(map(_is_int, rle_size))):
            add(f"{where}: field 'segmentation.size' must be [height, width], got {rle_size!r}")
            return
        if size is not None and tuple(rle_size) != size:
            add(
                f"{where}: field 'segmentation.size' {rle_size} != image size "
                f"{list(size)} (mask of the wrong size)"
            )
            return
        counts = seg["counts"]
        if isinstance(counts, str) and counts.isascii():
            self.rle_strings.append((where, tuple(rle_size), counts))
        elif isinstance(counts, list):
            self.rle_lists.append((where, tuple(rle_size), counts))
        else:
            add(f"{where}: field 'segmentation.counts' must be an ASCII string or a list of ints")

    def _check_masks(self) -> dict[str, np.ndarray]:
        """Check RLE counts decode to exactly h*w pixels; returns {label: mask box xywh}."""
        add = self.report.add
        valid: list[tuple[str, dict]] = []
        if self.rle_strings:
            labels, sizes, strings = zip(*self.rle_strings, strict=True)
            well_formed, totals, negative = rle_string_totals(list(strings))
            checked = zip(labels, sizes, strings, well_formed, totals, negative, strict=True)
            for label, size, string, ok, total, has_negative in checked:
                problem = _runs_problem(ok, int(total), has_negative, size)
                if problem:
                    add(f"{label}: field 'segmentation.counts': {problem}")
                else:
                    valid.append((label, {"size": list(size), "counts": string.encode("ascii")}))
        for label, size, counts in self.rle_lists:
            if not all(map(_is_int, counts)):
                add(f"{label}: field 'segmentation.counts': list counts must be ints")
                continue
            problem = _runs_problem(True, sum(counts), min(counts, default=0) < 0, size)
            if problem:
                add(f"{label}: field 'segmentation.counts': {problem}")
            else:
                valid.append(
                    (label, mask_utils.frPyObjects({"size": list(size), "counts": counts}, *size))
                )
        if not valid:
            return {}
        boxes = mask_utils.toBbox([rle for _, rle in valid])
        return {label: box for (label, _), box in zip(valid, boxes, strict=True)}

    def _check_boxes(self, mask_boxes: dict[str, np.ndarray]) -> None:
        """Boxes must lie inside the image and, for RLE masks, match the mask's box."""
        if not self.boxes:
            return
        labels = [label for label, _, _ in self.boxes]
        height, width = np.array([size for _, size, _ in self.boxes], dtype=np.float64).T
        box = np.array([bbox for _, _, bbox in self.boxes], dtype=np.float64)
        no_mask = np.full(4, np.nan)
        mask = np.array([mask_boxes.get(label, no_mask) for label in labels])
        x, y, w, h = box.T
        tol = BOX_TOLERANCE_PX
        outside = (x < -tol) | (y < -tol) | (x + w > width + tol) | (y + h > height + tol)
        has_mask = mask[:, 2] > 0  # False for NaN (no RLE mask) and for empty masks
        fits_mask = np.abs(mask - box).max(axis=1) <= tol
        as_xyxy = np.stack([x, y, w - x, h - y], axis=1)
        fits_mask_as_xyxy = np.abs(mask - as_xyxy).max(axis=1) <= tol
        xyxy_inside_image = (w > x) & (h > y) & (w <= width + tol) & (h <= height + tol)
        looks_xyxy = (has_mask & fits_mask_as_xyxy & ~fits_mask) | (outside & xyxy_inside_image)
        off_mask = has_mask & ~fits_mask & (self.kind == "pseudo")
        for i in np.flatnonzero(outside | looks_xyxy | off_mask):
            text = f"{labels[i]}: field 'bbox': bbox [{', '.join(f'{v:g}' for v in box[i])}]"
            if outside[i] or looks_xyxy[i]:
                where = f"outside the {width[i]:g}x{height[i]:g} (WxH) image"
                text += f" {where}" if outside[i] else " in x1y1x2y2"
                text += f"; {XYXY_HINT}" if looks_xyxy[i] else ""
            else:
                text += f" does not match its mask's box [{', '.join(f'{v:g}' for v in mask[i])}]"
            self.report.add(text)

    def _check_embeddings(self) -> None:
        """Inline embeddings of a batch: finite numbers, one length across the file (the most
        common one among the first batch's)."""
        if not self.embeddings:
            return
        lengths = [len(embedding) for _, embedding in self.embeddings]
        if self.report.embedding_dim is None:
            self.report.embedding_dim = Counter(lengths).most_common(1)[0][0]
        dim = self.report.embedding_dim
        for (label, _), length in zip(self.embeddings, lengths, strict=True):
            if length != dim:
                self.report.add(
                    f"{label}: field '{EMBEDDING_KEY}' has length {length}, expected {dim} "
                    "(the most common length in this file)"
                )
        try:
            flat = np.fromiter(
                itertools.chain.from_iterable(embedding for _, embedding in self.embeddings),
                dtype=np.float64,
                count=sum(lengths),
            )
            finite = np.isfinite(flat)
            if finite.all():
                return
            bad = set(np.searchsorted(np.cumsum(lengths), np.flatnonzero(~finite), side="right"))
        except (TypeError, ValueError):  # a non-number somewhere: find it the slow way
            bad = {
                i
                for i, (_, embedding) in enumerate(self.embeddings)
                if not all(map(_is_finite_number, embedding))
            }
        for index in sorted(bad):
            where = self.embeddings[index][0]
            self.report.add(f"{where}: field '{EMBEDDING_KEY}' must hold only finite numbers")


def _runs_problem(
    well_formed: bool, total: int, has_negative: bool, size: tuple[int, int]
) -> str | None:
    if not well_formed:
        return "not a valid compressed RLE string"
    if has_negative:
        return "RLE decodes to a negative run length"
    if total != size[0] * size[1]:
        return f"runs cover {total} pixels, size {list(size)} needs {size[0] * size[1]}"
    return None


def rle_string_runs(strings: list[str]) -> list[np.ndarray | None]:
    """Run lengths of COCO compressed RLE strings (None where a string is malformed)."""
    result: list[np.ndarray | None] = []
    for chunk in _chunks(strings):
        well_formed, runs, bounds = _parse_rle_strings(chunk)
        pieces = np.split(runs, bounds[1:-1])
        result += [r if ok else None for r, ok in zip(pieces, well_formed, strict=True)]
    return result


def rle_string_totals(strings: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per string: (well formed, sum of run lengths, any negative run), without splitting."""
    parts = []
    for chunk in _chunks(strings):
        well_formed, runs, bounds = _parse_rle_strings(chunk)
        owner = np.repeat(np.arange(len(chunk)), np.diff(bounds))
        totals = np.bincount(owner, weights=runs, minlength=len(chunk)).astype(np.int64)
        negative = np.bincount(owner, weights=runs < 0, minlength=len(chunk)) > 0
        parts.append((well_formed, totals, negative))
    if not parts:
        return np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, bool)
    return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


def _chunks(strings: list[str]) -> Iterator[list[str]]:
    """Consecutive slices of about _CHUNK_CHARS characters, to bound the parser's memory."""
    ends = np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)))
    start = 0
    while start < len(strings):
        limit = (ends[start - 1] if start else 0) + _CHUNK_CHARS
        stop = max(start + 1, int(np.searchsorted(ends, limit, side="right")))
        yield strings[start:stop]
        start = stop


def _parse_rle_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised COCO RLE string parser: (well formed per string, all runs, run bounds).

    Each run length is a little-endian group of 5-bit characters (offset 48; bit 0x20 = "more
    follows"; bit 0x10 of the last character = negative); from the fourth run on, the value is a
    delta against the run two places earlier. String i's runs are runs[bounds[i]:bounds[i + 1]].
    """
    count = len(strings)
    string_end = np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=count))
    raw = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8)
    well_formed = np.ones(count, dtype=bool)
    if raw.size == 0:
        return well_formed, np.zeros(0, dtype=np.int64), np.zeros(count + 1, dtype=np.int64)

    def flag(char_index: np.ndarray) -> None:
        well_formed[np.searchsorted(string_end, char_index, side="right")] = False

    flag(np.flatnonzero((raw < 48) | (raw > 48 + 63)))
    chars = raw - np.uint8(48)  # wraps for the flagged characters; harmless below
    group_end = (chars & 0x20) == 0
    last_char = string_end[string_end > np.r_[0, string_end[:-1]]] - 1
    flag(last_char[~group_end[last_char]])  # dangling continuation
    group_end[last_char] = True  # never let a group run into the next string
    ends = np.flatnonzero(group_end)
    starts = np.r_[0, ends[:-1] + 1]
    group_len = ends - starts + 1
    flag(starts[group_len > _MAX_RLE_GROUP_CHARS])
    values = (chars[starts] & 0x1F).astype(np.int64)
    for k in range(1, min(int(group_len.max()), _MAX_RLE_GROUP_CHARS)):
        longer = np.flatnonzero(group_len > k)
        values[longer] |= (chars[starts[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = (chars[ends] & 0x10) != 0
    shift = 5 * np.minimum(group_len[negative], _MAX_RLE_GROUP_CHARS)
    values[negative] -= np.left_shift(np.int64(1), shift)

    # Undo the delta coding: runs 1, 3, 5... and runs 2, 4, 6... of a string are running sums.
    bounds = np.r_[0, np.searchsorted(ends, string_end, side="left")]
    first = np.repeat(bounds[:-1], np.diff(bounds))
    index = np.arange(values.size) - first
    odd = (index & 1) == 1
    odd_sums = np.r_[0, np.cumsum(np.where(odd, values, 0))]
    even_sums = np.r_[0, np.cumsum(np.where(~odd & (index >= 2), values, 0))]
    runs = np.where(
        index == 0,
        values,
        np.where(odd, odd_sums[1:] - odd_sums[first], even_sums[1:] - even_sums[first]),
    )
    return well_formed, runs, bounds
