"""Keys of a ViT's last attention block as dense features (deep-spectral / CutLER / paper)."""

from __future__ import annotations

import math
from typing import Any

import timm
import torch
from detectron2.config import configurable
from timm.layers import resample_abs_pos_embed

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, FeatureExtractor
from uis_d2.features.checkpoints import load_checkpoint


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
        batch, _, height, width = images.shape
        self.model.forward_features(images)
        qkv, self._qkv = self._qkv, None
        tokens = qkv.shape[1]
        keys = qkv.reshape(batch, tokens, 3, self.num_heads, -1)[:, :, 1].reshape(batch, tokens, -1)
        keys = keys[:, self.model.num_prefix_tokens :]
        h, w = height // self.stride, width // self.stride
        return keys.transpose(1, 2).reshape(batch, -1, h, w)
