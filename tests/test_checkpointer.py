"""ResilientCheckpointer: resume past torn checkpoints; refuse weights of another architecture.
Also the start-up errors for absent or foreign extractor checkpoints of the proposal stage."""

import json
import logging
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.modeling import build_model
from training_cases import tiny_training_cfg

from scripts import load_script
from uis_d2.config import load_config
from uis_d2.engine.checkpointer import (
    CheckpointLoadError,
    ResilientCheckpointer,
    checkpoints_newest_first,
)
from uis_d2.utils.checkpoint_convert import save_detectron2_checkpoint

REPO = Path(__file__).resolve().parents[1]


class _Progress:
    """Stands in for the trainer: a checkpointable holding the iteration."""

    def __init__(self) -> None:
        self.iter = -1

    def state_dict(self) -> dict:
        return {"iteration": self.iter}

    def load_state_dict(self, state: dict) -> None:
        self.iter = state["iteration"]


def _checkpointer(save_dir: Path, seed: int = 0) -> ResilientCheckpointer:
    torch.manual_seed(seed)
    return ResilientCheckpointer(nn.Linear(3, 2), str(save_dir), trainer=_Progress())


def _save_at(save_dir: Path, iterations: list[int]) -> dict[int, torch.Tensor]:
    """Periodic checkpoints at ``iterations`` with distinct weights; returns the weights."""
    writer = _checkpointer(save_dir)
    weights = {}
    for iteration in iterations:
        with torch.no_grad():
            writer.model.weight.fill_(float(iteration))
        writer.checkpointables["trainer"].iter = iteration
        writer.save(f"model_{iteration:07d}")
        weights[iteration] = writer.model.weight.detach().clone()
    return weights


def test_resume_follows_the_pointer_when_it_is_readable(tmp_path):
    weights = _save_at(tmp_path, [1, 3])
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    reader = _checkpointer(tmp_path, seed=1)
    reader.resume_or_load("", resume=True)
    assert reader.checkpointables["trainer"].iter == 3
    assert torch.equal(reader.model.weight, weights[3])


@pytest.fixture
def load_once_after_failure(monkeypatch):
    """detectron2 main's contract on every route: ``load`` refuses to run on an instance whose
    previous ``load`` raised (main keeps per-load state that such a load leaves set)."""
    from detectron2.checkpoint import DetectionCheckpointer

    original = DetectionCheckpointer.load
    failed: set[int] = set()

    def load(self, path, *args, **kwargs):
        assert id(self) not in failed, "load called again on a checkpointer whose load raised"
        try:
            return original(self, path, *args, **kwargs)
        except Exception:
            failed.add(id(self))
            raise

    monkeypatch.setattr(DetectionCheckpointer, "load", load)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pointer_to_missing_file"])
def test_unreadable_last_checkpoint_falls_back_to_the_previous_one(
    tmp_path, caplog, damage, load_once_after_failure
):
    weights = _save_at(tmp_path, [1, 3, 5])
    newest = tmp_path / "model_0000005.pth"
    if damage == "garbage":
        newest.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.unlink()
    reader = _checkpointer(tmp_path, seed=1)
    with caplog.at_level(logging.WARNING, logger="fvcore.common.checkpoint"):
        reader.resume_or_load("", resume=True)
    assert reader.checkpointables["trainer"].iter == 3
    assert torch.equal(reader.model.weight, weights[3])
    assert any(
        "model_0000003.pth instead of the unreadable" in r.getMessage()
        and "model_0000005.pth" in r.getMessage()
        for r in caplog.records
    )
    # The pointer now names what was loaded, so the next resume needs no fallback.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"


def test_no_readable_checkpoint_is_an_error_naming_each_file(tmp_path, load_once_after_failure):
    _save_at(tmp_path, [1, 3])
    for name in ("model_0000001.pth", "model_0000003.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointLoadError, match=r"(?s)model_0000003\.pth.*model_0000001\.pth"):
        _checkpointer(tmp_path).resume_or_load("", resume=True)


def test_checkpoints_are_listed_newest_first(tmp_path):
    for name in ("model_0000009.pth", "model_0000010.pth", "model_final.pth", "other.pth"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(p).name for p in checkpoints_newest_first(str(tmp_path))] == [
        "model_final.pth",
        "model_0000010.pth",
        "model_0000009.pth",
    ]


@pytest.fixture(scope="module")
def solov2():
    cfg = tiny_training_cfg(Path("unused"))
    cfg.MODEL.SOLOV2.EMBED_DIM = 8
    return build_model(cfg)


def test_vit_state_dict_as_solov2_weights_is_refused(tmp_path, solov2):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1)
    path = tmp_path / "vit_mae.pth"
    torch.save({"model": vit.state_dict()}, path)
    before = {k: v.clone() for k, v in solov2.named_parameters()}
    with pytest.raises(CheckpointLoadError, match=r"vit_mae\.pth: .*another architecture"):
        ResilientCheckpointer(solov2).resume_or_load(str(path), resume=False)
    assert all(torch.equal(v, before[k]) for k, v in solov2.named_parameters())


def test_converted_backbone_only_weights_still_load(tmp_path, solov2):
    """A DenseCL conversion names only backbone tensors, in the names matching renames."""
    backbone = {
        k.removeprefix("backbone.bottom_up."): v.numpy() + 1
        for k, v in solov2.state_dict().items()
        if k.startswith("backbone.bottom_up.")
    }
    path = tmp_path / "densecl_d2.pkl"
    save_detectron2_checkpoint(backbone, path)
    ResilientCheckpointer(solov2).resume_or_load(str(path), resume=False)
    stem = solov2.backbone.bottom_up.stem.conv1.weight
    assert torch.equal(stem, torch.from_numpy(backbone["stem.conv1.weight"]))


def test_garbage_weights_file_names_the_file(tmp_path, solov2):
    path = tmp_path / "model.pth"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CheckpointLoadError, match=r"model\.pth: unreadable checkpoint"):
        ResilientCheckpointer(solov2).resume_or_load(str(path), resume=False)


def _proposal_config(tmp_path: Path, checkpoint: Path) -> Path:
    config = tmp_path / "proposals.yaml"
    config.write_text(
        f"_BASE_: {REPO / 'configs/proposals/Base-Proposals.yaml'}\n"
        "MODEL: {DEVICE: cpu}\n"
        "PROPOSALS:\n"
        "  NUM_WORKERS: 0\n"
        "  SALIENCY: {ENABLED: False}\n"
        "  EXTRACTOR:\n"
        "    NAME: TimmViTKeys\n"
        "    ARCH: vit_tiny_patch16_224\n"
        f"    CHECKPOINT: {checkpoint}\n"
    )
    return config


def _generate_proposals(argv: list[str]) -> None:
    load_script("tools/generate_proposals.py").main(argv)


@pytest.fixture
def one_image_dataset(tmp_path):
    from detectron2.data.datasets import register_coco_instances

    (tmp_path / "images.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "o"}]})
    )
    name = f"uis_test_checkpointer_{tmp_path.name}"
    register_coco_instances(name, {}, str(tmp_path / "images.json"), str(tmp_path))
    return name


def test_absent_extractor_checkpoint_fails_at_start_up_naming_it(tmp_path, one_image_dataset):
    config = _proposal_config(tmp_path, tmp_path / "absent_mae.pth")
    out = tmp_path / "out.json"
    with pytest.raises(FileNotFoundError, match=r"PROPOSALS\.EXTRACTOR\.CHECKPOINT = .*absent_mae"):
        _generate_proposals(
            ["--config-file", str(config), "--dataset", one_image_dataset, "--output", str(out)]
        )
    assert not out.exists()


def test_resnet_state_dict_given_to_the_vit_extractor_is_refused(tmp_path, one_image_dataset):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    cfg = load_config(_proposal_config(tmp_path, path), [])
    from uis_d2.proposals.base import build_pseudo_mask_generator

    with pytest.raises(ValueError, match=r"resnet18\.pth.*does not fit the model"):
        build_pseudo_mask_generator(cfg)
