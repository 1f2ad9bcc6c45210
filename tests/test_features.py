"""Feature extractors: ViT keys, ResNet maps, the weight-free baseline, checkpoint layouts."""

from __future__ import annotations

import hashlib

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.config import get_cfg
from uis_d2.features import build_feature_extractor, preprocessed_size
from uis_d2.features.patch_stats import PatchStats
from uis_d2.features.resnet import ResNetDense
from uis_d2.features.vit import TimmViTKeys

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def _node(name="TimmViTKeys", arch="vit_small_patch16_224", checkpoint="", fmt="auto"):
    node = get_cfg().PROPOSALS.EXTRACTOR.clone()
    node.NAME, node.ARCH, node.CHECKPOINT, node.CHECKPOINT_FORMAT = name, arch, checkpoint, fmt
    node.PATCH_SIZE = 8
    return node


def _tiny_vit(seed=0, checkpoint="", fmt="auto", **overrides) -> TimmViTKeys:
    torch.manual_seed(seed)
    return TimmViTKeys(
        _node(checkpoint=str(checkpoint), fmt=fmt), 32, 64, model_kwargs={**TINY_VIT, **overrides}
    )


def test_preprocessed_size_resizes_caps_and_rounds_to_stride():
    assert preprocessed_size(100, 150, 48, 0, 8) == (48, 72)
    assert preprocessed_size(100, 300, 48, 64, 8) == (24, 64)  # long side capped first
    assert preprocessed_size(37, 50, 0, 0, 16) == (32, 48)  # 0 keeps the size, then rounds
    assert preprocessed_size(3, 3, 0, 0, 16) == (16, 16)  # never below one patch


def test_preprocess_normalises_with_imagenet_statistics():
    extractor = _tiny_vit()
    image = torch.full((3, 40, 40), 255, dtype=torch.uint8)
    x = extractor.preprocess(image)
    assert x.shape == (3, 32, 32)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 5, 5], expected, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        extractor.preprocess(torch.zeros(40, 40, dtype=torch.uint8))


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_vit_keys_are_the_last_blocks_key_projection_without_prefix_tokens(reg_tokens):
    extractor = _tiny_vit(reg_tokens=reg_tokens)
    model = extractor.model
    captured = {}
    model.blocks[-1].register_forward_pre_hook(lambda _m, args: captured.update(x=args[0]))
    images = torch.randn(2, 3, 24, 40)
    features = extractor(images).features
    assert features.shape == (2, 32, 3, 5)
    block = model.blocks[-1]
    keys = block.attn.qkv(block.norm1(captured["x"]))[:, model.num_prefix_tokens :, 32:64]
    assert torch.allclose(features.flatten(2).transpose(1, 2), keys, atol=1e-5)


def test_input_not_on_the_grid_is_rejected():
    with pytest.raises(ValueError, match="multiples of the stride 8"):
        _tiny_vit()(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize(("stage", "stride"), [("res4", 16), ("res5", 32)])
def test_resnet_dense_stage_and_stride(stage, stride):
    node = _node("ResNetDense", "resnet18")
    node.RESNET_STAGE = stage
    extractor = build_feature_extractor(node, 64, 128)
    out = extractor(extractor.preprocess(torch.zeros(3, 64, 96, dtype=torch.uint8))[None])
    assert out.stride == stride and out.grid_size == (64 // stride, 96 // stride)
    assert out.features.shape[1] == (256 if stage == "res4" else 512)


def test_patch_stats_separates_a_coloured_object_from_a_textured_background():
    generator = torch.Generator().manual_seed(0)
    image = 110 + 40 * torch.rand(3, 64, 64, generator=generator)
    image[0, 16:48, 16:48], image[1:, 16:48, 16:48] = 220, 40
    extractor = build_feature_extractor(_node("PatchStats"), 0, 0)
    x = extractor.preprocess(image.to(torch.uint8))[None]
    features = torch.nn.functional.normalize(extractor(x).features[0].flatten(1).T, dim=1)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[3:5, 3:5] = True  # object patches away from its edges
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[1:7, 1:7] = False
    obj, bg = features[inside.flatten()], features[outside.flatten()]
    assert (obj @ obj.T).mean() > 0.9
    assert (obj @ bg.T).mean() < 0.0


def _save_layout(state: dict, fmt: str, path):
    def prefixed(prefix):
        return {prefix + k: v for k, v in state.items()}

    head = {"head.weight": torch.zeros(3, 32)}
    if fmt == "mae":
        obj = {"model": state}
    elif fmt == "dino":
        obj = dict(state)
    elif fmt == "mocov3":
        obj = {
            "state_dict": {
                **prefixed("module.base_encoder."),
                **{"module.base_encoder." + k: v for k, v in head.items()},
                **prefixed("module.momentum_encoder."),
                "module.predictor.0.weight": torch.zeros(2, 2),
            },
            "epoch": 1,
        }
    elif fmt == "msn":
        obj = {"target_encoder": {**prefixed("module."), "module.fc.weight": torch.zeros(2)}}
    elif fmt == "selfpatch":
        obj = {
            "teacher": {**prefixed("backbone."), "head.mlp.weight": torch.zeros(2)},
            "student": {"backbone.x": torch.zeros(1)},
        }
    elif fmt == "timm":
        obj = dict(state)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("mae", ".pth"),
        ("dino", ".pth"),
        ("mocov3", ".pth.tar"),
        ("msn", ".pth.tar"),
        ("selfpatch", ".pth"),
        ("timm", ".pth"),
        ("timm", ".safetensors"),
    ],
)
@pytest.mark.parametrize("declared", ["explicit", "auto"])
def test_vit_checkpoint_layouts_load_exactly(tmp_path, fmt, suffix, declared):
    source = _tiny_vit(seed=1)
    path = tmp_path / f"weights{suffix}"
    _save_layout(source.model.state_dict(), fmt, path)
    loaded = _tiny_vit(seed=2, checkpoint=path, fmt=fmt if declared == "explicit" else "auto")
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    assert loaded.describe()["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_position_embedding_of_another_resolution_is_resampled(tmp_path):
    source = _tiny_vit(seed=1, img_size=64)  # 8x8 grid in the file, 4x4 in the model
    path = tmp_path / "dino.pth"
    torch.save(source.model.state_dict(), path)
    loaded = _tiny_vit(seed=2, checkpoint=path, fmt="dino")
    assert loaded.model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(
        loaded.model.blocks[0].attn.qkv.weight, source.model.blocks[0].attn.qkv.weight
    )


def test_densecl_layout_loads_into_resnet(tmp_path):
    torch.manual_seed(0)
    source = build_feature_extractor(_node("ResNetDense", "resnet18"))
    state = {"encoder_q.0." + k: v for k, v in source.trunk.state_dict().items()}
    state["encoder_k.0.conv1.weight"] = torch.zeros(1)
    state["queue"] = torch.zeros(4, 4)
    path = tmp_path / "densecl.pth"
    torch.save({"state_dict": state}, path)
    torch.manual_seed(1)
    loaded = build_feature_extractor(_node("ResNetDense", "resnet18", str(path)))
    assert torch.equal(loaded.trunk.layer4[1].conv2.weight, source.trunk.layer4[1].conv2.weight)
    assert torch.equal(loaded.trunk.bn1.running_var, source.trunk.bn1.running_var)


def test_extractors_from_plain_arguments_equal_the_config_built_ones():
    node = _node("ResNetDense", "resnet18")
    node.RESNET_STAGE = "res4"
    torch.manual_seed(0)
    from_cfg = build_feature_extractor(node, 64, 128)
    torch.manual_seed(0)
    direct = ResNetDense(
        name="ResNetDense", arch="resnet18", stage="res4", short_side=64, max_side=128
    )
    assert direct.describe() == from_cfg.describe()
    images = torch.randn(1, 3, 64, 96)
    assert torch.equal(direct.eval()(images).features, from_cfg(images).features)
    patch = PatchStats(patch_size=4, short_side=0, max_side=0)
    assert patch.name == "PatchStats" and patch.stride == 4 and not patch.amp


def test_densecl_layout_of_a_ddp_wrapped_plain_resnet_loads(tmp_path):
    """One prefix table for the extractors and the detectron2 conversion: DenseCL's includes
    DDP's bare ``module.``, as the conversion always had."""
    torch.manual_seed(0)
    source = build_feature_extractor(_node("ResNetDense", "resnet18"))
    path = tmp_path / "ddp.pth"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in source.trunk.state_dict().items()}}, path
    )
    torch.manual_seed(1)
    loaded = build_feature_extractor(_node("ResNetDense", "resnet18", str(path), "densecl"))
    assert torch.equal(loaded.trunk.layer4[1].conv2.weight, source.trunk.layer4[1].conv2.weight)


def test_checkpoint_of_another_architecture_raises_naming_the_file(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(_tiny_vit(embed_dim=48).model.state_dict(), path)
    with pytest.raises(ValueError, match=r"wide\.pth.*shape mismatch"):
        _tiny_vit(checkpoint=path, fmt="dino")


def test_checkpoint_without_the_models_weights_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.layer.0.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"other\.pth.*only 0 of"):
        _tiny_vit(checkpoint=path, fmt="dino")


def test_wrong_declared_layout_and_missing_file_raise_clearly(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(_tiny_vit().model.state_dict(), path)
    with pytest.raises(ValueError, match=r"bare\.pth: not a mae checkpoint"):
        _tiny_vit(checkpoint=path, fmt="mae")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        _tiny_vit(checkpoint=tmp_path / "absent.pth")


def test_amp_is_set_only_for_extractors_that_support_it_and_changes_nothing_on_cpu():
    assert build_feature_extractor(_node("PatchStats"), 32, 64, amp=True).amp is False
    assert build_feature_extractor(_node(arch="vit_tiny_patch16_224"), 32, 64, amp=True).amp
    extractor = _tiny_vit()
    images = torch.randn(1, 3, 32, 32)
    exact = extractor(images).features
    extractor.amp = True  # bf16 autocast is for CUDA only: CPU features stay exact float32
    features = extractor(images).features
    assert features.dtype == torch.float32 and torch.equal(features, exact)
