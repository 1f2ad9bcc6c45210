#!/usr/bin/env python
"""Train DeepLab-v3 on semantic pseudo-label maps (COMUS's rounds, MaskDistill's single run), or
evaluate a semantic model.

    tools/train_semantic.py --config-file configs/semantic/comus_voc.yaml [--num-gpus 8]
    tools/train_semantic.py --config-file CFG --resume [KEY VALUE ...]
    tools/train_semantic.py --config-file CFG --eval-only MODEL.WEIGHTS OUT/round2/model_final.pth

Round r writes OUTPUT_DIR/round{r}/ (config.yaml, checkpoints, metrics.json, the evaluation of
DATASETS.TEST under inference/<dataset>/) and, before a further round, labels/ (the maps it
predicted for SEMANTIC.RELABEL_DATASET). ``--resume`` skips finished rounds and labelling
passes and continues an interrupted one (uis_d2/semantic/rounds.py). On CPU, ``--num-gpus N``
starts N processes with the gloo backend.
"""

from __future__ import annotations

import sys

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.engine import Trainer, check_runtime
from uis_d2.engine.checkpointer import ResilientCheckpointer
from uis_d2.semantic.rounds import prepare_semantic_config, run_semantic_rounds
from uis_d2.utils.launch import launch_from_args


def setup(args) -> CfgNode:
    """Config from file + overrides, checked, prepared (map folders and dataset specs
    registered), logged and saved; each round saves its own as round{r}/config.yaml."""
    cfg = load_config(args.config_file, args.opts)
    check_runtime(cfg)
    cfg = prepare_semantic_config(cfg, require_training_data=not args.eval_only)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="uis_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ResilientCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    return run_semantic_rounds(cfg, resume=args.resume)


def cli(argv: list[str] | None = None) -> None:
    args = default_argument_parser().parse_args(argv)
    try:  # a bad config fails here, before any process is spawned
        cfg = load_config(args.config_file, args.opts)
        check_runtime(cfg)
        prepare_semantic_config(cfg, require_training_data=not args.eval_only)
    except (ConfigError, FileNotFoundError, KeyError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    launch_from_args(main, args, (args,))


if __name__ == "__main__":
    cli()
