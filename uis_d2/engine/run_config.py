"""A run's config made ready, in one place: the parts of cfg that depend on files on disk.

- ``INPUT.PSEUDO_MASKS.REGISTER``'s pseudo-label jsons, and the dataset specs of
  ``DATASETS.TRAIN`` / ``TEST`` (``pseudo:JSON``, ``folder:PATH``; data/image_folder.py), become
  registered datasets. detectron2's catalogs live in each process, so every process of a run
  needs the registration.
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

from uis_d2.config.loading import ConfigError, model_num_classes
from uis_d2.data.datasets import register_pseudo_labels
from uis_d2.data.image_folder import FOLDER_PREFIX, PSEUDO_PREFIX, ensure_dataset, is_dataset_spec
from uis_d2.data.pseudo_labels import EmbeddingLookup, embedding_dim

logger = logging.getLogger(__name__)


def class_aware_pseudo_labels(cfg: CfgNode) -> bool:
    """Whether pseudo-label files load with their categories as classes
    (INPUT.PSEUDO_MASKS.CLASSES)."""
    return cfg.INPUT.PSEUDO_MASKS.CLASSES == "pseudo"


def check_pseudo_classes(cfg: CfgNode) -> None:
    """With pseudo-classes, every training set must name as many classes as the model has,
    and self-training (which writes class-agnostic labels) is not available."""
    if not class_aware_pseudo_labels(cfg):
        return
    if cfg.SELF_TRAINING.ROUNDS > 1:
        raise ConfigError(
            "SELF_TRAINING.ROUNDS > 1 with INPUT.PSEUDO_MASKS.CLASSES pseudo: self-training "
            "writes class-agnostic pseudo-labels; train one round per clustering"
        )
    expected = model_num_classes(cfg)
    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes", [])
        if len(classes) != expected:
            raise ConfigError(
                f"DATASETS.TRAIN {name!r} has {len(classes)} pseudo-classes but the model "
                f"predicts {expected} (MODEL.SOLOV2.NUM_CLASSES / MODEL.ROI_HEADS.NUM_CLASSES)"
            )


def register_configured_pseudo_labels(cfg: CfgNode) -> None:
    """Register INPUT.PSEUDO_MASKS.REGISTER's jsons (idempotent)."""
    for name, json_file, image_root in cfg.INPUT.PSEUDO_MASKS.REGISTER:
        register_pseudo_labels(name, json_file, image_root, class_aware_pseudo_labels(cfg))


def register_dataset_specs(cfg: CfgNode, require_training_data: bool = True) -> None:
    """Register the specs DATASETS.TRAIN and DATASETS.TEST name (idempotent).

    An image folder holds no masks to train on: naming one in DATASETS.TRAIN is a ConfigError
    saying how to get its pseudo-labels, rather than a KeyError deep in the data loader.
    Without ``require_training_data`` a training json absent from this machine is left
    unregistered (``prepare_run_config`` then warns that EMBED_DIM stays 0).
    """
    for name in cfg.DATASETS.TRAIN:
        if name.startswith(FOLDER_PREFIX):
            raise ConfigError(
                f"DATASETS.TRAIN: {name!r} is an image folder, without masks to train on; write "
                f"its pseudo-labels with tools/generate_proposals.py --dataset {name} --output "
                f"OUT.json and train on '{PSEUDO_PREFIX}OUT.json'"
            )
    for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
        if not is_dataset_spec(name):
            continue
        try:
            class_aware = class_aware_pseudo_labels(cfg) and name in cfg.DATASETS.TRAIN
            ensure_dataset(name, cfg.INPUT.BAD_IMAGE_POLICY, class_aware)
        except FileNotFoundError:
            if require_training_data or name not in cfg.DATASETS.TRAIN:
                raise


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
    """A frozen copy of ``cfg`` with the pseudo-labels and dataset specs registered and
    EMBED_DIM resolved.

    ``require_training_data=False`` (evaluation, pictures) keeps EMBED_DIM 0 with a warning when
    the training data is not on this machine: the embedding head is not needed at inference.
    """
    register_configured_pseudo_labels(cfg)
    register_dataset_specs(cfg, require_training_data)
    if require_training_data:
        check_pseudo_classes(cfg)
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
