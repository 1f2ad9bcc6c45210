"""Checkpoint conversion: torchvision ResNet-18 in DenseCL / MoCo / plain layouts -> detectron2."""

from pathlib import Path

import pytest
import torch
import torchvision

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from scripts import load_script
from uis_d2.config import get_cfg
from uis_d2.utils.checkpoint_convert import convert_state_dict, detectron2_name

REPO = Path(__file__).resolve().parents[1]


def _torchvision_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    # Non-trivial BN statistics, so that a swapped mean/var would be caught.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def _layouts(state):
    """The same weights the way each training code base saves them."""
    moco = {f"module.encoder_q.{k}": v for k, v in state.items()}
    moco.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in state.items()})
    moco["module.queue"] = torch.zeros(8, 4)
    densecl_full = {f"encoder_q.0.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    densecl_full["encoder_q.1.mlp.0.weight"] = torch.zeros(4, 512)
    densecl_full.update({f"encoder_k.0.{k}": torch.zeros_like(v) for k, v in state.items()})
    return {
        "torchvision": state,
        "densecl": {"state_dict": {k: v for k, v in state.items() if not k.startswith("fc.")}},
        "densecl_full": {"state_dict": densecl_full},
        "moco": {"state_dict": moco, "epoch": 200, "arch": "resnet18"},
    }


def _detectron2_r18():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


@pytest.fixture(scope="module")
def reference():
    return _torchvision_resnet18()


@pytest.fixture(scope="module")
def backbone():
    """Built once: every load below overwrites all of its tensors."""
    return _detectron2_r18()


@pytest.mark.parametrize(
    "layout, suffix",
    [("torchvision", ".pkl"), ("densecl", ".pkl"), ("densecl_full", ".pkl"), ("moco", ".pth")],
)
def test_conversion_loads_into_a_detectron2_resnet_with_equal_outputs(
    tmp_path, reference, backbone, layout, suffix
):
    for param in backbone.parameters():
        param.data.zero_()  # nothing from an earlier case may survive
    source = tmp_path / "input.pth"
    torch.save(_layouts(reference.state_dict())[layout], source)
    output = tmp_path / f"converted{suffix}"

    tool = load_script("tools/convert_checkpoint.py")
    assert tool.main([str(source), str(output)]) == 0

    DetectionCheckpointer(backbone).load(str(output))
    own = backbone.state_dict()
    converted, report = convert_state_dict(torch.load(source, weights_only=True), "auto")
    assert set(converted) == set(own), "every backbone tensor comes from the checkpoint"
    assert not report.unexpected
    # Loaded weights equal the torchvision ones, so the networks compute the same features.
    x = torch.randn(1, 3, 64, 64)
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    torch.testing.assert_close(backbone(x)["res5"], trunk(x), rtol=1e-4, atol=1e-4)


def test_names_follow_detectron2_conventions():
    assert detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_name("layer3.1.conv2.weight") == "res4.1.conv2.weight"
    assert detectron2_name("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert detectron2_name("layer2.0.downsample.0.weight") == "res3.0.shortcut.weight"
    shortcut_bn = detectron2_name("layer2.0.downsample.1.running_mean")
    assert shortcut_bn == "res3.0.shortcut.norm.running_mean"
    assert detectron2_name("fc.weight") is None


def test_report_lists_dropped_and_unexpected_keys():
    state = _torchvision_resnet18().state_dict()
    state["projector.weight"] = torch.zeros(2)
    _, report = convert_state_dict(state, "torchvision")
    assert "fc.weight" in report.dropped and "bn1.num_batches_tracked" in report.dropped
    assert report.unexpected == ["projector.weight"]
    with pytest.raises(ValueError, match="no ResNet stem"):
        convert_state_dict({"state_dict": {"encoder.weight": torch.zeros(1)}}, "auto")
