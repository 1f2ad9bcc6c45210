"""Trainer end to end on CPU: train + evaluate, resume, start-up checks, eval-only."""

import json
import math
from pathlib import Path

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from training_cases import EMBED_DIM, tiny_training_cfg

from scripts import load_script
from uis_d2.engine import Trainer, check_runtime
from uis_d2.evaluation import METRIC_KEYS

REPO = Path(__file__).resolve().parents[1]
LOSS_KEYS = {"loss_focal", "loss_avg_proj", "loss_max_proj", "loss_pairwise", "loss_sem"}


pytestmark = pytest.mark.usefixtures("training_datasets")


def _metrics_lines(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def _train(cfg, resume=False) -> Trainer:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _load_train_net():
    return load_script("tools/train_net.py")


def test_train_then_evaluate_then_resume(tmp_path):
    out = tmp_path / "out"
    trainer = _train(tiny_training_cfg(out, max_iter=2))

    # EMBED_DIM 0 was read from the pseudo-labels, so the embedding head exists and trains.
    assert trainer.cfg.MODEL.SOLOV2.EMBED_DIM == EMBED_DIM
    lines = _metrics_lines(out)
    losses = [line for line in lines if "loss_focal" in line]
    assert losses and LOSS_KEYS <= set(losses[-1])
    assert all(math.isfinite(losses[-1][k]) for k in LOSS_KEYS)
    # The final evaluation ran on synthetic_val and reached the metric writers.
    metrics = json.loads((out / "inference/synthetic_val/class_agnostic_metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics["segm"]) and set(METRIC_KEYS) <= set(metrics["bbox"])
    assert any("segm/AP" in line for line in lines)

    # Resume: a longer schedule continues after the saved iteration with the saved weights.
    saved = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    resumed = Trainer(tiny_training_cfg(out, max_iter=4))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)
    resumed.train()
    loss_iterations = [line["iteration"] for line in _metrics_lines(out) if "loss_focal" in line]
    assert loss_iterations == [1, 3]

    # tools/train_net.py --eval-only on the trained model, from a dumped config file.
    config_file = tmp_path / "config.yaml"
    config_file.write_text(tiny_training_cfg(tmp_path / "eval").dump())
    train_net = _load_train_net()
    args = train_net.default_argument_parser().parse_args(
        [
            "--config-file",
            str(config_file),
            "--eval-only",
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
        ]
    )
    results = train_net.main(args)
    assert set(METRIC_KEYS) <= set(results["segm"])


def test_missing_weights_file_fails_at_start_up_naming_it(tmp_path):
    cfg = tiny_training_cfg(tmp_path)
    cfg.MODEL.WEIGHTS = str(tmp_path / "absent_densecl.pkl")
    with pytest.raises(FileNotFoundError, match="absent_densecl.pkl"):
        check_runtime(cfg)
    cfg.MODEL.WEIGHTS = ""
    cfg.SOLVER.AMP.ENABLED = True
    with pytest.raises(RuntimeError, match="SOLVER.AMP.ENABLED"):
        check_runtime(cfg)


def test_train_net_rejects_bad_configs_before_launching(tmp_path):
    train_net = _load_train_net()
    config = str(REPO / "configs/synthetic/solov2_freesolo_cpu.yaml")
    with pytest.raises(SystemExit, match="MODEL.SOLOV2.NOT_A_KEY"):
        train_net.cli(["--config-file", config, "MODEL.SOLOV2.NOT_A_KEY", "1"])
    with pytest.raises(SystemExit, match="nowhere.pkl"):
        train_net.cli(["--config-file", config, "MODEL.WEIGHTS", str(tmp_path / "nowhere.pkl")])
