"""Leopart's fine-tuning run on detectron2's training loop (SEED_SYSTEMS.md 3.6).

detectron2's ``SimpleTrainer`` (``AMPTrainer`` with SOLVER.AMP.ENABLED on CUDA) runs the steps;
its hooks give the learning-rate schedule, periodic checkpoints, the metrics writers (ETA,
TensorBoard, metrics.json) and DDP. Leopart's own schedules (weight decay and teacher momentum,
both cosine per step) are one hook here. ``--resume`` restarts from the newest readable
checkpoint (``ResilientCheckpointer``): the model, its teacher and queue, the optimizer and the
scheduler are all in it, and the per-step schedules are functions of the iteration.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.engine.defaults import create_ddp_model, default_writers
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from fvcore.common.param_scheduler import CosineParamScheduler

from uis_d2.data.image_folder import ensure_dataset
from uis_d2.engine.checkpointer import ResilientCheckpointer
from uis_d2.leopart.crops import MultiCropMapper
from uis_d2.leopart.model import LeopartModel
from uis_d2.report.curves import plot_loss_curves

logger = logging.getLogger(__name__)

LOSS_CURVES = "loss_curves.png"
# Parameters of 1 dimension (biases, norm scales, class and position embeddings are not) get no
# weight decay (ref): the group key that marks the decayed ones.
DECAYED = "leopart_decayed"


def build_leopart_optimizer(cfg: CfgNode, model: LeopartModel) -> torch.optim.Optimizer:
    """AdamW: the backbone at LEOPART.OPTIM.BACKBONE_LR, head + prototypes at HEAD_LR; weight
    decay only on parameters of more than one dimension (set per step by ``LeopartSchedules``)."""
    optim = cfg.LEOPART.OPTIM
    groups = []
    for modules, lr in (
        ((model.student,), float(optim.BACKBONE_LR)),
        ((model.head, model.prototypes), float(optim.HEAD_LR)),
    ):
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        for decayed in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decayed]
            if chosen:
                weight_decay = float(optim.WEIGHT_DECAY[0]) if decayed else 0.0
                groups.append(
                    {"params": chosen, "lr": lr, "weight_decay": weight_decay, DECAYED: decayed}
                )
    return torch.optim.AdamW(groups)


class LeopartSchedules(hooks.HookBase):
    """Per step, cosine from the first to the second value over the run: the weight decay of
    the decayed groups (before the step) and the teacher's EMA momentum (after it)."""

    def __init__(self, model: LeopartModel, cfg: CfgNode) -> None:
        max_iter = int(cfg.SOLVER.MAX_ITER)
        start, end = (float(v) for v in cfg.LEOPART.OPTIM.WEIGHT_DECAY)
        self._weight_decay = CosineParamScheduler(start, end)
        start, end = (float(v) for v in cfg.LEOPART.OPTIM.TEACHER_MOMENTUM)
        self._momentum = CosineParamScheduler(start, end)
        self._model = model
        self._max_iter = max_iter

    def _where(self) -> float:
        return min(self.trainer.iter / self._max_iter, 1.0)

    def before_step(self) -> None:
        weight_decay = self._weight_decay(self._where())
        for group in self.trainer.optimizer.param_groups:
            if group[DECAYED]:
                group["weight_decay"] = weight_decay
        self.trainer.storage.put_scalar("leopart/weight_decay", weight_decay, smoothing_hint=False)

    def after_step(self) -> None:
        momentum = self._momentum(self._where())
        self._model.update_teacher(momentum)
        self.trainer.storage.put_scalar("leopart/teacher_momentum", momentum, smoothing_hint=False)


class ProgressLogger(hooks.HookBase):
    """images/s and ETA every ``period`` steps, from the wall time of the last period."""

    def __init__(self, images_per_step: int, max_iter: int, period: int) -> None:
        self._images_per_step = images_per_step
        self._max_iter = max_iter
        self._period = period
        self._mark: tuple[int, float] | None = None

    def after_step(self) -> None:
        step, now = self.trainer.iter + 1, time.perf_counter()
        if self._mark is None:
            self._mark = (step, now)
            return
        if step % self._period and step != self._max_iter:
            return
        steps, seconds = step - self._mark[0], now - self._mark[1]
        self._mark = (step, now)
        if steps <= 0 or seconds <= 0:
            return
        rate = steps * self._images_per_step / seconds
        eta = (self._max_iter - step) * seconds / steps
        logger.info(
            f"leopart step {step}/{self._max_iter}: {rate:.1f} images/s, "
            f"{seconds / steps:.2f} s/step, ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
        )


class LossCurvesWriter(hooks.HookBase):
    """OUTPUT_DIR/loss_curves.png from metrics.json at every checkpoint and at the end, so a
    killed run still has its curve."""

    def __init__(self, output_dir: str, period: int) -> None:
        self._metrics = Path(output_dir) / "metrics.json"
        self._png = Path(output_dir) / LOSS_CURVES
        self._period = period

    def _write(self) -> None:
        if comm.is_main_process() and self._metrics.is_file():
            try:
                plot_loss_curves(self._metrics, self._png, "Leopart fine-tuning")
            except ValueError as err:  # nothing logged yet
                logger.info("no loss curve yet: %s", err)

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0:
            self._write()

    def after_train(self) -> None:
        self._write()


def build_leopart_loader(cfg: CfgNode):
    """Multi-crop batches of the images of DATASETS.TRAIN (registered names or folder:PATH;
    annotations, if any, are never read)."""
    policy = cfg.INPUT.BAD_IMAGE_POLICY
    records = [
        {"file_name": r["file_name"]}
        for name in cfg.DATASETS.TRAIN
        for r in DatasetCatalog.get(ensure_dataset(name, policy))
    ]
    if not records:
        raise ValueError(f"DATASETS.TRAIN = {list(cfg.DATASETS.TRAIN)} holds no image")
    return build_detection_train_loader(
        dataset=records,
        mapper=MultiCropMapper(cfg),
        total_batch_size=int(cfg.SOLVER.IMS_PER_BATCH),
        aspect_ratio_grouping=False,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
    )


def run_leopart(cfg: CfgNode, resume: bool = False) -> Path:
    """Fine-tune as ``cfg`` says; returns the final checkpoint (OUTPUT_DIR/model_final.pth)."""
    device = torch.device(cfg.MODEL.DEVICE)
    model = LeopartModel(cfg).to(device)
    optimizer = build_leopart_optimizer(cfg, model)
    max_iter = int(cfg.SOLVER.MAX_ITER)
    scheduler = LRMultiplier(optimizer, CosineParamScheduler(1.0, 0.0), max_iter)
    ddp = functools.partial(create_ddp_model, broadcast_buffers=False)
    if device.type != "cuda":
        ddp = functools.partial(ddp, device_ids=None)
    trained = ddp(model)
    loader = build_leopart_loader(cfg)
    use_amp = bool(cfg.SOLVER.AMP.ENABLED) and device.type == "cuda"
    trainer = (AMPTrainer if use_amp else SimpleTrainer)(trained, loader, optimizer)
    checkpointer = ResilientCheckpointer(
        model, cfg.OUTPUT_DIR, optimizer=optimizer, scheduler=scheduler
    )
    start_iter = checkpointer.resume_or_load("", resume=resume).get("iteration", -1) + 1
    period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
    log_period = 20
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer, scheduler),
            LeopartSchedules(model, cfg),
            ProgressLogger(int(cfg.SOLVER.IMS_PER_BATCH), max_iter, log_period),
            hooks.PeriodicCheckpointer(checkpointer, period, max_iter=max_iter)
            if comm.is_main_process()
            else None,
            hooks.PeriodicWriter(default_writers(cfg.OUTPUT_DIR, max_iter), period=log_period)
            if comm.is_main_process()
            else None,
            LossCurvesWriter(cfg.OUTPUT_DIR, period),
        ]
    )
    if start_iter >= max_iter:
        logger.info("already trained to SOLVER.MAX_ITER = %d: nothing to do", max_iter)
    else:
        trainer.train(start_iter, max_iter)
    return Path(cfg.OUTPUT_DIR) / "model_final.pth"
