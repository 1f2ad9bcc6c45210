"""Token access (features/base.py): the ViT's queries, keys, class-token attention and final-norm
tokens from the one forward, only on request; the weight-free surrogate; clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.config import get_cfg
from uis_d2.data.synthetic import render_scene
from uis_d2.features import build_feature_extractor
from uis_d2.features.base import (
    TOKEN_NAMES,
    TokenUnavailableError,
    extract_features,
    extract_features_and_tokens,
)
from uis_d2.features.vit import TimmViTKeys

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def _node(name="TimmViTKeys", arch="vit_small_patch16_224"):
    node = get_cfg().PROPOSALS.EXTRACTOR.clone()
    node.NAME, node.ARCH, node.PATCH_SIZE = name, arch, 8
    return node


def _tiny_vit(**overrides) -> TimmViTKeys:
    torch.manual_seed(0)
    return TimmViTKeys(_node(), 32, 64, model_kwargs={**TINY_VIT, **overrides})


def _materialised_attention(extractor: TimmViTKeys, images: torch.Tensor) -> torch.Tensor:
    """The last block's full softmax attention (B, heads, T, T) as the model itself computes it,
    with fused attention switched off so that the matrix exists (captured at attn_drop)."""
    attn = extractor.model.blocks[-1].attn
    attn.fused_attn = False
    captured = {}
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: captured.update(a=out))
    try:
        extractor.model.forward_features(images)
    finally:
        handle.remove()
        extractor._qkv = None
    return captured["a"]


@pytest.mark.parametrize("overrides", [{}, {"reg_tokens": 4}, {"qk_norm": True}])
def test_class_attention_is_the_models_own_attention_row_without_prefix_columns(overrides):
    extractor = _tiny_vit(**overrides)
    extractor.request_tokens({"cls_attention"})
    images = torch.randn(2, 3, 24, 40)
    tokens = extractor(images).tokens
    full = _materialised_attention(extractor, images)
    prefix = extractor.model.num_prefix_tokens
    assert tokens["cls_attention"].shape == (2, 2, 3, 5)
    # Rows over every token (class column included) sum to one; the patches' part is kept as
    # it is, not renormalised, so it sums to one minus the prefix columns' share.
    assert torch.allclose(full[:, :, 0].sum(-1), torch.ones(2, 2), atol=1e-5)
    patches = tokens["cls_attention"].flatten(2)
    assert torch.allclose(patches, full[:, :, 0, prefix:], atol=1e-6)
    assert torch.allclose(patches.sum(-1) + full[:, :, 0, :prefix].sum(-1), torch.ones(2, 2))
    assert (patches.sum(-1) < 1).all()


def test_queries_and_keys_are_after_the_blocks_qk_norm():
    extractor = _tiny_vit(qk_norm=True)
    extractor.request_tokens({"queries", "keys"})
    model, attn = extractor.model, extractor.model.blocks[-1].attn
    with torch.no_grad():  # make the norms visible: not the identity they start as
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.bias.uniform_(-1.0, 1.0)
    captured = {}
    model.blocks[-1].register_forward_pre_hook(lambda _m, args: captured.update(x=args[0]))
    images = torch.randn(1, 3, 16, 24)
    out = extractor(images)
    qkv = attn.qkv(model.blocks[-1].norm1(captured["x"])).reshape(1, 7, 3, 2, 16)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, heads, T, d)
    assert out.tokens["queries"].shape == out.tokens["keys"].shape == (1, 2, 7, 16)
    assert torch.allclose(out.tokens["queries"], attn.q_norm(q), atol=1e-5)
    assert torch.allclose(out.tokens["keys"], attn.k_norm(k), atol=1e-5)
    assert not torch.allclose(out.tokens["keys"], k, atol=1e-2)
    # The features stay the raw keys of the patches (unchanged by the request).
    assert torch.allclose(out.features.flatten(2), k[:, :, 1:].transpose(1, 2).flatten(2).mT)


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_final_norm_tokens_split_the_class_token_from_the_patch_map(reg_tokens):
    extractor = _tiny_vit(reg_tokens=reg_tokens)
    extractor.request_tokens({"cls_token", "patch_tokens", "keys"})
    images = torch.randn(2, 3, 24, 40)
    out = extractor(images)
    normed = extractor.model.forward_features(images)
    prefix = 1 + reg_tokens
    assert set(out.tokens) == {"cls_token", "patch_tokens", "keys"}
    assert torch.allclose(out.tokens["cls_token"], normed[:, 0])
    assert out.tokens["patch_tokens"].shape == (2, 32, 3, 5)
    assert torch.allclose(out.tokens["patch_tokens"].flatten(2).mT, normed[:, prefix:])
    assert out.tokens["keys"].shape == (2, 2, prefix + 15, 16)  # prefix tokens kept


def test_nothing_extra_is_computed_unless_requested(monkeypatch):
    extractor = _tiny_vit()

    def refuse(*_args):
        raise AssertionError("attention tokens computed without a request")

    monkeypatch.setattr(extractor, "_attention_tokens", refuse)
    images = [torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)]
    features, tokens = extract_features_and_tokens(extractor, images)
    assert tokens == [{}] and extractor(torch.randn(1, 3, 16, 16)).tokens == {}
    assert torch.equal(features[0], extract_features(extractor, images)[0])


def test_requests_accumulate_and_tokens_come_per_image_of_any_size():
    extractor = _tiny_vit()
    extractor.request_tokens({"cls_attention"})
    extractor.request_tokens({"cls_token"})  # a second consumer of the same extractor
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(40, 48), (64, 32)]]
    features, tokens = extract_features_and_tokens(extractor, images)
    assert [set(t) for t in tokens] == [{"cls_attention", "cls_token"}] * 2
    for feature, per_image in zip(features, tokens):
        assert per_image["cls_attention"].shape == (2, *feature.shape[1:])
        assert per_image["cls_token"].shape == (32,)
    assert torch.equal(features[1], extract_features(extractor, images[1:])[0])


def test_unavailable_tokens_are_refused_naming_the_extractor_and_the_token():
    resnet = build_feature_extractor(_node("ResNetDense", "resnet18"), 64, 128)
    with pytest.raises(TokenUnavailableError, match=r"ResNetDense.*'cls_attention'"):
        resnet.request_tokens({"cls_attention"})
    pooled = _tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(TokenUnavailableError, match=r"TimmViTKeys.*'cls_token'"):
        pooled.request_tokens({"keys", "cls_token"})
    pooled.request_tokens({"queries", "keys", "patch_tokens"})  # these need no class token
    with pytest.raises(ValueError, match="unknown token names"):
        pooled.request_tokens({"attention"})


def test_patch_stats_surrogate_tokens():
    extractor = build_feature_extractor(_node("PatchStats"), 0, 0)
    assert extractor.provided_tokens == frozenset(TOKEN_NAMES)
    rgb, _ = render_scene(np.random.default_rng(3))
    images = [torch.from_numpy(rgb).permute(2, 0, 1).contiguous()]
    plain = extract_features(extractor, images)[0]
    extractor.request_tokens(TOKEN_NAMES)
    (features,), (tokens,) = extract_features_and_tokens(extractor, images)
    assert torch.equal(features, plain)  # the features do not change with a request
    channels, h, w = features.shape
    queries, keys = tokens["queries"], tokens["keys"]
    assert queries.shape == keys.shape == (1, 1 + h * w, 11)  # one head, the class token first
    assert torch.equal(queries[0, 1:], keys[0, 1:])
    # The class query picks the distinctness channel: a_CLS = d, whose softmax is the attention.
    distinct = queries[0, :1] @ keys[0, 1:].T
    assert torch.allclose(distinct[0], keys[0, 1:, -1])
    assert torch.allclose(tokens["cls_attention"].flatten(), distinct[0].softmax(0))
    assert tokens["cls_attention"].shape == (1, h, w)
    assert tokens["cls_token"].shape == (channels,)
    assert torch.equal(tokens["patch_tokens"], features)
