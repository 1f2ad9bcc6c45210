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
  - ``emb`` (optional): the mask's semantic embedding (FreeSOLO's L_sem target), a list of
    floats of one length per file.
  - generator extras (optional), e.g. ``k`` and ``saliency_overlap`` (spectral clustering),
    ``maskness`` and ``query_scale`` (Free Mask).

In detectron2's dataset dicts a class-agnostic file's category is the contiguous id 0, named by
``THING_CLASSES``. Numbers are rounded (embeddings to 4 decimals, scores and float extras to 6)
to keep COCO-scale files small.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uis_d2.utils.files import read_json
from uis_d2.utils.masks import masks_to_rles, rle_areas, rle_boxes_xywh

OBJECT_CATEGORY_ID = 1
CATEGORIES = [{"id": OBJECT_CATEGORY_ID, "name": "object"}]
THING_CLASSES = ["object"]

SCORE_KEY = "score"
EMBEDDING_KEY = "emb"
# The keys detectron2's load_coco_json reads itself (or, for id/image_id/area, needs no further);
# every other key of an annotation (score, emb, k, ...) must be asked for by name to be kept.
COCO_ANNOTATION_KEYS = frozenset(
    {"id", "image_id", "category_id", "iscrowd", "bbox", "segmentation", "keypoints", "area"}
)

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


def read_pseudo_labels(path: str | Path) -> dict[str, Any]:
    """The whole file as a dict; a missing or malformed file is an error naming it."""
    return read_json(path, "pseudo-label json")


def annotation_score(annotation: Mapping[str, Any]) -> float:
    """The mask's confidence; 1.0 without a score, so ground truth serves as pseudo-labels."""
    return float(annotation.get(SCORE_KEY, 1.0))


def annotation_embedding(annotation: Mapping[str, Any]) -> list[float] | None:
    return annotation.get(EMBEDDING_KEY)


def extra_annotation_keys(json_file: str | Path) -> list[str]:
    """The non-COCO annotation keys present in a file (score, emb, k, ...)."""
    coco = read_json(json_file, "annotation file")
    present = {key for annotation in coco.get("annotations", []) for key in annotation}
    return sorted(present - COCO_ANNOTATION_KEYS)


_EMBEDDING_START = re.compile(rb'"' + EMBEDDING_KEY.encode() + rb'"\s*:\s*\[')
_CHUNK_BYTES = 1 << 20


def embedding_dim(json_file: str | Path) -> int | None:
    """Length of the first ``emb`` list in a file; None when there is none.

    The embedding head's width must be known before a model is built; reading a COCO-sized
    file for it would take minutes, so the file is scanned as bytes up to its first ``emb``.
    Inside a json string every quote is escaped, so ``"emb": [`` can only be a real key.
    """
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
