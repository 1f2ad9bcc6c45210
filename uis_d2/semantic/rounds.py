"""COMUS's self-training rounds of the semantic stage (paper 3.2, Alg. 2; ref ``semseg/``).

Round 1 trains on DATASETS.TRAIN (the initial maps, e.g. registered by SEMANTIC.PSEUDO_LABELS).
Before round r > 1, round r-1's final model labels every image of SEMANTIC.RELABEL_DATASET (the
square input, hard argmax, nearest back to the image's size, no confidence filter; with
SEMANTIC.RELABEL_CRF.ENABLED, MaskDistill's CRF rounds, the argmax of a dense CRF on the
softmax and the input image instead) into
OUTPUT_DIR/round{r-1}/labels/, and round r trains on those maps from MODEL.WEIGHTS: a fresh
initialisation, never round r-1's model (COMUS re-initialises the student from DINO).

Each round writes OUTPUT_DIR/round{r}/ (config.yaml, checkpoints, metrics.json, evaluation on
DATASETS.TEST); ``labels/labels_info.json`` is written once every map is, so it marks a
finished labelling pass. With ``resume``, a trained round (model_final.pth) and a finished pass
are skipped, a partly trained round continues from its last checkpoint, and an interrupted pass
keeps the maps it wrote (each is written atomically). The same pattern as the instance models'
self-training (engine/self_training.py), whose round folders and model loading it reuses.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from torch import nn

from uis_d2.config.loading import _check, _check_choice, _check_fraction, _check_positive
from uis_d2.data.image_folder import ensure_dataset
from uis_d2.data.semantic import resize_labels
from uis_d2.engine.optimizer import OPTIMIZERS
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.engine.self_training import FINAL_MODEL_FILE, load_trained_model, round_dir
from uis_d2.engine.trainer import Trainer
from uis_d2.evaluation.cluster_matching import MATCHINGS
from uis_d2.proposals.dense_crf import CRFParams, dense_crf_labels
from uis_d2.semantic.data import (
    AUGMENTATIONS,
    SEMANTIC_META_ARCHITECTURE,
    build_semantic_inference_loader,
)
from uis_d2.semantic.pseudo_maps import (
    LABELS_INFO_FILE,
    dataset_image_root,
    label_map_path,
    register_semantic_pseudo_labels,
    relative_image_name,
    write_label_map,
)
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

LABELS_DIR = "labels"
OUTPUT_STRIDE = 8  # dilated ResNet with RES4_DILATION 2, RES5_DILATION 4


def round_labels_name(round_index: int) -> str:
    """Registered name of the maps round ``round_index`` predicted (the next round's data)."""
    return f"uis_semantic_round{round_index}_labels"


def validate_semantic_config(cfg: CfgNode) -> None:
    """Reject semantic-stage settings no run could use, naming the key."""
    _check(
        cfg.MODEL.META_ARCHITECTURE == SEMANTIC_META_ARCHITECTURE,
        "MODEL.META_ARCHITECTURE",
        cfg.MODEL.META_ARCHITECTURE,
        f"the semantic stage trains {SEMANTIC_META_ARCHITECTURE!r}",
    )
    s = cfg.SEMANTIC
    size = s.INPUT_SIZE
    _check(
        size > 0 and size % OUTPUT_STRIDE == 0,
        "SEMANTIC.INPUT_SIZE",
        size,
        f"must be a positive multiple of the output stride {OUTPUT_STRIDE}",
    )
    _check_choice(cfg, "SEMANTIC.AUGMENTATION", AUGMENTATIONS)
    _check(0.0 < s.MIN_CROP_AREA <= 1.0, "SEMANTIC.MIN_CROP_AREA", s.MIN_CROP_AREA, "in (0, 1]")
    _check(
        len(s.SCALE_RANGE) == 2 and 0 < s.SCALE_RANGE[0] <= s.SCALE_RANGE[1],
        "SEMANTIC.SCALE_RANGE",
        s.SCALE_RANGE,
        "must be [low, high] with 0 < low <= high",
    )
    _check_positive(cfg, "SEMANTIC.ROTATION", allow_zero=True)
    _check_positive(cfg, "SEMANTIC.ROUNDS")
    _check(
        s.ROUNDS == 1 or bool(s.RELABEL_DATASET),
        "SEMANTIC.RELABEL_DATASET",
        s.RELABEL_DATASET,
        f"names the images round 1's model labels for the later rounds (ROUNDS = {s.ROUNDS})",
    )
    if s.RELABEL_CRF.ENABLED:
        _check(
            s.ROUNDS > 1,
            "SEMANTIC.RELABEL_CRF.ENABLED",
            True,
            "refines the relabelling between rounds: set SEMANTIC.ROUNDS >= 2",
        )
        for key in ("ITERS", "GAUSSIAN_SXY", "BILATERAL_SXY", "BILATERAL_SRGB"):
            _check_positive(cfg, f"SEMANTIC.RELABEL_CRF.{key}")
    epochs = s.ROUND_EPOCHS
    _check(
        not epochs or (len(epochs) == s.ROUNDS and all(e > 0 for e in epochs)),
        "SEMANTIC.ROUND_EPOCHS",
        epochs,
        f"needs one positive number of epochs per round ({s.ROUNDS}), or [] for SOLVER.MAX_ITER",
    )
    _check(
        not epochs or not cfg.SOLVER.STEPS,
        "SOLVER.STEPS",
        cfg.SOLVER.STEPS,
        "must be empty with SEMANTIC.ROUND_EPOCHS (iteration steps do not follow the epochs)",
    )
    for entry in s.PSEUDO_LABELS:
        _check(
            len(entry) == 3 and all(isinstance(x, str) and x for x in entry),
            "SEMANTIC.PSEUDO_LABELS",
            entry,
            "each entry must be [name, images, label_dir] (non-empty strings)",
        )
    _check_choice(cfg, "SOLVER.OPTIMIZER", OPTIMIZERS)
    matchings = s.EVAL_MATCHINGS
    _check(
        len(matchings) > 0 and all(m in MATCHINGS for m in matchings),
        "SEMANTIC.EVAL_MATCHINGS",
        matchings,
        f"needs one or more of {list(MATCHINGS)}",
    )
    share = cfg.MODEL.SEM_SEG_HEAD.OHEM_SHARE
    _check(share > 0, "MODEL.SEM_SEG_HEAD.OHEM_SHARE", share, "must lie in (0, 1]")
    _check_fraction(cfg, "MODEL.SEM_SEG_HEAD.OHEM_SHARE")


def prepare_semantic_config(cfg: CfgNode, *, require_training_data: bool = True) -> CfgNode:
    """Validate, register SEMANTIC.PSEUDO_LABELS' map folders, and prepare the run
    (engine/run_config.py); every process of a run calls it."""
    validate_semantic_config(cfg)
    policy = cfg.INPUT.BAD_IMAGE_POLICY
    for name, images, label_dir in cfg.SEMANTIC.PSEUDO_LABELS:
        register_semantic_pseudo_labels(name, images, label_dir, policy)
    if cfg.SEMANTIC.ROUNDS > 1:  # an unknown name fails now, not after round 1
        ensure_dataset(cfg.SEMANTIC.RELABEL_DATASET, policy)
    return prepare_run_config(cfg, require_training_data=require_training_data)


def relabel_crf_params(cfg: CfgNode) -> CRFParams | None:
    """SEMANTIC.RELABEL_CRF's constants, or None when the CRF is off."""
    c = cfg.SEMANTIC.RELABEL_CRF
    if not c.ENABLED:
        return None
    return CRFParams(
        iters=int(c.ITERS),
        gaussian_sxy=float(c.GAUSSIAN_SXY),
        gaussian_compat=float(c.GAUSSIAN_COMPAT),
        bilateral_sxy=float(c.BILATERAL_SXY),
        bilateral_srgb=float(c.BILATERAL_SRGB),
        bilateral_compat=float(c.BILATERAL_COMPAT),
    )


def predicted_labels(
    scores: torch.Tensor, image: torch.Tensor, image_format: str, crf: CRFParams | None
) -> torch.Tensor:
    """(H, W) ids from the model's (K + 1, H, W) scores on its input ``image`` (3, H, W):
    the argmax, or that of the CRF-refined softmax."""
    if crf is None:
        return scores.argmax(dim=0)
    rgb = image.flip(0) if image_format == "BGR" else image
    return dense_crf_labels(rgb, scores.float().softmax(dim=0), crf)


@torch.no_grad()
def predict_label_maps(
    cfg: CfgNode,
    model: nn.Module,
    dataset_name: str,
    label_dir: str | Path,
    *,
    skip_existing: bool = False,
) -> int:
    """Write ``model``'s map of every image of ``dataset_name`` into ``label_dir`` (the layout
    of pseudo_maps.py); returns how many this process wrote. Each process labels its share of
    the images (detectron2's inference sampler). ``skip_existing`` keeps maps already there."""
    ensure_dataset(dataset_name, cfg.INPUT.BAD_IMAGE_POLICY)
    image_root = dataset_image_root(dataset_name)
    dicts = []
    for record in get_detection_dataset_dicts([dataset_name], filter_empty=False):
        path = label_map_path(label_dir, relative_image_name(record["file_name"], image_root))
        if not (skip_existing and path.is_file()):
            dicts.append({**record, "label_map_file": str(path)})
    written = 0
    crf = relabel_crf_params(cfg)
    with inference_context(model):
        for inputs in build_semantic_inference_loader(cfg, dicts):
            readable = [x for x in inputs if x is not None]  # None: unreadable, skipped
            if not readable:
                continue
            sizes = [(x["height"], x["width"]) for x in readable]
            for x in readable:  # predict at the input size; resized back nearest below
                x["height"], x["width"] = x["image"].shape[-2:]
            for x, size, output in zip(readable, sizes, model(readable), strict=True):
                labels = predicted_labels(output["sem_seg"], x["image"], cfg.INPUT.FORMAT, crf)
                labels = labels.to(torch.uint8).cpu().numpy()
                write_label_map(x["label_map_file"], resize_labels(labels, size))
                written += 1
    return written


def _round_config(cfg: CfgNode, out: Path, train_datasets: list[str], epochs: float) -> CfgNode:
    """Round config: its own OUTPUT_DIR and training sets, MAX_ITER from ``epochs`` (0 = keep)."""
    round_cfg = cfg.clone()
    round_cfg.defrost()
    round_cfg.OUTPUT_DIR = str(out)
    round_cfg.DATASETS.TRAIN = tuple(train_datasets)
    round_cfg = prepare_semantic_config(round_cfg)
    if epochs:
        round_cfg.defrost()
        images = sum(len(DatasetCatalog.get(name)) for name in train_datasets)
        round_cfg.SOLVER.MAX_ITER = math.ceil(epochs * images / cfg.SOLVER.IMS_PER_BATCH)
        logger.info(
            f"{epochs} epochs of {images} images at batch {cfg.SOLVER.IMS_PER_BATCH}: "
            f"SOLVER.MAX_ITER = {round_cfg.SOLVER.MAX_ITER}"
        )
        round_cfg.freeze()
    return round_cfg


def run_semantic_rounds(cfg: CfgNode, resume: bool = False) -> Any:
    """Train SEMANTIC.ROUNDS rounds (module docstring); returns the last round's
    ``Trainer.train()`` value (None when that round was already finished)."""
    rounds = cfg.SEMANTIC.ROUNDS
    relabel = cfg.SEMANTIC.RELABEL_DATASET
    train_datasets = list(cfg.DATASETS.TRAIN)
    result = None
    for r in range(1, rounds + 1):
        out = round_dir(cfg.OUTPUT_DIR, r)
        epochs = cfg.SEMANTIC.ROUND_EPOCHS[r - 1] if cfg.SEMANTIC.ROUND_EPOCHS else 0
        round_cfg = _round_config(cfg, out, train_datasets, epochs)
        if comm.is_main_process():  # the exact settings of this round, for --eval-only later
            atomic_write_bytes(out / "config.yaml", round_cfg.dump().encode("utf-8"))
        final_model = out / FINAL_MODEL_FILE
        if resume and final_model.is_file():
            logger.info(f"Semantic round {r}/{rounds}: already trained ({final_model})")
        else:
            logger.info(f"Semantic round {r}/{rounds}: training on {train_datasets}")
            trainer = Trainer(round_cfg)
            trainer.resume_or_load(resume=resume)  # no checkpoint in out: MODEL.WEIGHTS
            result = trainer.train()
            del trainer  # frees the optimiser state and loader workers before inference
        if r == rounds:
            break
        labels = out / LABELS_DIR
        if not (resume and (labels / LABELS_INFO_FILE).is_file()):
            comm.synchronize()  # the main process has written the final model
            model = load_trained_model(round_cfg, final_model)
            written = predict_label_maps(round_cfg, model, relabel, labels, skip_existing=resume)
            written = sum(comm.all_gather(written))
            if comm.is_main_process():
                info = {"round": r, "model": str(final_model), "dataset": relabel}
                atomic_write_json(labels / LABELS_INFO_FILE, {**info, "written": written})
            logger.info(f"Semantic round {r}: wrote {written} label maps of {relabel} to {labels}")
            comm.synchronize()
        name = round_labels_name(r)
        register_semantic_pseudo_labels(name, relabel, labels, cfg.INPUT.BAD_IMAGE_POLICY)
        train_datasets = [name]
    return result
