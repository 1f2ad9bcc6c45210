#!/usr/bin/env python
"""Train SOLOv2, Mask R-CNN or Cascade Mask R-CNN on pseudo-masks (with self-training rounds),
or DeepLab-v3 on semantic pseudo-label maps (COMUS's rounds, MaskDistill's single run), or
evaluate a model.

    tools/train_net.py --config-file configs/coco/solov2_R101_densecl_engstler.yaml
    tools/train_net.py --config-file CFG --num-gpus 4 [--resume] [KEY VALUE ...]
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/round1/model_final.pth
    tools/train_net.py --config-file CFG DATASETS.TRAIN '("pseudo:OUT.json",)' DATASETS.TEST '()'

DATASETS.TRAIN and DATASETS.TEST take registered names or specs (uis_d2/data/image_folder.py):
``pseudo:OUT.json`` trains on the pseudo-labels tools/generate_proposals.py wrote, e.g. for
``--dataset folder:PATH``, with the images where its info["image_root"] says.

Training writes OUTPUT_DIR/round{r}/ per round (r = 1..SELF_TRAINING.ROUNDS): checkpoints,
metrics.json, TensorBoard events, inference/<dataset>/class_agnostic_{predictions,metrics}.json,
and, before a further round, pseudo_labels.json. A semantic config (META_ARCHITECTURE
SemanticSegmentor, uis_d2/semantic/rounds.py) writes round{r}/ per SEMANTIC.ROUNDS with the
evaluation of DATASETS.TEST and, before a further round, labels/ (the maps it predicted for
SEMANTIC.RELABEL_DATASET). ``--resume`` continues an interrupted run (finished rounds and
labelling passes are skipped).
On CPU, ``--num-gpus N`` starts N processes with the gloo backend. Before anything starts, the
annotation jsons of DATASETS.TRAIN and DATASETS.TEST are validated (uis_d2.data.validation).
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
from uis_d2.data.validation import AnnotationError
from uis_d2.engine import Trainer, check_runtime, run_self_training
from uis_d2.engine.checkpointer import ResilientCheckpointer
from uis_d2.engine.data_checks import validate_datasets
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.semantic.data import is_semantic
from uis_d2.semantic.rounds import prepare_semantic_config, run_semantic_rounds
from uis_d2.utils.launch import launch_from_args


def prepared_config(args) -> CfgNode:
    """The config file + overrides, checked and prepared for an instance or a semantic run."""
    cfg = load_config(args.config_file, args.opts)
    check_runtime(cfg)
    prepare = prepare_semantic_config if is_semantic(cfg) else prepare_run_config
    return prepare(cfg, require_training_data=not args.eval_only)


def setup(args) -> CfgNode:
    """Config from file + overrides, checked, prepared (engine/run_config.py), logged and
    saved; each self-training round prepares and saves its own as round{r}/config.yaml."""
    cfg = prepared_config(args)
    default_setup(cfg, args)
    # default_setup configures detectron2's loggers only; the project's report the same way.
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
    run = run_semantic_rounds if is_semantic(cfg) else run_self_training
    return run(cfg, resume=args.resume)


def cli(argv: list[str] | None = None) -> None:
    args = default_argument_parser().parse_args(argv)
    try:
        # Checked once here so that a bad config or annotation file fails before any process
        # is spawned (and before hours of training reach the bad annotation).
        cfg = prepared_config(args)
        if not is_semantic(cfg):  # semantic maps are PNG folders, checked when registered
            validate_datasets(cfg, train=not args.eval_only)
    except (ConfigError, FileNotFoundError, KeyError, RuntimeError, AnnotationError) as err:
        sys.exit(f"error: {err}")
    launch_from_args(main, args, (args,))


if __name__ == "__main__":
    cli()
