"""Evaluation on a set holding a corrupt image: under the skip policy the image gets no
predictions while its ground truth still counts (so metrics stay comparable); under the fail
policy the run stops with an error naming the file."""

import json
import re
from pathlib import Path

import pytest

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from training_cases import make_synthetic_root, tiny_training_cfg

from uis_d2.data.datasets import register_class_agnostic
from uis_d2.engine import Trainer


@pytest.fixture(scope="module")
def corrupt_val_set(tmp_path_factory) -> tuple[str, Path]:
    """synthetic_val's files with the second image truncated, registered under a new name."""
    root = make_synthetic_root(tmp_path_factory.mktemp("datasets"), num_train=1, num_val=3)
    images = root / "synthetic/val"
    corrupt = sorted(images.iterdir())[1]
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    name = f"uis_test_corrupt_val_{root.name}"
    register_class_agnostic(name, str(root / "synthetic/annotations/val.json"), str(images))
    return name, corrupt


def _cfg(tmp_path, name, policy, num_workers):
    cfg = tiny_training_cfg(tmp_path)
    cfg.MODEL.SOLOV2.EMBED_DIM = 8
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.BAD_IMAGE_POLICY = policy
    cfg.DATALOADER.NUM_WORKERS = num_workers
    return cfg


@pytest.mark.parametrize("num_workers", [0, 1])
def test_fail_policy_stops_evaluation_naming_the_corrupt_image(corrupt_val_set, tmp_path,
                                                               num_workers):  # fmt: skip
    name, corrupt = corrupt_val_set
    cfg = _cfg(tmp_path, name, "fail", num_workers)
    model = Trainer.build_model(cfg)
    # Worker processes re-raise as RuntimeError, with the original message and traceback.
    with pytest.raises(
        Exception, match=rf"{re.escape(corrupt.name)}: cannot (decode|open) image"
    ) as info:
        Trainer.test(cfg, model)
    assert str(corrupt) in str(info.value)
    assert not (tmp_path / "inference" / name / "class_agnostic_metrics.json").exists()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_policy_predicts_every_other_image_once(corrupt_val_set, tmp_path, num_workers):
    name, corrupt = corrupt_val_set
    cfg = _cfg(tmp_path, name, "skip", num_workers)
    results = Trainer.test(cfg, Trainer.build_model(cfg))
    assert set(results) == {"segm", "bbox"}  # one test set: detectron2 returns its metrics
    gt = json.loads((Path(corrupt).parents[1] / "annotations/val.json").read_text())
    corrupt_id = next(i["id"] for i in gt["images"] if i["file_name"] == corrupt.name)
    out = tmp_path / "inference" / name
    predicted = {p["image_id"] for p in json.loads((out / "class_agnostic_predictions.json")
                                                   .read_text())}  # fmt: skip
    assert corrupt_id not in predicted
    assert predicted == {i["id"] for i in gt["images"]} - {corrupt_id}
