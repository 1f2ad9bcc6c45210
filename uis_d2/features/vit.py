"""Keys of a ViT's last attention block as dense features (deep-spectral / CutLER / paper).

On request (``request_tokens``) the same forward also yields the ``TOKEN_NAMES`` the seed
systems read (SEED_SYSTEMS.md 5.0): the last block's per-head queries and keys, the class
token's attention over the patches, and the final-norm class and patch tokens.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
from detectron2.config import configurable
from timm.layers import resample_abs_pos_embed
from torch import nn

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, TOKEN_NAMES, FeatureExtractor
from uis_d2.features.checkpoints import load_checkpoint


def parse_model_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``MODEL_KWARGS`` ("name=value" strings, values Python literals) as timm arguments."""
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        try:
            if not sep or not name.strip().isidentifier():
                raise ValueError("not name=value")
            kwargs[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as err:
            raise ValueError(
                f"MODEL_KWARGS entry {item!r}: expected name=value with a Python literal value "
                f"(e.g. 'depth=2'): {err}"
            ) from None
    return kwargs


@FEATURE_EXTRACTOR_REGISTRY.register()
class TimmViTKeys(FeatureExtractor):
    """Any timm ViT; dynamic image size, so position embeddings are interpolated per input.

    ``model_kwargs`` override timm's architecture arguments (tests build tiny ViTs with them).
    """

    supports_amp = True

    @configurable
    def __init__(self, *, model_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        """``arch``: a timm model name; ``kwargs``: FeatureExtractor's."""
        super().__init__(**kwargs)
        self.model = timm.create_model(
            self.arch,
            pretrained=False,
            dynamic_img_size=True,
            num_classes=0,
            **(model_kwargs or {}),
        )
        self.stride = int(self.model.patch_embed.patch_size[0])
        if self.checkpoint:
            self.checkpoint_sha256 = load_checkpoint(
                self.model, self.checkpoint, self.checkpoint_format, self._adapt_pos_embed
            )
        attn = self.model.blocks[-1].attn
        self.num_heads = int(attn.num_heads)
        self._qkv: torch.Tensor | None = None
        attn.qkv.register_forward_hook(self._keep_qkv)
        class_tokens = {"cls_attention", "cls_token"}
        has_class_token = self.model.cls_token is not None
        self.provided_tokens = frozenset(
            name for name in TOKEN_NAMES if has_class_token or name not in class_tokens
        )

    @classmethod
    def from_config(cls, cfg, short_side: int = 480, max_side: int = 800) -> dict[str, Any]:
        args = super().from_config(cfg, short_side, max_side)
        args["model_kwargs"] = parse_model_kwargs(cfg.MODEL_KWARGS)
        return args

    def _keep_qkv(self, _module, _inputs, output: torch.Tensor) -> None:
        self._qkv = output

    def _adapt_pos_embed(self, name: str, loaded: torch.Tensor, expected: torch.Tensor):
        """Checkpoints trained at another resolution: resample the position-embedding grid."""
        if name != "pos_embed" or loaded.shape[-1] != expected.shape[-1]:
            return loaded
        prefix = 0 if getattr(self.model, "no_embed_class", False) else self.model.num_prefix_tokens
        new_side = math.isqrt(expected.shape[1] - prefix)
        old_side = math.isqrt(loaded.shape[1] - prefix)
        return resample_abs_pos_embed(
            loaded, (new_side, new_side), (old_side, old_side), num_prefix_tokens=prefix
        )

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract_with_tokens(images, frozenset())[0]

    def extract_with_tokens(
        self, images: torch.Tensor, names: frozenset[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch, _, height, width = images.shape
        output = self.model.forward_features(images)
        qkv, self._qkv = self._qkv, None
        prefix = self.model.num_prefix_tokens
        h, w = height // self.stride, width // self.stride
        queries, keys = qkv.reshape(batch, qkv.shape[1], 3, self.num_heads, -1)[:, :, :2].unbind(2)
        features = keys[:, prefix:].flatten(2).transpose(1, 2).reshape(batch, -1, h, w)
        tokens: dict[str, torch.Tensor] = {}
        if names & {"queries", "keys", "cls_attention"}:
            tokens = self._attention_tokens(queries, keys, (h, w))
        if "cls_token" in names:
            tokens["cls_token"] = output[:, 0]
        if "patch_tokens" in names:
            tokens["patch_tokens"] = output[:, prefix:].transpose(1, 2).reshape(batch, -1, h, w)
        return features, {name: tokens[name] for name in names}

    def _attention_tokens(
        self, queries: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """Per-head queries and keys (B, heads, T, d) as the attention uses them (after the
        block's q_norm/k_norm), and the class token's attention over the patches, recomputed
        in float32 with the block's scale (fused attention never materialises it): softmax over
        all T tokens, then the prefix columns dropped without renormalising, as DINO and
        Leopart read it."""
        attn = self.model.blocks[-1].attn
        with torch.autocast("cuda", enabled=False):
            q = getattr(attn, "q_norm", nn.Identity())(queries.transpose(1, 2).float())
            k = getattr(attn, "k_norm", nn.Identity())(keys.transpose(1, 2).float())
            tokens = {"queries": q, "keys": k}
            if self.model.cls_token is not None:
                logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, heads, 1, T)
                patches = logits.softmax(dim=-1)[:, :, 0, self.model.num_prefix_tokens :]
                tokens["cls_attention"] = patches.reshape(*patches.shape[:2], *grid)
        return tokens
