"""The pseudo-label file: the one format every stage of the project writes and reads.

Writers: the pseudo-mask generators (``proposals/writer.py``, streamed from per-process shards)
and a self-training round's labelling pass (``engine/self_training.py``). Readers: dataset
registration (``data/datasets.py``), the training mapper (``data/mapper.py``), the run
preparation that sizes the embedding head (``engine/run_config.py``) and the validator
(``data/validation.py``).

Schema: a plain COCO instances json, so any COCO tool reads it.

- ``images``: ``id``, ``file_name`` (relative to the image folder), ``height``, ``width``.
- ``categories``: ``CATEGORIES`` (one class, ``object``, id 1) in class-agnostic files;
  pseudo-class files list their classes with ids 1..K.
- ``annotations``: the COCO keys ``id``, ``image_id``, ``category_id``, ``iscrowd`` (0),
  ``segmentation`` (compressed RLE), ``bbox`` (x, y, w, h of the mask), ``area`` (mask pixels),
  plus the pseudo-label keys:

  - ``score`` (required): confidence in [0, 1]; it ranks and filters masks. A file without
    scores is ground truth, whose masks count as score 1.
  - ``emb_row`` (optional): the row of the mask's semantic embedding (FreeSOLO's L_sem target)
    in the embedding store, ``OUT.emb.npy`` beside ``OUT.json``: a float16 (rows, D) .npy
    array, one row per annotation that has one. The project writes embeddings only there: 768
    floats per mask as json text made COCO-scale files ~22 GB and every training process hold
    them as Python floats. Files of other tools may carry them inline instead, as ``emb`` (a
    list of floats); readers take either (``EmbeddingLookup``).
  - generator extras (optional), e.g. ``k`` and ``saliency_overlap`` (spectral clustering),
    ``maskness`` and ``query_scale`` (Free Mask).

In detectron2's dataset dicts a class-agnostic file's category is the contiguous id 0, named by
``THING_CLASSES``; training loads a file as compact per-image records (``load_compact_dataset``).
Numbers are rounded (scores and float extras to 6 decimals) to keep COCO-scale files small.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tempfile
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ijson
import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.structures import BoxMode

from uis_d2.utils.files import atomic_output
from uis_d2.utils.masks import masks_to_rles, rle_areas, rle_boxes_xywh, to_compressed_rle

OBJECT_CATEGORY_ID = 1
CATEGORIES = [{"id": OBJECT_CATEGORY_ID, "name": "object"}]
THING_CLASSES = ["object"]

SCORE_KEY = "score"
EMBEDDING_KEY = "emb"
EMBEDDING_ROW_KEY = "emb_row"
EMBEDDING_STORE_SUFFIX = ".emb.npy"
EMBEDDING_STORE_DTYPE = np.dtype(np.float16)
EMBEDDING_DECIMALS = 4
SCORE_DECIMALS = 6


def encode_masks(
    masks: torch.Tensor,
    scores: np.ndarray,
    embeddings: np.ndarray | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The annotations (without ids) of one image's (N, H, W) bool masks; empty masks are
    dropped (no box, nothing to learn).

    Masks may be tensors on any device: they are run-length encoded where they are, so only run
    starts reach the host. ``scores`` (N,), ``embeddings`` (N, D) and every ``extras`` column
    (N,) are host arrays aligned with the masks.
    """
    rles = masks_to_rles(masks)
    areas = rle_areas(rles)
    keep = [i for i, area in enumerate(areas) if area > 0]
    kept_rles = [rles[i] for i in keep]
    columns: dict[str, list[Any]] = {
        "segmentation": kept_rles,
        "bbox": rle_boxes_xywh(kept_rles),
        "area": [areas[i] for i in keep],
        SCORE_KEY: json_floats(np.asarray(scores)[keep], SCORE_DECIMALS),
    }
    if embeddings is not None:
        columns[EMBEDDING_KEY] = json_floats(np.asarray(embeddings)[keep], EMBEDDING_DECIMALS)
    for name, values in (extras or {}).items():
        columns[name] = _json_column(np.asarray(values)[keep])
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def annotation_record(annotation_id: int, image_id: int, fields: Mapping[str, Any]) -> dict:
    """An annotation of the file: ids and the single class first, then ``encode_masks``'s
    fields."""
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": OBJECT_CATEGORY_ID,
        "iscrowd": 0,
        **fields,
    }


def file_header(info: Mapping[str, Any], images: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything of the file but its annotations, which writers stream after it."""
    return {"info": dict(info), "images": list(images), "categories": CATEGORIES}


def read_info(json_file: str | Path) -> dict[str, Any]:
    """The file's ``info`` object, read without parsing the rest (writers put it first)."""
    for info in iter_json(json_file, "info"):
        return info
    return {}


def iter_json(json_file: str | Path, prefix: str) -> Iterator[Any]:
    """The values at ``prefix`` of a json file (``"images.item"``: each image), parsed one at a
    time, so memory does not grow with the file; a malformed file is an error naming it."""
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"json file not found: {json_file}")
    try:
        with open(json_file, "rb") as f:
            yield from ijson.items(f, prefix, use_float=True)
    except ijson.JSONError as err:
        raise ValueError(f"{json_file} is not valid json: {err}") from err


def annotation_score(annotation: Mapping[str, Any]) -> float:
    """The mask's confidence; 1.0 without a score, so ground truth serves as pseudo-labels."""
    return float(annotation.get(SCORE_KEY, 1.0))


# ---- the embedding store -------------------------------------------------------------------


def embedding_store_path(json_file: str | Path) -> Path:
    """``OUT.json`` -> ``OUT.emb.npy``: a file's store lies beside it, under its name."""
    path = Path(json_file)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + EMBEDDING_STORE_SUFFIX)


class EmbeddingStoreWriter:
    """Moves the inline ``emb`` of annotations, in the order they are written, into the store.

    Rows go to a temporary file beside the store as they come; ``finish`` writes the .npy (its
    header needs the row count) atomically, so a killed writer leaves no half store behind.
    """

    def __init__(self, json_file: str | Path) -> None:
        self.path = embedding_store_path(json_file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows = tempfile.TemporaryFile(dir=self.path.parent)
        self.num_rows = 0
        self.dim: int | None = None

    def add(self, annotations: Sequence[dict[str, Any]], rows: np.ndarray) -> None:
        """Append ``rows`` (one per annotation) and give each annotation its ``emb_row``."""
        if len(rows) != len(annotations) or rows.ndim != 2:
            raise ValueError(f"{self.path}: {rows.shape} embeddings for {len(annotations)} masks")
        if self.dim is None:
            self.dim = rows.shape[1]
        if rows.shape[1] != self.dim:
            raise ValueError(
                f"{self.path}: embeddings of width {rows.shape[1]} after rows of width {self.dim}"
            )
        self._rows.write(np.ascontiguousarray(rows, dtype=EMBEDDING_STORE_DTYPE).tobytes())
        for row, annotation in enumerate(annotations, start=self.num_rows):
            annotation[EMBEDDING_ROW_KEY] = row
        self.num_rows += len(annotations)

    def move_embeddings(self, annotations: Sequence[dict[str, Any]]) -> None:
        """Replace the inline ``emb`` of annotations by their ``emb_row`` in the store."""
        carrying = [a for a in annotations if EMBEDDING_KEY in a]
        if carrying:
            self.add(carrying, pop_embeddings(carrying))

    def finish(self) -> dict[str, Any] | None:
        """Write the store; returns its description for the json's ``info`` (None, and no
        store, when no annotation had an embedding: a stale store of the name is removed)."""
        try:
            if self.dim is None:
                self.path.unlink(missing_ok=True)
                return None
            header = {
                "descr": np.lib.format.dtype_to_descr(EMBEDDING_STORE_DTYPE),
                "fortran_order": False,
                "shape": (self.num_rows, self.dim),
            }
            self._rows.seek(0)
            with atomic_output(self.path) as out:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(self._rows, out)
            return {
                "file": self.path.name,
                "rows": self.num_rows,
                "dim": self.dim,
                "dtype": str(EMBEDDING_STORE_DTYPE),
            }
        finally:
            self._rows.close()


def pop_embeddings(annotations: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """Take the inline ``emb`` lists out of annotations (all or none carry one), as float16
    rows: what a writer keeps until it adds them to a store."""
    if not any(EMBEDDING_KEY in a for a in annotations):
        return None
    if not all(EMBEDDING_KEY in a for a in annotations):
        raise ValueError("some annotations carry an embedding and others do not")
    return _float_rows([a.pop(EMBEDDING_KEY) for a in annotations]).astype(EMBEDDING_STORE_DTYPE)


def _float_rows(vectors: list[Any]) -> np.ndarray:
    """Embedding lists as a float array; None (a non-finite value in json) becomes NaN."""
    try:
        return np.asarray(vectors, dtype=np.float64)
    except TypeError:
        return np.asarray(
            [[np.nan if v is None else v for v in vector] for vector in vectors], np.float64
        )


_open_stores: dict[tuple, np.ndarray] = {}


def open_embedding_store(path: str | Path) -> np.ndarray:
    """The store memory-mapped read-only, once per process: every process and data-loader
    worker of a machine then shares the operating system's one copy of its pages."""
    stat = os.stat(path) if os.path.exists(path) else None
    # The file's identity is in the key: a store rewritten since is mapped afresh.
    key = (os.path.abspath(path), os.getpid(), stat and (stat.st_ino, stat.st_mtime_ns))
    if key not in _open_stores:
        if not Path(path).is_file():
            raise FileNotFoundError(f"embedding store not found: {path} (annotations name rows)")
        try:
            store = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise ValueError(f"{path} is not a readable .npy embedding store: {err}") from err
        if store.ndim != 2:
            raise ValueError(f"embedding store {path} has shape {store.shape}, not (rows, dim)")
        _open_stores[key] = store
    return _open_stores[key]


def read_store_blocks(path: str | Path, rows_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) blocks of a store, read (not mapped), so a full scan holds one block:
    pages of a memory map stay resident and counted, and a scan would map the whole store."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, _, dtype = read_header(f)
        for start in range(0, shape[0], rows_per_block):
            count = min(rows_per_block, shape[0] - start)
            block = np.fromfile(f, dtype=dtype, count=count * shape[1])
            yield start, block.reshape(count, shape[1])


class EmbeddingLookup:
    """Embeddings of annotations, wherever their file keeps them: rows of its store
    (``emb_row``) or inline lists (``emb``). Every reader goes through this one path."""

    def __init__(self, store: str | Path | None) -> None:
        self.store = None if store is None else str(store)

    @classmethod
    def for_file(cls, json_file: str | Path) -> EmbeddingLookup:
        store = embedding_store_path(json_file)
        return cls(store if store.is_file() else None)

    def rows(self, row_indices: Sequence[int]) -> np.ndarray:
        """(len(row_indices), D) float32 rows of the store."""
        if self.store is None:
            raise ValueError("annotations name embedding rows ('emb_row') but there is no store")
        store = open_embedding_store(self.store)
        index = np.asarray(row_indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(store)):
            raise ValueError(
                f"{self.store}: rows {index.min()}..{index.max()} asked, it holds {len(store)}"
            )
        return store[index].astype(np.float32)

    def embeddings(self, annotations: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """(N, D) float32 of ``annotations``, or None when none carries an embedding; a mix of
        annotations with and without one is an error (one loss target per mask)."""
        rows = [a.get(EMBEDDING_ROW_KEY) for a in annotations]
        inline = [a.get(EMBEDDING_KEY) for a in annotations]
        if all(r is not None for r in rows) and rows:
            return self.rows(rows)
        if all(v is not None for v in inline) and inline:
            return _float_rows(inline).astype(np.float32)
        if any(r is not None for r in rows) or any(v is not None for v in inline):
            raise ValueError("some annotations carry an embedding and others do not")
        return None

    def dim(self) -> int | None:
        return None if self.store is None else int(open_embedding_store(self.store).shape[1])


# ---- compact dataset records for training ----------------------------------------------------

# One record per annotation: where its RLE counts end in the image's counts blob, and the fields
# the mapper and detectron2's dataset checks read.
_PACKED_FIELDS = np.dtype(
    [
        ("counts_end", np.int64),
        ("bbox", np.float32, (4,)),
        ("score", np.float32),
        ("category_id", np.int32),
        ("iscrowd", np.uint8),
        ("emb_row", np.int64),
    ]
)


class PackedAnnotations(Sequence):
    """One image's annotations in a few kilobytes: a record per annotation plus the RLE counts
    of all of them as one zlib-compressed bytes object (COCO RLE counts are ASCII, and shrink
    about 3x). It reads as a sequence of annotation dicts, built on access, so the mapper and
    detectron2's code take it as a list; inline embeddings (other tools' files) are kept as
    float16 rows."""

    def __init__(
        self,
        height: int,
        width: int,
        records: np.ndarray,
        counts: bytes,
        inline_embeddings: np.ndarray | None = None,
    ) -> None:
        self.height, self.width = height, width
        self.records, self.compressed_counts = records, counts
        self.inline_embeddings = inline_embeddings
        self._counts: bytes | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        if self._counts is None:
            self._counts = zlib.decompress(self.compressed_counts)
        record = self.records[index]
        start = int(self.records["counts_end"][index - 1]) if index else 0
        annotation = {
            "segmentation": {
                "size": [self.height, self.width],
                "counts": self._counts[start : int(record["counts_end"])].decode("ascii"),
            },
            "bbox": record["bbox"].tolist(),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": int(record["category_id"]),
            "iscrowd": int(record["iscrowd"]),
            SCORE_KEY: float(record["score"]),
        }
        if record["emb_row"] >= 0:
            annotation[EMBEDDING_ROW_KEY] = int(record["emb_row"])
        elif self.inline_embeddings is not None:
            annotation[EMBEDDING_KEY] = self.inline_embeddings[index].astype(np.float32).tolist()
        return annotation

    def __reduce__(self) -> tuple:
        # The records as raw bytes: a structured array would pickle its dtype with every image.
        state = (
            self.height,
            self.width,
            self.records.tobytes(),
            self.compressed_counts,
            self.inline_embeddings,
        )
        return (_unpickle_packed, state)


def _unpickle_packed(
    height: int, width: int, records: bytes, counts: bytes, inline: np.ndarray | None
) -> PackedAnnotations:
    return PackedAnnotations(
        height, width, np.frombuffer(records, dtype=_PACKED_FIELDS), counts, inline
    )


class _ImageAnnotations:
    """Annotations of one image while a file is read, in growing lists."""

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.counts: list[bytes] = []
        self.inline: list[Any] = []
        self.end = 0

    def add(self, annotation: Mapping[str, Any], height: int, width: int, category: int) -> None:
        counts = to_compressed_rle(annotation["segmentation"], height, width)["counts"]
        self.counts.append(counts.encode("ascii"))
        self.end += len(self.counts[-1])
        row = annotation.get(EMBEDDING_ROW_KEY)
        self.records.append(
            (
                self.end,
                annotation["bbox"],
                annotation_score(annotation),
                category,
                int(annotation.get("iscrowd", 0)),
                -1 if row is None else int(row),
            )
        )
        if EMBEDDING_KEY in annotation:
            self.inline.append(annotation[EMBEDDING_KEY])

    def pack(self, height: int, width: int, where: str) -> PackedAnnotations:
        inline = None
        if self.inline:
            if len(self.inline) != len(self.records):
                raise ValueError(f"{where}: some annotations carry an 'emb' and others do not")
            inline = _float_rows(self.inline).astype(EMBEDDING_STORE_DTYPE)
        records = np.array(self.records, dtype=_PACKED_FIELDS)
        counts = zlib.compress(b"".join(self.counts), 1)
        return PackedAnnotations(height, width, records, counts, inline)


class CompactDataset(torchdata.Dataset):
    """detectron2 dataset records of a pseudo-label file, pickled into one buffer as
    detectron2's ``DatasetFromList`` serializes a list, but written record by record while the
    file is read: the whole list never exists as Python objects, and data-loader workers share
    the buffer. detectron2 takes a ``Dataset`` from the catalog as it is (no list is made).

    ``embedding_store`` (the file's store, or None) goes into every record at access instead of
    being stored with each."""

    def __init__(
        self,
        buffer: np.ndarray,
        ends: np.ndarray,
        num_annotations: np.ndarray,
        embedding_store: str | None,
        index: np.ndarray | None = None,
    ) -> None:
        self.buffer, self.ends, self.num_annotations = buffer, ends, num_annotations
        self.embedding_store = embedding_store
        self.index = np.arange(len(ends)) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> dict[str, Any]:
        item = int(self.index[position])
        start = int(self.ends[item - 1]) if item else 0
        record = pickle.loads(memoryview(self.buffer[start : int(self.ends[item])]))
        if self.embedding_store is not None:
            record["embedding_store"] = self.embedding_store
        return record

    def with_annotations(self) -> CompactDataset:
        """The images that have pseudo-masks (DATALOADER.FILTER_EMPTY_ANNOTATIONS), as a view."""
        keep = self.index[self.num_annotations[self.index] > 0]
        return CompactDataset(
            self.buffer, self.ends, self.num_annotations, self.embedding_store, keep
        )

    @property
    def nbytes(self) -> int:
        """Resident bytes of the records (buffer and offsets)."""
        return self.buffer.nbytes + self.ends.nbytes + self.num_annotations.nbytes


class _RecordWriter:
    """Pickles records into one growing buffer (its reallocations grow in place, so the buffer
    is not held twice while it grows)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ends = array("q")
        self.num_annotations = array("i")

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
        self.ends.append(self.out.tell())
        self.num_annotations.append(len(record["annotations"]))

    def dataset(self, embedding_store: str | None) -> CompactDataset:
        return CompactDataset(
            np.frombuffer(self.out.getbuffer(), dtype=np.uint8),
            np.frombuffer(self.ends, dtype=np.int64),
            np.frombuffer(self.num_annotations, dtype=np.int32),
            embedding_store,
        )


class _NotInImageOrder(Exception):
    """Annotations of an image come after those of a later one."""


def pseudo_classes(json_file: str | Path) -> dict[int, str]:
    """The file's categories {id: name} by increasing id; a class-agnostic file has one."""
    categories = next(iter_json(json_file, "categories"), None)
    if not categories:
        raise ValueError(f"{json_file}: no 'categories' list")
    return {
        int(c["id"]): str(c.get("name", c["id"])) for c in sorted(categories, key=lambda c: c["id"])
    }


def load_compact_dataset(
    json_file: str | Path, image_root: str | Path, classes: Mapping[int, int] | None = None
) -> CompactDataset:
    """The training dataset of a pseudo-label file, without ever holding the whole file's json
    objects: the image list is read whole, then annotations one at a time; each image's record
    is packed (``PackedAnnotations``) and serialized as soon as its annotations are complete.
    That is at once in files whose annotations follow the image order (the project's writers'),
    and at the end otherwise. ``classes``: the contiguous class of each of the file's category
    ids (pseudo-classes); None gives every annotation class 0 (class-agnostic)."""
    images = next(iter_json(json_file, "images"), [])
    store = embedding_store_path(json_file)
    try:
        writer = _read_records(json_file, images, image_root, classes, ordered=True)
    except _NotInImageOrder:
        writer = _read_records(json_file, images, image_root, classes, ordered=False)
    return writer.dataset(str(store) if store.is_file() else None)


def _read_records(
    json_file: str | Path,
    images: list[dict[str, Any]],
    image_root: str | Path,
    classes: Mapping[int, int] | None,
    ordered: bool,
) -> _RecordWriter:
    position = {image["id"]: i for i, image in enumerate(images)}
    writer = _RecordWriter()
    collected: dict[int, _ImageAnnotations] = {}
    done = 0  # images [0, done) are written

    def write_until(stop: int) -> None:
        nonlocal done
        for i in range(done, stop):
            image = images[i]
            entry = collected.pop(i, None) or _ImageAnnotations()
            where = f"{json_file}, image id={image['id']}"
            writer.write(
                {
                    "file_name": os.path.join(str(image_root), image["file_name"]),
                    "height": image["height"],
                    "width": image["width"],
                    "image_id": image["id"],
                    "annotations": entry.pack(image["height"], image["width"], where),
                }
            )
        done = max(done, stop)

    for annotation in iter_json(json_file, "annotations.item"):
        i = position.get(annotation.get("image_id"))
        if i is None:
            raise ValueError(
                f"{json_file}: annotation id={annotation.get('id')} names image_id "
                f"{annotation.get('image_id')!r}, which is not in 'images'"
            )
        if ordered:
            if i < done:
                raise _NotInImageOrder
            write_until(i)
        image = images[i]
        category = 0 if classes is None else classes.get(annotation.get("category_id"))
        if category is None:
            raise ValueError(
                f"{json_file}: annotation id={annotation.get('id')} has category_id "
                f"{annotation.get('category_id')!r}, not among the file's categories "
                f"{sorted(classes)}"
            )
        entry = collected.setdefault(i, _ImageAnnotations())
        entry.add(annotation, image["height"], image["width"], category)
    write_until(len(images))
    return writer


# ---- the embedding width, read before a model is built -----------------------------------------


_EMBEDDING_START = re.compile(rb'"' + EMBEDDING_KEY.encode() + rb'"\s*:\s*\[')
_CHUNK_BYTES = 1 << 20


def embedding_dim(json_file: str | Path) -> int | None:
    """Width of a file's embeddings: its store's columns, else the length of the first inline
    ``emb`` list; None when it has neither.

    The embedding head's width must be known before a model is built; reading a COCO-sized
    file for it would take minutes, so the file is scanned as bytes up to its first ``emb``.
    Inside a json string every quote is escaped, so ``"emb": [`` can only be a real key.
    """
    store = EmbeddingLookup.for_file(json_file)
    if store.store is not None:
        return store.dim()
    buffer = b""
    with open(json_file, "rb") as f:
        while True:
            chunk = f.read(_CHUNK_BYTES)
            buffer += chunk
            match = _EMBEDDING_START.search(buffer)
            if match:
                end = buffer.find(b"]", match.end())
                if end >= 0:
                    return len(json.loads(b"[" + buffer[match.end() : end] + b"]"))
                if not chunk:
                    raise ValueError(f"{json_file}: truncated 'emb' list at the end of the file")
                continue  # the list continues in the next chunk
            if not chunk:
                return None
            buffer = buffer[-32:]  # enough to hold a key split across two chunks


def json_floats(values: np.ndarray, decimals: int) -> list[Any]:
    """Nested lists of rounded Python floats, None for NaN/inf (strict json parsers reject them).

    Vectorised: rounding 768-d embeddings element by element in Python dominated the writer.
    """
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.round(values, decimals)
    # np.round scales by 10**decimals first, which overflows above ~1e304: those are whole.
    rounded = np.where(np.isfinite(rounded), rounded, values)
    if finite.all():
        return rounded.tolist()
    return np.where(finite, rounded, None).tolist()


def _json_column(values: np.ndarray) -> list[Any]:
    """A generator extra: floats as scores are, other numbers (ints, bools) unchanged."""
    if values.dtype.kind == "f":
        return json_floats(values, SCORE_DECIMALS)
    return values.tolist()
