"""Turn proposals into a pseudo-label file (format: data/pseudo_labels.py): one shard line per
image, then the merged COCO file.

The merged file's bytes depend only on the shard lines and ``info``: images are ordered by id and
annotation ids are assigned 1, 2, ... in that order, so any split of the work over processes,
and any sequence of interruptions and resumptions, gives the same file. Shard lines carry the
embeddings inline; the merge moves them, in the same order, to the embedding store beside the
json, which is therefore as reproducible as the json.

The merge streams: annotations go through a temporary file and never sit in memory together,
since COCO-scale pseudo-labels with embeddings run to many gigabytes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from uis_d2.data.pseudo_labels import (
    EmbeddingStoreWriter,
    annotation_record,
    encode_masks,
    file_header,
)
from uis_d2.proposals.base import Proposals
from uis_d2.proposals.shards import ShardDirectory, ShardReader
from uis_d2.utils.files import atomic_output


def to_numpy(value: Any) -> np.ndarray:
    """Generators may hand back tensors on any device; the json wants plain numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def proposals_to_line(
    image_id: int, file_name: str, height: int, width: int, proposals: Proposals
) -> dict[str, Any]:
    """The shard line of one image; empty masks are dropped (no box, nothing to learn).

    Masks may be numpy arrays or tensors on any device: they are run-length encoded where they
    are, so only their run starts reach the host, never the full-resolution masks.
    """
    masks = _as_tensor(proposals.masks)
    scores = to_numpy(proposals.scores)
    embeddings = to_numpy(proposals.embeddings)
    extras = {name: to_numpy(values) for name, values in proposals.extras.items()}
    _check_shapes(file_name, height, width, tuple(masks.shape), scores, embeddings, extras)
    return {
        "image_id": image_id,
        "file_name": file_name,
        "height": height,
        "width": width,
        "annotations": encode_masks(masks, scores, embeddings, extras),
    }


def _as_tensor(masks: Any) -> torch.Tensor:
    """Masks as a tensor on their own device; numpy arrays are wrapped, not copied."""
    if isinstance(masks, torch.Tensor):
        return masks.detach()
    # ascontiguousarray copies only arrays torch cannot wrap (negative strides, e.g. flips).
    return torch.from_numpy(np.ascontiguousarray(masks))


def skipped_line(image_id: int, file_name: str, reason: str) -> dict[str, Any]:
    return {"image_id": image_id, "file_name": file_name, "skipped": reason}


@dataclass
class MergeSummary:
    num_images: int = 0
    num_masks: int = 0
    masks_per_image: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def merge_shards(
    shards: ShardDirectory, image_ids: Sequence[int], info: dict[str, Any], output: Path
) -> MergeSummary:
    """Write the COCO json of ``image_ids`` (every one must have a shard line) and its
    embedding store, each atomically, the store first.

    ``info`` gets the list of skipped images and the store's description added; duplicate lines
    of an image (a rerun racing an earlier one) resolve to the first, in shard-file order.
    """
    index = shards.index()
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise RuntimeError(
            f"{len(missing)} images have no proposals in {shards.path} (first ids: {missing[:5]})"
        )
    summary = MergeSummary()
    images = []
    store = EmbeddingStoreWriter(output)
    with tempfile.TemporaryFile(dir=output.parent) as annotations_tmp, ShardReader() as reader:
        for image_id in sorted(image_ids):
            line = reader.read(*index[image_id])
            if "skipped" in line:
                summary.skipped.append(
                    {
                        "image_id": image_id,
                        "file_name": line["file_name"],
                        "reason": line["skipped"],
                    }
                )
                continue
            annotations = line.pop("annotations")
            images.append({"id": image_id, **{k: v for k, v in line.items() if k != "image_id"}})
            store.move_embeddings(annotations)
            records = [
                annotation_record(summary.num_masks + number, image_id, annotation)
                for number, annotation in enumerate(annotations, start=1)
            ]
            if records:  # one encoding per image: the list's items, brackets cut off
                annotations_tmp.write(b"," if summary.num_masks else b"")
                annotations_tmp.write(_dumps(records)[1:-1])
                summary.num_masks += len(records)
            summary.masks_per_image.append(len(annotations))
        summary.num_images = len(images)
        embedding_store = store.finish()
        header = file_header(
            {**info, "skipped": summary.skipped, "embedding_store": embedding_store}, images
        )
        annotations_tmp.seek(0)
        with atomic_output(output) as out:
            out.write(_dumps(header)[:-1] + b',"annotations":[')
            shutil.copyfileobj(annotations_tmp, out)
            out.write(b"]}")
    return summary


def _dumps(obj: Any) -> bytes:
    # orjson: json's float formatting made encoding the embeddings the slowest part of the tool
    # after the GPU work (10x slower, measured on 12 masks x 768 floats).
    return orjson.dumps(obj)


def _check_shapes(
    file_name: str,
    height: int,
    width: int,
    mask_shape: tuple[int, ...],
    scores: np.ndarray,
    embeddings: np.ndarray,
    extras: dict[str, np.ndarray],
) -> None:
    """The generator contract (base.Proposals), checked so a bug names the broken field."""
    problems = []
    if len(mask_shape) != 3 or mask_shape[1:] != (height, width):
        problems.append(f"masks {mask_shape} should be (N, {height}, {width})")
    n = mask_shape[0] if len(mask_shape) == 3 else -1
    if scores.shape != (n,):
        problems.append(f"scores {scores.shape} should be ({n},)")
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        problems.append(f"embeddings {embeddings.shape} should be ({n}, C)")
    problems += [
        f"extras[{name!r}] {v.shape} should be ({n},)"
        for name, v in extras.items()
        if v.shape != (n,)
    ]
    if problems:
        raise ValueError(
            f"proposals of {file_name} break the Proposals contract: " + "; ".join(problems)
        )
