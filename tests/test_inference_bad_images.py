"""Inference and evaluation on a set holding a corrupt image stop with an error naming the file.

Skipping is refused at test time whatever INPUT.BAD_IMAGE_POLICY says: metrics over a silently
smaller image set would not be comparable with anyone else's.
"""

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


@pytest.mark.parametrize(("policy", "num_workers"), [("skip", 1), ("fail", 0)])
def test_evaluation_fails_naming_the_corrupt_image(corrupt_val_set, tmp_path, policy, num_workers):
    name, corrupt = corrupt_val_set
    cfg = tiny_training_cfg(tmp_path)
    cfg.MODEL.SOLOV2.EMBED_DIM = 8
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.BAD_IMAGE_POLICY = policy
    cfg.DATALOADER.NUM_WORKERS = num_workers
    model = Trainer.build_model(cfg)
    # Worker processes re-raise as RuntimeError, with the original message and traceback.
    with pytest.raises(
        Exception, match=rf"{re.escape(corrupt.name)}: cannot (decode|open) image"
    ) as info:
        Trainer.test(cfg, model)
    assert str(corrupt) in str(info.value)
    assert not (tmp_path / "inference" / name / "class_agnostic_metrics.json").exists()
