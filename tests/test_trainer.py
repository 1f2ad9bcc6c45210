"""Trainer end to end on CPU: train + evaluate, resume, start-up checks, eval-only."""

import json
import math
from pathlib import Path

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from training_cases import EMBED_DIM, eval_only, tiny_training_cfg

from scripts import load_script
from uis_d2.engine import Trainer, check_runtime
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.evaluation import METRIC_KEYS

REPO = Path(__file__).resolve().parents[1]
LOSS_KEYS = {"loss_focal", "loss_avg_proj", "loss_max_proj", "loss_pairwise", "loss_sem"}


pytestmark = pytest.mark.usefixtures("training_datasets")


def _metrics_lines(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def _train(cfg, resume=False) -> Trainer:
    trainer = Trainer(prepare_run_config(cfg))
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
    resumed = Trainer(prepare_run_config(tiny_training_cfg(out, max_iter=4)))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)
    resumed.train()
    loss_iterations = [line["iteration"] for line in _metrics_lines(out) if "loss_focal" in line]
    assert loss_iterations == [1, 3]

    # tools/train_net.py --eval-only on the trained model, from a dumped config file.
    cfg = tiny_training_cfg(tmp_path / "eval")
    results = eval_only(cfg, out / "model_final.pth", tmp_path / "config.yaml")
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


def test_default_trainer_still_builds_what_the_trainer_swaps():
    """Trainer changes two things DefaultTrainer.__init__ builds by swapping the names it looks
    up in detectron2.engine.defaults; a detectron2 that builds them elsewhere breaks that."""
    import inspect

    import detectron2.engine.defaults as d2_defaults
    from detectron2.engine import DefaultTrainer

    source = inspect.getsource(DefaultTrainer.__init__)
    assert "create_ddp_model(model" in source and "DetectionCheckpointer(" in source
    assert "self.register_hooks(self.build_hooks())" in source
    assert source.index("DetectionCheckpointer(") < source.index("self.build_hooks()")
    assert callable(d2_defaults.create_ddp_model) and d2_defaults.DetectionCheckpointer


def test_trainer_checkpoints_through_the_resilient_checkpointer(tmp_path):
    from detectron2.engine import hooks

    from uis_d2.engine.checkpointer import ResilientCheckpointer

    trainer = Trainer(prepare_run_config(tiny_training_cfg(tmp_path, max_iter=1)))
    assert isinstance(trainer.checkpointer, ResilientCheckpointer)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic and periodic[0].checkpointer is trainer.checkpointer
    # The swap is scoped to the constructor: detectron2's own names are back.
    import detectron2.engine.defaults as d2_defaults
    from detectron2.checkpoint import DetectionCheckpointer

    assert d2_defaults.DetectionCheckpointer is DetectionCheckpointer


def test_saved_configs_rebuild_exactly_the_trained_model(tmp_path):
    """OUTPUT_DIR/config.yaml and round1/config.yaml, as tools/train_net.py saves them, build a
    model whose tensors are exactly the checkpoint's: EMBED_DIM is the resolved width, not 0."""
    from detectron2.modeling import build_model

    from uis_d2.config import get_cfg

    out = tmp_path / "out"
    config_file = tmp_path / "train.yaml"
    config_file.write_text(tiny_training_cfg(out, max_iter=1).dump())
    train_net = _load_train_net()
    args = train_net.default_argument_parser().parse_args(["--config-file", str(config_file)])
    train_net.main(args)
    weights = out / "round1/model_final.pth"
    saved = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    for saved_config in (out / "config.yaml", out / "round1/config.yaml"):
        cfg = get_cfg()
        cfg.merge_from_file(str(saved_config))
        assert cfg.MODEL.SOLOV2.EMBED_DIM == EMBED_DIM, saved_config
        model = build_model(cfg)
        assert set(model.state_dict()) == set(saved), saved_config
        model.load_state_dict(saved, strict=True)  # every tensor, every shape
