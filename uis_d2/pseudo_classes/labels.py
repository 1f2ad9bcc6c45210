"""Pseudo-classes written into a pseudo-label file (schema: data/pseudo_labels.py).

Each kept annotation gets ``category_id = cluster id + 1`` (the schema's pseudo-class ids
1..K, COCO's 1-based convention; detectron2's COCO loader maps them to contiguous 0..K-1, so
the contiguous id is the cluster id and a class-aware model has ``NUM_CLASSES = K``) and
``cluster_distance``, its cosine distance to its cluster's centre in the clustered space.
``categories`` lists all K classes, ``cluster_0`` .. ``cluster_{K-1}``, empty ones included, so
K is the file's class count whatever the clustering did. Annotations the outlier filter drops
are removed and their ids listed in ``info.pseudo_classes.dropped_annotations``; an image that
loses all its masks that way is removed from ``images`` too (COMUS drops such images from
training rather than letting them become background) and listed in ``dropped_images``. Images
that had no mask to begin with stay. The kept masks' stored embeddings move to the output's own
store (``OUT.emb.npy``), renumbered, so the file validates and trains like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from uis_d2.data.pseudo_labels import (
    EMBEDDING_ROW_KEY,
    SCORE_DECIMALS,
    EmbeddingLookup,
    EmbeddingStoreWriter,
    embedding_store_path,
)
from uis_d2.utils.files import atomic_write_bytes

DISTANCE_KEY = "cluster_distance"
_ROWS_PER_COPY = 1 << 16  # store rows read and written at a time, to bound memory


def pseudo_class_categories(num_clusters: int) -> list[dict[str, Any]]:
    return [{"id": c + 1, "name": f"cluster_{c}"} for c in range(num_clusters)]


def with_pseudo_classes(
    coco: Mapping[str, Any],
    labels: np.ndarray,
    distances: np.ndarray,
    keep: np.ndarray,
    num_clusters: int,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """A copy of the pseudo-label json ``coco`` labelled by ``labels`` (one per annotation, in
    file order), filtered by ``keep``; ``settings`` go into ``info.pseudo_classes``."""
    annotations = coco["annotations"]
    kept, dropped = [], []
    for annotation, label, distance, kept_it in zip(annotations, labels, distances, keep):
        if not kept_it:
            dropped.append(annotation)
            continue
        kept.append(
            {
                **annotation,
                "category_id": int(label) + 1,
                DISTANCE_KEY: round(float(distance), SCORE_DECIMALS),
            }
        )
    remaining = {a["image_id"] for a in kept}
    lost = {a["image_id"] for a in dropped} - remaining
    images = [image for image in coco["images"] if image["id"] not in lost]
    dropped_images = [
        {"id": image["id"], "file_name": image["file_name"]}
        for image in coco["images"]
        if image["id"] in lost
    ]
    info = {
        **coco.get("info", {}),
        "pseudo_classes": {
            **settings,
            "num_clusters": num_clusters,
            "cluster_sizes": np.bincount(labels, minlength=num_clusters).tolist(),
            "kept_sizes": np.bincount(labels[keep], minlength=num_clusters).tolist(),
            "dropped_annotations": [a["id"] for a in dropped],
            "dropped_images": dropped_images,
        },
    }
    return {
        **coco,
        "info": info,
        "images": images,
        "categories": pseudo_class_categories(num_clusters),
        "annotations": kept,
    }


def write_pseudo_class_file(
    labelled: dict[str, Any], input_json: str | Path, output_json: str | Path
) -> None:
    """Write ``labelled`` to ``output_json`` atomically. Annotations naming rows of the input's
    embedding store get their rows copied, renumbered, into the output's store (the filter may
    have dropped rows), which is written first: a json in place means its file is complete.
    Without such rows a stale store of the output's name is removed."""
    carrying = [a for a in labelled["annotations"] if EMBEDDING_ROW_KEY in a]
    lookup = EmbeddingLookup.for_file(input_json)
    if carrying and lookup.store is None:
        raise FileNotFoundError(
            f"{input_json}: its annotations name embedding rows, but its store "
            f"{embedding_store_path(input_json)} is missing"
        )
    store = EmbeddingStoreWriter(output_json)
    for start in range(0, len(carrying), _ROWS_PER_COPY):
        chunk = carrying[start : start + _ROWS_PER_COPY]
        store.add(chunk, lookup.rows([a[EMBEDDING_ROW_KEY] for a in chunk]))
    description = store.finish()
    if description is not None:
        labelled["info"]["embedding_store"] = description
    atomic_write_bytes(output_json, orjson.dumps(labelled))
