"""detectron2 ``DefaultTrainer`` for SOLOv2 on pseudo-masks.

Only what differs from the default is overridden: the data loaders (pseudo-mask mapper with
copy-paste), the evaluator (class-agnostic COCO metrics), the embedding dimension read from the
pseudo-labels, DDP on CPU, and a checkpointer that resumes past a truncated checkpoint
(checkpointer.py). Optimiser, LR schedule, AMP (``SOLVER.AMP.ENABLED``), periodic checkpoints
and evaluation (``TEST.EVAL_PERIOD``) and the metric writers (console, metrics.json, TensorBoard)
are detectron2's.
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetFromList,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from uis_d2.data.datasets import register_pseudo_labels
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.engine.checkpointer import ResilientCheckpointer
from uis_d2.engine.embed_dim import with_embed_dim
from uis_d2.engine.unreadable import SkipUnreadable, build_inference_loader
from uis_d2.evaluation import ClassAgnosticEvaluator

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the project's data loading and evaluation."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ is restated because it hands DDP the local rank as a device id,
        # which DDP rejects for CPU models; everything else is the same, in the same order.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        register_configured_pseudo_labels(cfg)
        cfg = with_embed_dim(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = {} if torch.device(cfg.MODEL.DEVICE).type == "cuda" else {"device_ids": None}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = ResilientCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Pseudo-mask loader; copy-paste draws its sources from the same (serialised) dicts, so
        worker processes share one copy of the dataset instead of two."""
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        dataset = DatasetFromList(dicts, copy=False)
        mapper = PseudoMaskDatasetMapper(cfg, is_train=True, copy_paste_sources=dataset)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """Same image decoding as training (``read_image``), test-time resize only; unreadable
        images come through as None under the skip policy (see unreadable.py)."""
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        return build_inference_loader(cfg, dicts)

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """detectron2's evaluation loop; skipped images get no predictions."""
        return super().test(cfg, SkipUnreadable(model), evaluators)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        """Class-agnostic AP/AR; predictions and metrics go to OUTPUT_DIR/inference/<dataset>."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return ClassAgnosticEvaluator(dataset_name, output_dir=output_folder)


def register_configured_pseudo_labels(cfg: CfgNode) -> None:
    """Register INPUT.PSEUDO_MASKS.REGISTER's jsons (idempotent; each process needs it)."""
    for name, json_file, image_root in cfg.INPUT.PSEUDO_MASKS.REGISTER:
        register_pseudo_labels(name, json_file, image_root)


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
