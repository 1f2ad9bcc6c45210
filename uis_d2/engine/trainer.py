"""detectron2 ``DefaultTrainer`` for any model on pseudo-masks (SOLOv2, detectron2's R-CNNs) or
on semantic pseudo-label maps (detectron2's ``SemanticSegmentor``, uis_d2/semantic/).

Only what differs from the default is overridden: the data loaders (pseudo-mask mapper with
copy-paste; the semantic stage's augmentations), the evaluator (class-agnostic COCO metrics),
the optimiser (``SOLVER.OPTIMIZER``: detectron2's SGD or Adam, optimizer.py), DDP on CPU, and a
checkpointer that resumes past a truncated checkpoint (checkpointer.py). LR schedule, AMP
(``SOLVER.AMP.ENABLED``), periodic checkpoints and evaluation (``TEST.EVAL_PERIOD``) and the
metric writers (console, metrics.json, TensorBoard) are detectron2's. The cfg is a prepared one
(engine/run_config.py: pseudo-labels registered, EMBED_DIM resolved).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import detectron2.engine.defaults as d2_defaults
import torch
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetFromList,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer

from uis_d2.config.loading import model_num_classes
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.data.pseudo_labels import CompactDataset
from uis_d2.data.semantic_datasets import SEMANTIC_EVALUATOR_TYPE
from uis_d2.engine.checkpointer import ResilientCheckpointer
from uis_d2.engine.optimizer import build_optimizer
from uis_d2.engine.unreadable import SkipUnreadable, build_inference_loader
from uis_d2.evaluation import ClassAgnosticEvaluator
from uis_d2.evaluation.semantic import UnsupervisedSemSegEvaluator
from uis_d2.semantic import data as semantic_data  # a module: it imports engine/ in turn


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the project's data loading and evaluation."""

    def __init__(self, cfg: CfgNode):
        with _defaults_for(cfg):
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Pseudo-mask loader; copy-paste draws its sources from the same serialized records,
        so worker processes share one copy of the dataset instead of two. Semantic models:
        detectron2's DatasetMapper with the semantic stage's augmentations."""
        if semantic_data.is_semantic(cfg):
            return semantic_data.build_semantic_train_loader(cfg)
        dataset = training_dataset(cfg)
        mapper = PseudoMaskDatasetMapper(cfg, is_train=True, copy_paste_sources=dataset)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """Same image decoding as training (``read_image``), test-time resize only; unreadable
        images come through as None under the skip policy (see unreadable.py). Semantic
        models see the square input they were trained at."""
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        if semantic_data.is_semantic(cfg):
            return semantic_data.build_semantic_inference_loader(cfg, dicts)
        return build_inference_loader(cfg, dicts)

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """detectron2's evaluation loop; skipped images get no predictions."""
        return super().test(cfg, SkipUnreadable(model), evaluators)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        """Class-agnostic AP/AR, or on a semantic split (evaluator_type "unsupervised_sem_seg")
        the pseudo-class metrics of SEMANTIC.EVAL_MATCHINGS over the K + 1 predicted ids;
        predictions and metrics go to OUTPUT_DIR/inference/<dataset>."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        class_aware = model_num_classes(cfg) > 1  # pseudo-classes kept in the predictions file
        semantic_split = (
            MetadataCatalog.get(dataset_name).get("evaluator_type", None) == SEMANTIC_EVALUATOR_TYPE
        )
        if semantic_split and not semantic_data.is_semantic(cfg):
            # An instance model on a semantic split (MaskDistill's confident maps of VOC
            # train_aug): its predictions are the product, there are no instances to score.
            return ClassAgnosticEvaluator(
                dataset_name, output_folder, class_aware=class_aware, with_metrics=False
            )
        if semantic_split:
            return UnsupervisedSemSegEvaluator(
                dataset_name,
                num_clusters=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES - 1,
                matchings=cfg.SEMANTIC.EVAL_MATCHINGS,
                allow_train_split=cfg.SEMANTIC.EVAL_ALLOW_TRAIN_SPLIT,
                output_dir=output_folder,
            )
        return ClassAgnosticEvaluator(
            dataset_name, output_dir=output_folder, class_aware=class_aware
        )

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model):
        return build_optimizer(cfg, model)


def training_dataset(cfg: CfgNode) -> torchdata.Dataset:
    """DATASETS.TRAIN serialized: pseudo-label files come as ``CompactDataset``s (built while
    read), other registered datasets as detectron2's lists, serialized by ``DatasetFromList``.
    DATALOADER.FILTER_EMPTY_ANNOTATIONS drops images without masks either way."""
    filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=filter_empty)
    if isinstance(dataset, list):
        return DatasetFromList(dataset, copy=False)
    # detectron2 v0.6 wraps catalog datasets in a ConcatDataset; main returns a single one as is.
    datasets = dataset.datasets if isinstance(dataset, torchdata.ConcatDataset) else [dataset]
    if not all(isinstance(d, CompactDataset) for d in datasets):
        raise ValueError(
            f"DATASETS.TRAIN = {cfg.DATASETS.TRAIN} mixes pseudo-label files with other datasets: "
            "register every training set with register_pseudo_labels (INPUT.PSEUDO_MASKS.REGISTER)"
        )
    parts = [d.with_annotations() if filter_empty else d for d in datasets]
    return parts[0] if len(parts) == 1 else torchdata.ConcatDataset(parts)


@contextmanager
def _defaults_for(cfg: CfgNode) -> Iterator[None]:
    """What ``DefaultTrainer.__init__`` builds differently here, swapped in while it runs:

    - on a CPU, DDP without device ids: ``create_ddp_model`` hands DDP the local rank as a
      device id, which DDP rejects for CPU models (multi-process training on CPU, gloo);
    - the checkpointer: ``ResilientCheckpointer`` instead of ``DetectionCheckpointer``, so the
      periodic checkpoint hook and ``resume_or_load`` both use it.

    Both names are looked up in ``detectron2.engine.defaults`` when ``__init__`` runs
    (tests/test_trainer.py fails if detectron2 stops building them there).
    """
    saved = d2_defaults.create_ddp_model, d2_defaults.DetectionCheckpointer
    if torch.device(cfg.MODEL.DEVICE).type != "cuda":
        d2_defaults.create_ddp_model = functools.partial(saved[0], device_ids=None)
    d2_defaults.DetectionCheckpointer = ResilientCheckpointer
    try:
        yield
    finally:
        d2_defaults.create_ddp_model, d2_defaults.DetectionCheckpointer = saved


def check_runtime(cfg: CfgNode) -> None:
    """Fail at start-up, naming the option, on settings that would only break later."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not Path(weights).is_file():
        raise FileNotFoundError(
            f"MODEL.WEIGHTS = {weights!r}: file not found (convert a DenseCL/MoCo checkpoint "
            "with tools/convert_checkpoint.py, or set MODEL.WEIGHTS '' to train from scratch)"
        )
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r} but CUDA is not available: add MODEL.DEVICE cpu"
        )
    if cfg.SOLVER.AMP.ENABLED and device.type != "cuda":
        raise RuntimeError("SOLVER.AMP.ENABLED needs a CUDA device: set it False on CPU")
