"""Leopart's model and fine-tuning run on CPU: the loss learns, a killed run resumes, two gloo
processes train, and the tuned ViT loads back into the feature extractor unchanged."""

import multiprocessing
import os
import re
from pathlib import Path

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2; spawned children import this first)

# isort: split
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from scripts import hang_after_checkpoint_saves, load_script, sigkill_when
from uis_d2.config import get_cfg
from uis_d2.features import build_feature_extractor
from uis_d2.leopart.crops import MultiCropMapper
from uis_d2.leopart.model import LeopartModel
from uis_d2.leopart.training import build_leopart_optimizer
from uis_d2.utils.launch import launch


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_cfg(out: Path, max_iter: int = 4, checkpoint_period: int = 2):
    """A depth-2 ViT (width 64, patch 8) on 48/24-pixel crops of the synthetic images."""
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = 0
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ("synthetic_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_period
    lp = cfg.LEOPART
    lp.BACKBONE.ARCH = "vit_tiny_patch16_224"
    lp.BACKBONE.MODEL_KWARGS = ["patch_size=8", "embed_dim=64", "depth=2", "num_heads=2"]
    lp.HEAD.HIDDEN_DIM, lp.HEAD.OUT_DIM, lp.HEAD.NUM_PROTOTYPES = 64, 32, 20
    lp.CROPS.GLOBAL_SIZE, lp.CROPS.LOCAL_SIZE = 48, 24
    lp.QUEUE.SIZE = 64
    lp.OPTIM.BACKBONE_LR, lp.OPTIM.HEAD_LR = 1e-3, 1e-3
    return cfg


def _config_file(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "leopart.yaml"
    path.write_text(cfg.dump())
    return path


def test_the_loss_is_finite_and_decreases_over_30_cpu_steps(training_datasets, tmp_path):
    cfg = _tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = LeopartModel(cfg).train()
    optimizer = build_leopart_optimizer(cfg, model)
    mapper = MultiCropMapper(cfg)
    records = DatasetCatalog.get("synthetic_train")
    losses = []
    with EventStorage():
        for _ in range(30):
            loss = model([mapper(r) for r in records])["loss_leopart"]
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.update_teacher(0.99)
            losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
    # The teacher moved towards the student, and only through the EMA (no gradient).
    assert all(p.grad is None for p in model.teacher.parameters())


def test_a_backbone_without_class_token_is_refused(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    cfg.LEOPART.BACKBONE.MODEL_KWARGS = list(cfg.LEOPART.BACKBONE.MODEL_KWARGS) + [
        "class_token=False",
        "global_pool='avg'",
    ]
    with pytest.raises(ValueError, match="LEOPART.BACKBONE.ARCH.*class token"):
        LeopartModel(cfg)


def _finetune_until_hung(config_file: Path, dataset_root: Path) -> None:
    """Runs in a spawned child: fine-tunes, and hangs (to be SIGKILLed) after two saves."""
    os.environ["DETECTRON2_DATASETS"] = str(dataset_root)
    torch.set_num_threads(1)
    hang_after_checkpoint_saves(2)
    load_script("tools/finetune_leopart.py").cli(["--config-file", str(config_file)])


def test_sigkill_then_resume_continues_and_the_tuned_vit_loads_into_the_extractor(
    tmp_path, training_datasets, one_thread
):
    out = tmp_path / "out"
    config = _config_file(tmp_path, _tiny_cfg(out, max_iter=1000, checkpoint_period=2))
    child = multiprocessing.get_context("spawn").Process(
        target=_finetune_until_hung, args=(config, training_datasets)
    )
    pointer = out / "last_checkpoint"
    sigkill_when(
        child,
        lambda: pointer.is_file() and pointer.read_text() == "model_0000003.pth",
        timeout=180,
        what="a second checkpoint",
    )
    assert not (out / "model_final.pth").exists()

    load_script("tools/finetune_leopart.py").cli(
        ["--config-file", str(config), "--resume", "SOLVER.MAX_ITER", "6"]
    )
    log = (out / "log.txt").read_text()
    resumed = log[log.rindex("model_0000003.pth") :]
    assert re.search(r"Starting training from iteration 4\b", resumed)
    final_path = out / "model_final.pth"
    final = torch.load(final_path, map_location="cpu", weights_only=True)
    assert final["iteration"] == 5
    assert (out / "loss_curves.png").stat().st_size > 0
    assert "images/s" in resumed and "ETA" in resumed

    # The checkpoint round trip: the extractor reads the student (or the teacher) exactly.
    cfg = _tiny_cfg(out)
    model = LeopartModel(cfg)
    model.load_state_dict(final["model"])
    images = torch.randn(2, 3, 32, 48)
    for fmt, trained in (("auto", model.student), ("leopart_teacher", model.teacher)):
        node = cfg.LEOPART.BACKBONE.clone()
        node.CHECKPOINT, node.CHECKPOINT_FORMAT = str(final_path), fmt
        extractor = build_feature_extractor(node, 0, 0)
        extractor.request_tokens({"patch_tokens"})
        trained.eval()
        ours = trained.extract_with_tokens(images, frozenset({"patch_tokens"}))
        theirs = extractor(images)
        assert torch.equal(theirs.features, ours[0])
        assert torch.equal(theirs.tokens["patch_tokens"], ours[1]["patch_tokens"])
    assert not torch.equal(model.student.model.pos_embed, model.teacher.model.pos_embed)


def test_two_gloo_processes_fine_tune_and_save_the_final_model(tmp_path, training_datasets):
    out = tmp_path / "out"
    config = _config_file(tmp_path, _tiny_cfg(out, max_iter=2))
    tool = load_script("tools/finetune_leopart.py")
    args = tool.default_argument_parser().parse_args(
        ["--config-file", str(config), "--num-gpus", "2"]
    )
    launch(tool.main, args.num_gpus, args=(args,), backend="gloo", start_method="fork")
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 1
    # Each of the two processes keeps half of the queue (the reference's 8,192 / #GPUs).
    assert final["model"]["queue.embeddings"].shape == (32, 32)
    assert "World size: 2" in (out / "log.txt").read_text()
