"""detectron2's Mask R-CNN and Cascade Mask R-CNN on pseudo-masks, through the project's mapper,
Trainer, class-agnostic evaluator, self-training driver and start-up checks (CPU, tiny)."""

import json
import math
from pathlib import Path

import pytest
import yaml

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from training_cases import eval_only, tiny_training_cfg

from scripts import load_script
from uis_d2.config import load_config
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.engine import Trainer, run_self_training
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.engine.self_training import PSEUDO_LABELS_FILE
from uis_d2.evaluation import METRIC_KEYS

REPO = Path(__file__).resolve().parents[1]
RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"}
MASK_RCNN_LOSSES = RPN_LOSSES | {"loss_cls", "loss_box_reg"}
CASCADE_LOSSES = RPN_LOSSES | {f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}

pytestmark = pytest.mark.usefixtures("training_datasets")


def tiny_rcnn_cfg(config: str, output_dir: Path, max_iter: int = 3, opts: tuple = ()):
    """A shipped synthetic R-CNN config shrunk to 32-channel FPN and heads on 64-px images."""
    cfg = load_config(REPO / "configs/synthetic" / config, list(opts))
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    rpn = cfg.MODEL.RPN
    rpn.PRE_NMS_TOPK_TRAIN = rpn.PRE_NMS_TOPK_TEST = 200
    rpn.POST_NMS_TOPK_TRAIN = rpn.POST_NMS_TOPK_TEST = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def _metrics_lines(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.mark.parametrize(
    ("config", "heads", "loss_keys", "dropped_key"),
    [
        ("mask_rcnn_R18_cpu.yaml", "StandardROIHeads", MASK_RCNN_LOSSES, None),
        (
            "mask_rcnn_R18_cpu.yaml",
            "DropLossROIHeads",
            MASK_RCNN_LOSSES,
            "fast_rcnn/droploss_dropped",
        ),
        (
            "cascade_mask_rcnn_R18_cpu.yaml",
            "DropLossCascadeROIHeads",
            CASCADE_LOSSES,
            "stage2/fast_rcnn/droploss_dropped",
        ),
    ],
)
def test_detector_trains_on_pseudo_masks_and_evaluates_class_agnostically(
    tmp_path, config, heads, loss_keys, dropped_key
):
    out = tmp_path / "out"
    cfg = tiny_rcnn_cfg(config, out, opts=("MODEL.ROI_HEADS.NAME", heads))
    trainer = Trainer(prepare_run_config(cfg))
    trainer.resume_or_load(resume=False)
    trainer.train()

    assert type(trainer.model.roi_heads).__name__ == heads
    losses = [line for line in _metrics_lines(out) if "total_loss" in line]
    assert [line["iteration"] for line in losses] == [2]  # detectron2 writes every 20 and last
    assert loss_keys <= set(losses[-1])
    assert all(math.isfinite(losses[-1][k]) for k in loss_keys)
    if dropped_key:
        assert 0.0 <= losses[-1][dropped_key] <= 1.0
    # The final evaluation went through the class-agnostic evaluator to the metric writers.
    metrics = json.loads((out / "inference/synthetic_val/class_agnostic_metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics["segm"]) and set(METRIC_KEYS) <= set(metrics["bbox"])
    predictions = json.loads(
        (out / "inference/synthetic_val/class_agnostic_predictions.json").read_text()
    )
    assert predictions and {p["category_id"] for p in predictions} == {1}


def test_mapper_emits_what_the_config_asks_for():
    """R-CNN configs: image plus gt_boxes/gt_classes (all 0)/gt_masks, no embeddings (the store
    is not read); a SOLOv2 config on the same labels gets its gt_embeddings."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BitMasks

    record = DatasetCatalog.get("synthetic_train_pseudo")[0]
    rcnn = prepare_run_config(tiny_rcnn_cfg("mask_rcnn_R18_cpu.yaml", Path("unused")))
    assert rcnn.MODEL.SOLOV2.EMBED_DIM == 0  # not sized from the labels' embeddings
    instances = PseudoMaskDatasetMapper(rcnn, is_train=True)(record)["instances"]
    assert set(instances.get_fields()) == {"gt_masks", "gt_boxes", "gt_classes", "gt_scores"}
    assert isinstance(instances.gt_masks, BitMasks) and len(instances) > 0
    assert instances.gt_classes.tolist() == [0] * len(instances)

    solov2 = prepare_run_config(tiny_training_cfg(Path("unused")))
    assert PseudoMaskDatasetMapper(solov2, is_train=True)(record)["instances"].has("gt_embeddings")


def test_eval_only_on_a_trained_cascade(tmp_path):
    out = tmp_path / "out"
    trainer = Trainer(prepare_run_config(tiny_rcnn_cfg("cascade_mask_rcnn_R18_cpu.yaml", out, 1)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Each stage's DropLoss predictor kept its stage's box coder.
    predictors = trainer.model.roi_heads.box_predictor
    weights = [tuple(p.box2box_transform.weights) for p in predictors]
    assert weights == [tuple(w) for w in trainer.cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS]
    cfg = tiny_rcnn_cfg("cascade_mask_rcnn_R18_cpu.yaml", tmp_path / "eval")
    results = eval_only(cfg, out / "model_final.pth", tmp_path / "config.yaml")
    assert set(METRIC_KEYS) <= set(results["segm"]) and set(METRIC_KEYS) <= set(results["bbox"])


def test_cutler_self_training_merges_labels_and_drops_droploss_after_round_one(tmp_path):
    out = tmp_path / "out"
    cfg = tiny_rcnn_cfg("cascade_mask_rcnn_R18_cpu.yaml", out, max_iter=1)
    cfg.DATASETS.TEST = ()
    cfg.SELF_TRAINING.ROUNDS = 2
    cfg.SELF_TRAINING.SCORE_THRESHS = [0.0]  # an untrained model's scores are ~0.5
    cfg.SELF_TRAINING.MAX_PER_IMAGE = 1
    cfg.SELF_TRAINING.MERGE = "cutler"
    run_self_training(cfg)

    round_cfgs = [yaml.safe_load((out / f"round{r}/config.yaml").read_text()) for r in (1, 2)]
    assert [c["MODEL"]["ROI_HEADS"]["DROPLOSS"]["ENABLED"] for c in round_cfgs] == [True, False]
    labels = json.loads((out / "round1" / PSEUDO_LABELS_FILE).read_text())
    assert labels["info"]["merge"] == "cutler" and labels["info"]["score_thresh"] == 0.0
    assert labels["info"]["embedding_store"] is None  # the R-CNN predicts no embeddings
    per_image: dict[int, int] = {}
    for annotation in labels["annotations"]:
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
    # One prediction per image at most, plus the round's own masks that it does not cover.
    assert max(per_image.values()) > 1
    assert round_cfgs[1]["DATASETS"]["TRAIN"] == ["uis_self_training_round1"]


def test_training_file_without_masks_stops_train_net_naming_it(tmp_path, training_datasets):
    pseudo = tmp_path / "boxes_only.json"
    coco = json.loads((training_datasets / "synthetic/pseudo/train.json").read_text())
    for annotation in coco["annotations"]:
        del annotation["segmentation"]
    pseudo.write_text(json.dumps(coco))
    cfg = tiny_rcnn_cfg("mask_rcnn_R18_cpu.yaml", tmp_path / "out")
    cfg.INPUT.PSEUDO_MASKS.REGISTER = [
        ["boxes_only_pseudo", str(pseudo), str(training_datasets / "synthetic/train")]
    ]
    cfg.DATASETS.TRAIN = ("boxes_only_pseudo",)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cfg.dump())
    with pytest.raises(SystemExit) as info:
        load_script("tools/train_net.py").cli(["--config-file", str(config_file)])
    message = str(info.value.code)
    assert str(pseudo) in message and "1 problem(s)" in message
    assert "annotation id=1 has no 'segmentation'" in message and "boxes_only_pseudo" in message
    assert not (tmp_path / "out").exists()
