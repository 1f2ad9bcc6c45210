"""The proposal configs of every feature model of Engstler et al. 2023 (Tables 1-2) and DINOv2:
each loads, names its official checkpoint, keeps the paper's DINO saliency, and builds its
extractor (random weights, tiny input) with the expected grid and width."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.config import get_cfg, load_config
from uis_d2.features import build_feature_extractor
from uis_d2.features.checkpoints import read_state_dict
from uis_d2.features.vit import TimmViTKeys

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "proposals"
TINY_INPUT = ["PROPOSALS.SHORT_SIDE", "32", "PROPOSALS.MAX_SIDE", "64"]
# A 40 x 60 image: short side to 32 (32 x 48), each side then rounded to a multiple of the
# stride; the resulting grid per stride is in GRIDS.
IMAGE_SIZE = (40, 60)
# config: extractor, arch, checkpoint file under checkpoints/, format, feature channels
FEATURE_MODELS = {
    "coco_mae": ("TimmViTKeys", "vit_base_patch16_224", "mae_pretrain_vit_base.pth", "mae", 768),
    "coco_dino": (
        "TimmViTKeys", "vit_base_patch16_224", "dino_vitbase16_pretrain.pth", "dino", 768
    ),
    "coco_mocov3": ("TimmViTKeys", "vit_base_patch16_224", "vit-b-300ep.pth.tar", "mocov3", 768),
    "coco_msn": ("TimmViTKeys", "vit_base_patch16_224", "vitb16_600ep.pth.tar", "msn", 768),
    "coco_selfpatch": (
        "TimmViTKeys", "vit_small_patch16_224", "dino_selfpatch.pth", "selfpatch", 384
    ),
    "coco_densecl": (
        "ResNetDense", "resnet101", "densecl_r101_imagenet_200ep.pth", "densecl", 2048
    ),
    "coco_dinov2": (
        "TimmViTKeys", "vit_base_patch14_reg4_dinov2", "dinov2_vitb14_reg4_pretrain.pth",
        "dinov2", 768,
    ),
}  # fmt: skip
GRIDS = {16: (2, 3), 14: (2, 3), 32: (1, 2)}  # inputs 32 x 48, 28 x 42, 32 x 64
DINO_SALIENCY = ("TimmViTKeys", "vit_base_patch16_224", "dino_vitbase16_pretrain.pth", "dino")


def _load(name: str, *opts: str):
    return load_config(CONFIGS / f"{name}.yaml", [*TINY_INPUT, *opts])


def _node_fields(node) -> tuple[str, str, str, str]:
    return node.NAME, node.ARCH, Path(node.CHECKPOINT).name, node.CHECKPOINT_FORMAT


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_config_names_its_official_checkpoint_and_dino_saliency(name):
    cfg = _load(name)
    p = cfg.PROPOSALS
    assert _node_fields(p.EXTRACTOR) == FEATURE_MODELS[name][:4]
    assert Path(p.EXTRACTOR.CHECKPOINT).parent == Path("checkpoints")
    assert p.GENERATOR == "SpectralProposalGenerator" and p.SPECTRAL.K == [2, 3, 4, 5]
    assert p.SALIENCY.ENABLED and p.SALIENCY.K == 2  # the paper's saliency, for every model
    assert _node_fields(p.SALIENCY.EXTRACTOR) == DINO_SALIENCY
    assert Path(p.SALIENCY.EXTRACTOR.CHECKPOINT).parent == Path("checkpoints")


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_missing_checkpoint_is_an_error_naming_the_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here, whatever the repository holds
    p = _load(name).PROPOSALS
    for node in (p.EXTRACTOR, p.SALIENCY.EXTRACTOR):
        with pytest.raises(FileNotFoundError, match=f"not found: {node.CHECKPOINT}"):
            read_state_dict(node.CHECKPOINT, node.CHECKPOINT_FORMAT)


def test_building_the_extractor_reports_the_missing_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    node = _load("coco_densecl").PROPOSALS.EXTRACTOR
    with pytest.raises(FileNotFoundError, match="checkpoints/densecl_r101_imagenet_200ep.pth"):
        build_feature_extractor(node, 32, 64)


def _features(extractor, size: tuple[int, int]) -> torch.Tensor:
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    with torch.no_grad():
        return extractor(extractor.preprocess(image)[None]).features[0]


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_instance_extractor_builds_with_random_weights(name):
    """The real architectures (a few seconds each on a CPU), at a tiny input."""
    cfg = _load(name, "PROPOSALS.EXTRACTOR.CHECKPOINT", "")
    torch.manual_seed(0)
    extractor = build_feature_extractor(cfg.PROPOSALS.EXTRACTOR, 32, 64)
    features = _features(extractor, IMAGE_SIZE)
    assert features.shape == (FEATURE_MODELS[name][4], *GRIDS[extractor.stride])
    assert torch.isfinite(features).all()
    if name == "coco_dinov2":  # patch 14, class + 4 register tokens, any input size
        assert extractor.stride == 14 and extractor.model.num_prefix_tokens == 5
        for size, grid in {(37, 91): (2, 5), (50, 50): (2, 2), (31, 45): (2, 3)}.items():
            assert _features(extractor, size).shape == (768, *grid), size


def test_shared_saliency_extractor_builds_with_random_weights():
    cfg = load_config(
        CONFIGS / "Base-DINO-Saliency.yaml",
        [*TINY_INPUT, "PROPOSALS.SALIENCY.EXTRACTOR.CHECKPOINT", ""],
    )
    extractor = build_feature_extractor(cfg.PROPOSALS.SALIENCY.EXTRACTOR, 32, 64)
    assert _features(extractor, IMAGE_SIZE).shape == (768, 2, 3)


def _tiny_reg4_vit(checkpoint: str = "", fmt: str = "auto") -> TimmViTKeys:
    node = get_cfg().PROPOSALS.EXTRACTOR.clone()
    node.ARCH = "vit_base_patch14_reg4_dinov2"
    node.CHECKPOINT, node.CHECKPOINT_FORMAT = checkpoint, fmt
    tiny = dict(embed_dim=32, depth=2, num_heads=2, img_size=56)
    return TimmViTKeys(node, 28, 56, model_kwargs=tiny)


@pytest.mark.parametrize("fmt", ["dinov2", "auto"])
def test_official_dinov2_layout_loads_into_timm_register_model(tmp_path, fmt):
    """Meta's file keeps `register_tokens`, a `mask_token` and the class token's position
    embedding; timm's register model has `reg_token` and embeds positions of patches only."""
    torch.manual_seed(0)
    source = _tiny_reg4_vit()
    for prefix_token in (source.model.cls_token, source.model.reg_token):
        prefix_token.data.normal_()  # timm initialises them near 0, where any value would pass
    timm_state = source.model.state_dict()
    cls_position = torch.randn(1, 1, 32)
    official = {
        k: v for k, v in timm_state.items() if k not in ("reg_token", "cls_token", "pos_embed")
    }
    official["register_tokens"] = timm_state["reg_token"]
    official["cls_token"] = timm_state["cls_token"] - cls_position
    official["pos_embed"] = torch.cat([cls_position, timm_state["pos_embed"]], dim=1)
    official["mask_token"] = torch.zeros(1, 32)
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(official, path)

    torch.manual_seed(1)
    loaded = _tiny_reg4_vit(str(path), fmt)
    for key, value in timm_state.items():
        assert torch.allclose(loaded.model.state_dict()[key], value, atol=1e-6), key
    images = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        assert torch.allclose(loaded(images).features, source(images).features, atol=1e-5)
