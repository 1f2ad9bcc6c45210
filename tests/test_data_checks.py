"""Annotation files are validated before training starts (uis_d2.engine.data_checks)."""

import json
from pathlib import Path

import pytest

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from training_cases import make_synthetic_root, tiny_training_cfg

from scripts import load_script
from uis_d2.data.validation import AnnotationError
from uis_d2.engine.data_checks import dataset_files, validate_datasets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset_root(tmp_path, monkeypatch):
    root = make_synthetic_root(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return root


def _load_train_net():
    return load_script("tools/train_net.py")


def _break_one_mask_size(json_file: Path) -> int:
    """Give the second annotation a mask of another size; returns its id."""
    coco = json.loads(json_file.read_text())
    annotation = coco["annotations"][1]
    height, width = annotation["segmentation"]["size"]
    annotation["segmentation"] = {"size": [height + 1, width], "counts": f"{(height + 1) * width}"}
    json_file.write_text(json.dumps(coco))
    return annotation["id"]


def test_shipped_synthetic_sets_pass_and_name_their_files(dataset_root, tmp_path):
    cfg = tiny_training_cfg(tmp_path / "out")
    validate_datasets(cfg)  # pseudo-labels (auto -> pseudo) and the val ground truth
    assert dataset_files("synthetic_train_pseudo") == [
        (str(dataset_root / "synthetic/pseudo/train.json"), str(dataset_root / "synthetic/train"))
    ]


def test_bad_pseudo_mask_stops_train_net_before_any_iteration(dataset_root, tmp_path):
    pseudo = dataset_root / "synthetic/pseudo/train.json"
    bad_id = _break_one_mask_size(pseudo)
    out = tmp_path / "out"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(tiny_training_cfg(out).dump())
    with pytest.raises(SystemExit) as info:
        _load_train_net().cli(["--config-file", str(config_file)])
    message = str(info.value.code)
    assert str(pseudo) in message
    assert f"(id={bad_id}): field 'segmentation.size'" in message
    assert not out.exists()  # nothing was built, let alone trained


def test_ground_truth_of_the_test_set_is_checked_as_gt(dataset_root, tmp_path):
    gt = dataset_root / "synthetic/annotations/val.json"
    coco = json.loads(gt.read_text())
    del coco["categories"]
    gt.write_text(json.dumps(coco))
    cfg = tiny_training_cfg(tmp_path / "out")
    with pytest.raises(AnnotationError, match=r"val\.json.*\n.*'categories'"):
        validate_datasets(cfg, train=False)
    cfg.DATASETS.TEST = ()
    validate_datasets(cfg)  # the training set alone is fine


def test_missing_image_file_is_reported(dataset_root, tmp_path):
    image = sorted((dataset_root / "synthetic/train").iterdir())[0]
    image.unlink()
    with pytest.raises(AnnotationError, match=r"field 'file_name': image file not found"):
        validate_datasets(tiny_training_cfg(tmp_path / "out"))
