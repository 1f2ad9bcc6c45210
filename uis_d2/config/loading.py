"""Build, merge and validate configs so that a typo or a bad value fails at start-up, naming it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.config import get_cfg as get_detectron2_cfg

from uis_d2.config.defaults import add_uis_config
from uis_d2.data.image_io import BAD_IMAGE_POLICIES
from uis_d2.data.label_merge import MERGE_MODES
from uis_d2.features import CHECKPOINT_FORMATS, RESNET_STAGES
from uis_d2.layers.matrix_nms import NMS_KERNELS
from uis_d2.modeling.solov2.heads import NORMS
from uis_d2.modeling.solov2.losses import LOSS_MODES, LOSS_REDUCTIONS
from uis_d2.proposals.dense_crf import CRF_BACKENDS


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds an invalid value."""


# Keys the project removed, and what replaces each: a config still naming one fails with this.
REMOVED_KEYS = {
    "MODEL.FREEZE.BACKBONE": "freeze the ResNet with detectron2's MODEL.BACKBONE.FREEZE_AT "
    "(5 = the whole network, what FREEZE.BACKBONE True did; 0 = nothing, what False did with "
    "FREEZE_AT 0)",
}


def get_cfg() -> CfgNode:
    """detectron2's defaults plus every uis_d2 key."""
    cfg = get_detectron2_cfg()
    add_uis_config(cfg)
    return cfg


def model_num_classes(cfg: CfgNode) -> int:
    """The classes the model predicts: SOLOv2's category grid or the R-CNN box/mask heads'."""
    if cfg.MODEL.META_ARCHITECTURE == "SOLOv2":
        return cfg.MODEL.SOLOV2.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


def load_config(config_file: str | Path | None = None, opts: Sequence[str] = ()) -> CfgNode:
    """Merge a yaml file (with ``_BASE_`` inheritance) and ``KEY VALUE`` overrides, then validate.

    yacs reports an unknown key as a bare KeyError; it is re-raised here with the file or the
    override it came from, which is what a user needs to find the typo.
    """
    cfg = get_cfg()
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg.merge_from_file(str(path))
        except (KeyError, ValueError, AssertionError) as err:
            raise ConfigError(f"{path}: {_message(err)}") from err
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, ValueError, AssertionError) as err:
            raise ConfigError(f"command-line override: {_message(err)}") from err
    validate_uis_config(cfg)
    return cfg


def _message(err: Exception) -> str:
    message = str(err.args[0]) if err.args else repr(err)
    for key, replacement in REMOVED_KEYS.items():
        if message.endswith(key):
            return f"{key} was removed: {replacement}"
    return message


def _check(condition: bool, key: str, value: object, requirement: str) -> None:
    if not condition:
        raise ConfigError(f"{key} = {value!r} is invalid: {requirement}")


def _check_fraction(cfg: CfgNode, key: str) -> None:
    value = _lookup(cfg, key)
    _check(0.0 <= float(value) <= 1.0, key, value, "must lie in [0, 1]")


def _check_positive(cfg: CfgNode, key: str, allow_zero: bool = False) -> None:
    value = _lookup(cfg, key)
    ok = value >= 0 if allow_zero else value > 0
    _check(ok, key, value, "must be >= 0" if allow_zero else "must be > 0")


def _check_choice(cfg: CfgNode, key: str, choices: Sequence[str]) -> None:
    value = _lookup(cfg, key)
    _check(value in choices, key, value, f"must be one of {list(choices)}")


def _lookup(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_uis_config(cfg: CfgNode) -> None:
    """Reject values no run could use; called by every tool before any work starts."""
    s = "MODEL.SOLOV2."
    n_levels = len(cfg.MODEL.SOLOV2.INSTANCE_IN_FEATURES)
    for key in ("FPN_INSTANCE_STRIDES", "FPN_SCALE_RANGES", "NUM_GRIDS"):
        value = cfg.MODEL.SOLOV2[key]
        _check(
            len(value) == n_levels,
            s + key,
            value,
            f"needs one entry per INSTANCE_IN_FEATURES level ({n_levels})",
        )
    for lo_hi in cfg.MODEL.SOLOV2.FPN_SCALE_RANGES:
        _check(
            len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1],
            s + "FPN_SCALE_RANGES",
            cfg.MODEL.SOLOV2.FPN_SCALE_RANGES,
            "each range must be [low, high] with 0 <= low <= high",
        )
    for key in (
        "NUM_CLASSES",
        "INSTANCE_CHANNELS",
        "NUM_INSTANCE_CONVS",
        "NUM_KERNELS",
        "MASK_CHANNELS",
        "NUM_MASKS",
        "NMS_PRE",
        "MAX_PER_IMG",
    ):
        _check_positive(cfg, s + key)
    _check(
        min(cfg.MODEL.SOLOV2.NUM_GRIDS) > 0,
        s + "NUM_GRIDS",
        cfg.MODEL.SOLOV2.NUM_GRIDS,
        "grid sizes must be > 0",
    )
    _check(
        cfg.MODEL.SOLOV2.NUM_MASKS == cfg.MODEL.SOLOV2.NUM_KERNELS,
        s + "NUM_MASKS",
        cfg.MODEL.SOLOV2.NUM_MASKS,
        "must equal MODEL.SOLOV2.NUM_KERNELS (1x1 dynamic kernels)",
    )
    _check_positive(cfg, s + "EMBED_DIM", allow_zero=True)
    _check(
        cfg.MODEL.SOLOV2.EMBED_DIM == 0 or cfg.INPUT.PSEUDO_MASKS.EMBEDDINGS,
        s + "EMBED_DIM",
        cfg.MODEL.SOLOV2.EMBED_DIM,
        "needs INPUT.PSEUDO_MASKS.EMBEDDINGS True (the embedding head would get no targets)",
    )
    for key in ("SIGMA", "PRIOR_PROB", "SCORE_THR", "MASK_THR", "UPDATE_THR"):
        _check_fraction(cfg, s + key)
    _check_choice(cfg, "INPUT.PSEUDO_MASKS.CLASSES", ("agnostic", "pseudo"))
    _check_choice(cfg, s + "NMS_KERNEL", NMS_KERNELS)
    _check_positive(cfg, s + "NMS_SIGMA")
    _check_choice(cfg, s + "NORM", NORMS)
    if cfg.MODEL.SOLOV2.NORM == "GN":
        for key in ("INSTANCE_CHANNELS", "MASK_CHANNELS", "NUM_MASKS"):
            value = cfg.MODEL.SOLOV2[key]
            _check(value % 32 == 0, s + key, value, "must be a multiple of 32 (GroupNorm(32))")

    loss = s + "LOSS."
    _check_choice(cfg, loss + "MODE", LOSS_MODES)
    _check_choice(cfg, loss + "REDUCTION", LOSS_REDUCTIONS)
    for key in (
        "FOCAL_WEIGHT",
        "DICE_WEIGHT",
        "AVG_PROJ_WEIGHT",
        "MAX_PROJ_WEIGHT",
        "PAIRWISE_WEIGHT",
        "SEM_WEIGHT",
        "FOCAL_GAMMA",
        "PAIRWISE_WARMUP_ITERS",
    ):
        _check_positive(cfg, loss + key, allow_zero=True)
    for key in ("FOCAL_ALPHA", "PAIRWISE_COLOR_THRESH"):
        _check_fraction(cfg, loss + key)
    _check_positive(cfg, loss + "PAIRWISE_SIZE")
    _check(
        cfg.MODEL.SOLOV2.LOSS.PAIRWISE_SIZE % 2 == 1,
        loss + "PAIRWISE_SIZE",
        cfg.MODEL.SOLOV2.LOSS.PAIRWISE_SIZE,
        "must be odd",
    )
    _check_positive(cfg, loss + "PAIRWISE_DILATION")

    _check_fraction(cfg, "INPUT.PSEUDO_MASKS.MIN_SCORE")
    _check_positive(cfg, "INPUT.PSEUDO_MASKS.MIN_AREA", allow_zero=True)
    for entry in cfg.INPUT.PSEUDO_MASKS.REGISTER:
        _check(
            len(entry) == 3 and all(isinstance(x, str) and x for x in entry),
            "INPUT.PSEUDO_MASKS.REGISTER",
            entry,
            "each entry must be [name, json_file, image_root] (non-empty strings)",
        )
    cp = "INPUT.COPY_PASTE."
    for key in ("PROB", "MAX_SHIFT", "OCCLUSION_THRESH"):
        _check_fraction(cfg, cp + key)
    _check_positive(cfg, cp + "MAX_INSTANCES", allow_zero=True)
    scale = cfg.INPUT.COPY_PASTE.SCALE_RANGE
    _check(
        len(scale) == 2 and 0 < scale[0] <= scale[1],
        cp + "SCALE_RANGE",
        scale,
        "must be [low, high] with 0 < low <= high",
    )
    _check_choice(cfg, "INPUT.BAD_IMAGE_POLICY", BAD_IMAGE_POLICIES)

    p = "PROPOSALS."
    for key in ("BATCH_SIZE",):
        _check_positive(cfg, p + key)
    for key in ("NUM_WORKERS", "SHORT_SIDE", "MAX_SIDE", "SEED"):
        _check_positive(cfg, p + key, allow_zero=True)
    ks = cfg.PROPOSALS.SPECTRAL.K
    _check(
        len(ks) > 0 and all(int(k) >= 2 for k in ks),
        p + "SPECTRAL.K",
        ks,
        "needs at least one k, and every k must be >= 2 (k = 1 is the whole image)",
    )
    _check_positive(cfg, p + "SPECTRAL.KMEANS_RESTARTS")
    _check_positive(cfg, p + "SPECTRAL.KMEANS_ITERS")
    _check_positive(cfg, p + "SPECTRAL.MIN_COMPONENT_PATCHES", allow_zero=True)
    _check(
        cfg.PROPOSALS.SALIENCY.K >= 2, p + "SALIENCY.K", cfg.PROPOSALS.SALIENCY.K, "must be >= 2"
    )
    _check_fraction(cfg, p + "SALIENCY.OVERLAP_THRESH")
    _check_fraction(cfg, p + "FOREGROUND.EXTERNAL.THRESH")
    _check_positive(cfg, p + "FOREGROUND.EXTERNAL.MIN_PIXELS", allow_zero=True)
    attention, miner = p + "FOREGROUND.ATTENTION_MASS.", p + "FOREGROUND.MINER."
    _check_fraction(cfg, attention + "MASS")
    blur = cfg.PROPOSALS.FOREGROUND.ATTENTION_MASS.BLUR_SIZE
    _check(blur >= 0 and blur % 2 == 1 or blur == 0, attention + "BLUR_SIZE", blur, "odd, or 0")
    _check_positive(cfg, attention + "BLUR_SIGMA")
    _check_positive(cfg, attention + "MAX_DROPPED_COMPONENT", allow_zero=True)
    top_k = cfg.PROPOSALS.FOREGROUND.MINER.TOP_K
    _check(0.0 < top_k <= 1.0, miner + "TOP_K", top_k, "must lie in (0, 1]")
    _check_fraction(cfg, miner + "MASS_PREFILTER")
    for key in (attention + "HEADS", miner + "HEADS"):
        heads = _lookup(cfg, key)
        _check(all(int(h) >= 0 for h in heads), key, heads, "head indices must be >= 0")
    _check_fraction(cfg, p + "NMS_THRESH")
    for key in ("FREE_MASK.MASK_THRESH", "FREE_MASK.MASKNESS_THRESH"):
        _check_fraction(cfg, p + key)
    _check_positive(cfg, p + "FREE_MASK.MAX_MASKS")
    scales = cfg.PROPOSALS.FREE_MASK.QUERY_SCALES
    _check(
        len(scales) > 0 and all(0 < x <= 1 for x in scales),
        p + "FREE_MASK.QUERY_SCALES",
        scales,
        "needs at least one scale, each in (0, 1]",
    )
    for prefix in (p + "EXTRACTOR.", p + "SALIENCY.EXTRACTOR."):
        _check_choice(cfg, prefix + "RESNET_STAGE", RESNET_STAGES)
        _check_choice(cfg, prefix + "CHECKPOINT_FORMAT", CHECKPOINT_FORMATS)
        _check_positive(cfg, prefix + "PATCH_SIZE")
    refine = p + "REFINE."
    _check_choice(cfg, refine + "BACKEND", CRF_BACKENDS)
    for key in ("ITERS", "GAUSSIAN_COMPAT", "BILATERAL_COMPAT", "MAX_SIDE"):
        _check_positive(cfg, refine + key, allow_zero=True)
    for key in ("GAUSSIAN_SXY", "BILATERAL_SXY", "BILATERAL_SRGB"):
        _check_positive(cfg, refine + key)
    _check_fraction(cfg, refine + "MIN_IOU")

    _check_positive(cfg, "SELF_TRAINING.ROUNDS")
    _check_fraction(cfg, "SELF_TRAINING.SCORE_THRESH")
    _check_positive(cfg, "SELF_TRAINING.MAX_PER_IMAGE")
    thresholds = cfg.SELF_TRAINING.SCORE_THRESHS
    _check(
        all(0.0 <= float(t) <= 1.0 for t in thresholds)
        and (not thresholds or len(thresholds) >= cfg.SELF_TRAINING.ROUNDS - 1),
        "SELF_TRAINING.SCORE_THRESHS",
        thresholds,
        f"needs a threshold in [0, 1] for each of the ROUNDS - 1 = "
        f"{cfg.SELF_TRAINING.ROUNDS - 1} labelling passes, or [] for SCORE_THRESH",
    )
    _check_choice(cfg, "SELF_TRAINING.MERGE", MERGE_MODES)
    _check_fraction(cfg, "SELF_TRAINING.MERGE_IOU_THRESH")
    _check_fraction(cfg, "MODEL.ROI_HEADS.DROPLOSS.IOU_THRESH")
