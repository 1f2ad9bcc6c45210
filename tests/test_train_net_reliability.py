"""tools/train_net.py under failure: SIGKILL mid-training then --resume, and 2-process gloo DDP."""

import multiprocessing
import os
import re
from pathlib import Path

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from training_cases import tiny_training_cfg

from scripts import hang_after_checkpoint_saves, load_script, sigkill_when
from uis_d2.utils.launch import launch

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("training_datasets")


@pytest.fixture
def one_thread():
    """On a shared, busy machine one intra-op thread trains these tiny models ~5x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_train_net():
    return load_script("tools/train_net.py")


def _config_file(tmp_path: Path, out: Path, **solver) -> Path:
    cfg = tiny_training_cfg(out)
    cfg.DATASETS.TEST = ()  # no evaluation: these tests are about the training loop
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    return path


def _train_until_hung(config_file: Path, dataset_root: Path, hang_after_saves: int) -> None:
    """Runs in a child process: trains, and hangs (to be SIGKILLed) after some checkpoints."""
    os.environ["DETECTRON2_DATASETS"] = str(dataset_root)
    torch.set_num_threads(1)
    hang_after_checkpoint_saves(hang_after_saves)
    _load_train_net().cli(["--config-file", str(config_file)])


def test_sigkill_then_resume_continues_from_the_last_checkpoint(
    tmp_path, training_datasets, one_thread
):
    out = tmp_path / "out"
    round_dir = out / "round1"
    # A schedule far longer than the test: only the kill ends the first run.
    config = _config_file(tmp_path, out, MAX_ITER=1000, CHECKPOINT_PERIOD=2)
    # Spawned, not forked: a fork of a process that has run torch ops can deadlock in OpenMP.
    child = multiprocessing.get_context("spawn").Process(
        target=_train_until_hung, args=(config, training_datasets, 2)
    )
    pointer = round_dir / "last_checkpoint"
    sigkill_when(
        child,
        lambda: pointer.is_file() and pointer.read_text() == "model_0000003.pth",
        timeout=120,
        what="a second checkpoint",
    )
    assert not (round_dir / "model_final.pth").exists()

    _load_train_net().cli(["--config-file", str(config), "--resume", "SOLVER.MAX_ITER", "6"])
    log = (out / "log.txt").read_text()
    resumed = log[log.rindex("model_0000003.pth") :]  # what the second run logged
    assert re.search(r"Starting training from iteration 4\b", resumed)
    assert "Starting training from iteration 0" not in resumed
    final = torch.load(round_dir / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 5


def test_two_gloo_processes_train_and_save_the_final_model(tmp_path):
    out = tmp_path / "out"
    config = _config_file(tmp_path, out, MAX_ITER=2)
    train_net = _load_train_net()
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(config), "--num-gpus", "2", "MODEL.DEVICE", "cpu"]
    )
    # What train_net.cli does, with "fork" instead of "spawn" (no re-import per process).
    launch(train_net.main, args.num_gpus, args=(args,), backend="gloo", start_method="fork")
    final = torch.load(out / "round1/model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 1
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log and "Starting training from iteration 0" in log
