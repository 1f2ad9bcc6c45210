#!/usr/bin/env python
"""Leopart: dense self-supervised fine-tuning of a ViT (SEED_SYSTEMS.md 3; uis_d2/leopart/).

    tools/finetune_leopart.py --config-file configs/leopart/coco_vits16_dino.yaml \
        LEOPART.BACKBONE.CHECKPOINT checkpoints/dino_deitsmall16_pretrain.pth
    tools/finetune_leopart.py --config-file CFG --num-gpus 2 [--resume] [KEY VALUE ...]
    tools/finetune_leopart.py --config-file configs/leopart/synthetic_tiny_vit_cpu.yaml

Writes OUTPUT_DIR/model_final.pth (and model_<iter>.pth every SOLVER.CHECKPOINT_PERIOD),
metrics.json, TensorBoard events and loss_curves.png. The tuned ViT is read by every feature
extractor with CHECKPOINT_FORMAT "leopart" (the student; "leopart_teacher": the EMA teacher),
e.g. ``PROPOSALS.EXTRACTOR.CHECKPOINT OUT/model_final.pth`` for the proposal generators or
tools/evaluate_features.py. ``--resume`` continues a killed run from its newest readable
checkpoint. DATASETS.TRAIN takes registered datasets or folder:PATH specs; only images are read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.engine import check_runtime
from uis_d2.leopart.training import run_leopart
from uis_d2.utils.launch import launch_from_args


def prepared_config(args) -> CfgNode:
    """The config file + overrides, checked before any process starts."""
    cfg = load_config(args.config_file, args.opts)
    check_runtime(cfg)
    if not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: name the images to fine-tune on")
    checkpoint = cfg.LEOPART.BACKBONE.CHECKPOINT
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"LEOPART.BACKBONE.CHECKPOINT = {checkpoint!r}: file not found")
    return cfg


def main(args) -> None:
    cfg = prepared_config(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="uis_d2")
    run_leopart(cfg, resume=args.resume)


def cli(argv: list[str] | None = None) -> None:
    args = default_argument_parser().parse_args(argv)
    try:
        prepared_config(args)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    launch_from_args(main, args, (args,))


if __name__ == "__main__":
    cli()
