"""Resolve ``MODEL.SOLOV2.EMBED_DIM = 0`` ("as the pseudo-labels say") before a model is built.

The embedding head's width must be known when the model is constructed, but it is a property of
the pseudo-label file (the feature extractor that made it). Reading a whole COCO-sized json just
for that would take minutes, so the file is scanned as bytes up to its first ``"emb": [...]``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

_EMB_START = re.compile(rb'"emb"\s*:\s*\[')
_CHUNK_BYTES = 1 << 20


def first_embedding_dim(json_file: str | Path) -> int | None:
    """Length of the first ``"emb"`` list in a json file; None when there is none.

    Inside a json string every quote is escaped, so ``"emb": [`` can only be a real key.
    """
    buffer = b""
    with open(json_file, "rb") as f:
        while True:
            chunk = f.read(_CHUNK_BYTES)
            buffer += chunk
            match = _EMB_START.search(buffer)
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


def dataset_embedding_dim(dataset_name: str) -> int:
    """Embedding dimension of a registered training set's pseudo-labels (0 = none)."""
    metadata = MetadataCatalog.get(dataset_name)
    json_files = getattr(metadata, "json_files", None) or (
        [metadata.json_file] if hasattr(metadata, "json_file") else []
    )
    for json_file in json_files:
        if not Path(json_file).is_file():
            raise FileNotFoundError(
                f"pseudo-label json of dataset {dataset_name!r} not found: {json_file}"
            )
        dim = first_embedding_dim(json_file)
        if dim is not None:
            return dim
    if json_files:
        return 0
    for record in DatasetCatalog.get(dataset_name):  # registered without a json file
        for annotation in record.get("annotations", []):
            if annotation.get("emb") is not None:
                return len(annotation["emb"])
    return 0


def with_embed_dim(cfg: CfgNode, required: bool = True) -> CfgNode:
    """``cfg`` with EMBED_DIM read from DATASETS.TRAIN when it is 0 (a clone; else ``cfg``).

    ``required=False`` (evaluation, demo) keeps 0 with a warning when the training data is not
    on this machine: the embedding head is not used at inference.
    """
    if cfg.MODEL.SOLOV2.EMBED_DIM > 0 or not cfg.DATASETS.TRAIN:
        return cfg
    try:
        dims = {name: dataset_embedding_dim(name) for name in cfg.DATASETS.TRAIN}
    except (FileNotFoundError, KeyError) as err:  # KeyError: dataset not registered here
        if required:
            raise
        logger.warning(f"MODEL.SOLOV2.EMBED_DIM stays 0 (no embedding head): {err}")
        return cfg
    if len(set(dims.values())) > 1:
        raise ValueError(f"DATASETS.TRAIN mix embedding dimensions {dims}: set one dataset")
    dim = next(iter(dims.values()))
    logger.info(f"MODEL.SOLOV2.EMBED_DIM = {dim}, read from the pseudo-labels of {list(dims)}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.SOLOV2.EMBED_DIM = dim
    return cfg
