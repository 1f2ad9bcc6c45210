"""Shared set-up of the training tests: a tiny synthetic dataset and a tiny SOLOv2 config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.config import get_cfg
from uis_d2.data.synthetic import generate_synthetic_dataset

EMBED_DIM = 8


def make_synthetic_root(root: Path, num_train: int = 3, num_val: int = 2) -> Path:
    """$DETECTRON2_DATASETS layout with synthetic/{train,val} and a pseudo-label json that is
    the ground truth plus a score and a random embedding per mask."""
    paths = generate_synthetic_dataset(root / "synthetic", num_train, num_val, seed=0)
    coco = json.loads(Path(paths["train_json"]).read_text())
    rng = np.random.default_rng(0)
    for annotation in coco["annotations"]:
        annotation["category_id"] = 1
        annotation["score"] = float(rng.uniform(0.5, 1.0))
        annotation["emb"] = rng.standard_normal(EMBED_DIM).round(4).tolist()
    coco["categories"] = [{"id": 1, "name": "object"}]
    pseudo = root / "synthetic/pseudo/train.json"
    pseudo.parent.mkdir(parents=True, exist_ok=True)
    pseudo.write_text(json.dumps(coco))
    return root


def shrink_solov2(cfg) -> None:
    """R18-FPN with 32-channel heads and small grids: a forward takes milliseconds."""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    s = cfg.MODEL.SOLOV2
    s.INSTANCE_IN_CHANNELS = s.MASK_IN_CHANNELS = 32
    s.INSTANCE_CHANNELS = s.MASK_CHANNELS = 32
    s.NUM_KERNELS = s.NUM_MASKS = 32
    s.NUM_INSTANCE_CONVS = 1
    s.NUM_GRIDS = [8, 6, 4, 3, 2]
    s.FPN_SCALE_RANGES = [[1, 24], [12, 48], [24, 96], [48, 192], [96, 2048]]
    # An untrained model scores ~0.01 (the focal prior): keep such predictions so that
    # evaluation and self-training have something to work on.
    s.SCORE_THR = 0.0
    s.UPDATE_THR = 0.0


def tiny_training_cfg(output_dir: Path, max_iter: int = 2):
    """R18-FPN with 32-channel heads on 64-px images, trained from scratch on CPU."""
    cfg = get_cfg()
    cfg.merge_from_file(str(Path(__file__).resolve().parents[1] / "configs/Base-SOLOv2.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    shrink_solov2(cfg)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # detectron2's default: stem and res2 only
    s = cfg.MODEL.SOLOV2
    s.NMS_PRE = 50
    s.MAX_PER_IMG = 10
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.INPUT.COPY_PASTE.PROB = 1.0
    cfg.DATASETS.TRAIN = ("synthetic_train_pseudo",)
    cfg.DATASETS.TEST = ("synthetic_val",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000  # only model_final: checkpoints are 90 MB each
    cfg.SELF_TRAINING.SCORE_THRESH = 0.0
    cfg.SELF_TRAINING.MAX_PER_IMAGE = 3
    cfg.SEED = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def eval_only(cfg, weights: Path, config_file: Path) -> dict:
    """``tools/train_net.py --eval-only MODEL.WEIGHTS weights`` on ``cfg`` dumped to a file, as a
    user reruns an evaluation later."""
    from scripts import load_script

    config_file.write_text(cfg.dump())
    train_net = load_script("tools/train_net.py")
    argv = ["--config-file", str(config_file), "--eval-only", "MODEL.WEIGHTS", str(weights)]
    return train_net.main(train_net.default_argument_parser().parse_args(argv))
