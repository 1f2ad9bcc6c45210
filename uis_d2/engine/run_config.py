"""A run's config made ready, in one place: the parts of cfg that depend on files on disk.

- ``INPUT.PSEUDO_MASKS.REGISTER``'s pseudo-label jsons become registered datasets. detectron2's
  catalogs live in each process, so every process of a run needs the registration.
- ``MODEL.SOLOV2.EMBED_DIM = 0`` ("as the pseudo-labels say") becomes the width of the training
  pseudo-labels' ``emb``: the embedding head must be sized before the model is built. Not with
  ``INPUT.PSEUDO_MASKS.EMBEDDINGS`` False (models without an embedding head, e.g. R-CNN).

``prepare_run_config`` is called by each tool once per process (tools/train_net.py,
tools/demo.py) and by the self-training loop once per round (its training set changes). A
run saves the prepared cfg as its config.yaml, so the saved file rebuilds exactly the model it
trained.
"""

from __future__ import annotations

import logging
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from uis_d2.data.datasets import register_pseudo_labels
from uis_d2.data.pseudo_labels import EmbeddingLookup, embedding_dim

logger = logging.getLogger(__name__)


def register_configured_pseudo_labels(cfg: CfgNode) -> None:
    """Register INPUT.PSEUDO_MASKS.REGISTER's jsons (idempotent)."""
    for name, json_file, image_root in cfg.INPUT.PSEUDO_MASKS.REGISTER:
        register_pseudo_labels(name, json_file, image_root)


def dataset_embedding_dim(dataset_name: str) -> int:
    """Embedding width of a registered training set's pseudo-labels (0 = none)."""
    metadata = MetadataCatalog.get(dataset_name)
    json_files = getattr(metadata, "json_files", None) or (
        [metadata.json_file] if hasattr(metadata, "json_file") else []
    )
    for json_file in json_files:
        if not Path(json_file).is_file():
            raise FileNotFoundError(
                f"pseudo-label json of dataset {dataset_name!r} not found: {json_file}"
            )
        dim = embedding_dim(json_file)
        if dim is not None:
            return dim
    if json_files:
        return 0
    for record in DatasetCatalog.get(dataset_name):  # registered without a json file
        annotations = record.get("annotations") or []
        embeddings = EmbeddingLookup(record.get("embedding_store")).embeddings(annotations[:1])
        if embeddings is not None:
            return embeddings.shape[1]
    return 0


def prepare_run_config(cfg: CfgNode, *, require_training_data: bool = True) -> CfgNode:
    """A frozen copy of ``cfg`` with the pseudo-labels registered and EMBED_DIM resolved.

    ``require_training_data=False`` (evaluation, pictures) keeps EMBED_DIM 0 with a warning when
    the training data is not on this machine: the embedding head is not needed at inference.
    """
    register_configured_pseudo_labels(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.INPUT.PSEUDO_MASKS.EMBEDDINGS and cfg.MODEL.SOLOV2.EMBED_DIM == 0 and cfg.DATASETS.TRAIN:
        try:
            dims = {name: dataset_embedding_dim(name) for name in cfg.DATASETS.TRAIN}
        except (FileNotFoundError, KeyError) as err:  # KeyError: dataset not registered here
            if require_training_data:
                raise
            logger.warning(f"MODEL.SOLOV2.EMBED_DIM stays 0 (no embedding head): {err}")
            dims = {}
        if len(set(dims.values())) > 1:
            raise ValueError(f"DATASETS.TRAIN mix embedding dimensions {dims}: set one dataset")
        if dims:
            cfg.MODEL.SOLOV2.EMBED_DIM = next(iter(dims.values()))
            logger.info(
                f"MODEL.SOLOV2.EMBED_DIM = {cfg.MODEL.SOLOV2.EMBED_DIM}, read from the "
                f"pseudo-labels of {list(dims)}"
            )
    cfg.freeze()
    return cfg
