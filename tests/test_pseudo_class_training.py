"""Class-aware training on pseudo-classes (INPUT.PSEUDO_MASKS.CLASSES pseudo): the file's
categories become contiguous classes the mapper hands the model, checked against NUM_CLASSES."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from training_cases import tiny_training_cfg

import uis_d2  # noqa: F401
from uis_d2.config.loading import ConfigError
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.engine.trainer import Trainer


def _clustered_json(root: Path) -> Path:
    """The tiny pseudo-labels with two pseudo-classes of ids 3 and 7 (any ids, as a clustering
    writes them), assigned alternately."""
    coco = json.loads((root / "synthetic/pseudo/train.json").read_text())
    for index, annotation in enumerate(coco["annotations"]):
        annotation["category_id"] = (3, 7)[index % 2]
    coco["categories"] = [{"id": 7, "name": "cluster_1"}, {"id": 3, "name": "cluster_0"}]
    path = root / "synthetic/pseudo/clustered.json"
    path.write_text(json.dumps(coco))
    return path


def _cfg(root: Path, tmp_path: Path, num_classes: int):
    cfg = tiny_training_cfg(tmp_path / "out", max_iter=1)
    cfg.INPUT.PSEUDO_MASKS.CLASSES = "pseudo"
    cfg.MODEL.SOLOV2.NUM_CLASSES = num_classes
    register = [["clustered", str(_clustered_json(root)), str(root / "synthetic/train")]]
    cfg.INPUT.PSEUDO_MASKS.REGISTER = register
    cfg.DATASETS.TRAIN = ("clustered",)
    cfg.DATASETS.TEST = ()
    return cfg


def test_pseudo_classes_load_as_contiguous_classes_and_train(training_datasets, tmp_path):
    cfg = prepare_run_config(_cfg(training_datasets, tmp_path, num_classes=2))
    name = cfg.DATASETS.TRAIN[0]
    assert MetadataCatalog.get(name).thing_classes == ["cluster_0", "cluster_1"]
    dataset = DatasetCatalog.get(name)
    source = json.loads((training_datasets / "synthetic/pseudo/clustered.json").read_text())
    expected = [{3: 0, 7: 1}[a["category_id"]] for a in source["annotations"]]
    loaded = [a["category_id"] for record in dataset for a in record["annotations"]]
    assert sorted(loaded) == sorted(expected) and set(loaded) == {0, 1}
    no_paste = cfg.clone()
    no_paste.defrost()
    no_paste.INPUT.COPY_PASTE.PROB = 0.0
    mapper = PseudoMaskDatasetMapper(no_paste, is_train=True)
    classes = {int(c) for record in dataset for c in mapper(record)["instances"].gt_classes}
    assert classes == {0, 1}
    trainer = Trainer(cfg)
    trainer.train()
    assert (Path(cfg.OUTPUT_DIR) / "model_final.pth").is_file()


def test_a_class_count_that_differs_from_the_model_is_named(training_datasets, tmp_path):
    with pytest.raises(ConfigError, match="has 2 pseudo-classes but the model predicts 3"):
        prepare_run_config(_cfg(training_datasets, tmp_path, num_classes=3))
    cfg = _cfg(training_datasets, tmp_path, num_classes=2)
    cfg.SELF_TRAINING.ROUNDS = 2
    with pytest.raises(ConfigError, match="SELF_TRAINING.ROUNDS > 1"):
        prepare_run_config(cfg)


def test_an_annotation_outside_the_categories_is_named(training_datasets, tmp_path):
    cfg = _cfg(training_datasets, tmp_path, num_classes=2)
    path = Path(cfg.INPUT.PSEUDO_MASKS.REGISTER[0][1])
    coco = json.loads(path.read_text())
    coco["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(coco))
    cfg = prepare_run_config(cfg)
    with pytest.raises(ValueError, match="category_id 99, not among the file's categories"):
        list(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))


def test_the_maskdistill_r50_c4_config_builds_a_class_aware_mask_rcnn(training_datasets, tmp_path):
    from detectron2.modeling import build_model

    from uis_d2.config import load_config

    root = training_datasets
    config = Path(__file__).resolve().parents[1] / (
        "configs/maskdistill/mask_rcnn_R50_C4_voc_pseudo_classes.yaml"
    )
    register = [["clustered", str(_clustered_json(root)), str(root / "synthetic/train")]]
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"]
    opts += ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "INPUT.PSEUDO_MASKS.REGISTER", repr(register)]
    opts += ["DATASETS.TRAIN", "('clustered',)", "DATASETS.TEST", "()"]
    cfg = prepare_run_config(load_config(config, opts))
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background
    assert model.roi_heads.mask_head.predictor.out_channels == 2  # class-specific masks
