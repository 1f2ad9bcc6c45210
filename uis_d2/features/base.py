"""The contract of every dense feature extractor, and the shared preprocessing.

Extractors are plug-ins in ``FEATURE_EXTRACTOR_REGISTRY``, built the detectron2 way: each
constructor takes plain arguments (``@configurable``), and its ``from_config(cfg, short_side,
max_side)`` classmethod reads them from one extractor config node (``cfg.PROPOSALS.EXTRACTOR`` or
``cfg.PROPOSALS.SALIENCY.EXTRACTOR``); ``build_feature_extractor(node, ...)`` picks the class named
by ``node.NAME``. Every extractor maps a batch of normalised images to a patch grid whose cell
(i, j) covers the input pixels ``[i * stride, (i + 1) * stride) x [j * stride, (j + 1) * stride)``.

Tokens: consumers that need more than the features (the foreground providers reading a ViT's
attention) ask the extractor once, ``extractor.request_tokens({"cls_attention", ...})``; from
then on every forward also returns those ``TOKEN_NAMES`` in ``FeatureMap.tokens``, computed from
the same forward, and ``extract_features_and_tokens`` hands them out per image. An extractor
computes nothing extra while no token is requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from fvcore.common.registry import Registry
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

FEATURE_EXTRACTOR_REGISTRY = Registry("FEATURE_EXTRACTOR")
FEATURE_EXTRACTOR_REGISTRY.__doc__ = "Dense feature extractors, built from an extractor cfg node."

# The tokens an extractor may return besides its features, with their batch shapes. T = P + h*w
# tokens: the P prefix tokens (class token first, then any register tokens), then the patches
# in raster order, so a consumer finds P as T - h * w.
TOKEN_NAMES = (
    "queries",  # (B, heads, T, head_dim): per-head queries of the last attention block
    "keys",  # (B, heads, T, head_dim): per-head keys of the last attention block
    "cls_attention",  # (B, heads, h, w): the class token's softmax attention over the patches
    "cls_token",  # (B, C): the class token's output after the final norm
    "patch_tokens",  # (B, C, h, w): the patch tokens' output after the final norm
)


class TokenUnavailableError(ValueError):
    """A consumer asked an extractor for a token it cannot compute (e.g. attention of ResNet)."""


@dataclass
class FeatureMap:
    """Dense features of a batch of same-size images on a regular patch grid, and the tokens
    requested from the extractor (``TOKEN_NAMES``; empty when none was)."""

    features: torch.Tensor  # (B, C, h, w)
    stride: int  # pixels of the model input covered by one grid cell, per side
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def grid_size(self) -> tuple[int, int]:
        return int(self.features.shape[-2]), int(self.features.shape[-1])


def preprocessed_size(height: int, width: int, short_side: int, max_side: int, stride: int):
    """Model-input size: short side -> ``short_side`` (0 keeps it), long side <= ``max_side``
    (0 = no cap), each side then rounded to the nearest multiple of ``stride``.

    Rounding by resizing (aspect change below half a patch) instead of cropping keeps every
    original pixel inside the grid, so masks map back to the full image by a plain resize.
    """
    scale = 1.0
    if short_side > 0:
        scale = short_side / min(height, width)
    if max_side > 0 and max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    new_h = max(stride, round(height * scale / stride) * stride)
    new_w = max(stride, round(width * scale / stride) * stride)
    return new_h, new_w


class FeatureExtractor(nn.Module):
    """Base class: subclasses set ``stride`` and implement ``extract``.

    ``name``/``arch``/``checkpoint`` are provenance (``describe``); a subclass that loads weights
    reads ``checkpoint`` in the layout ``checkpoint_format`` (features/checkpoints.py).
    ``short_side``/``max_side``: the model-input size (``preprocessed_size``).
    ``amp``: run ``extract`` under bfloat16 autocast on CUDA (ignored elsewhere) when the
    subclass declares ``supports_amp``: the ViTs, whose time is in matmuls that tensor cores
    run several times faster in bf16, and whose keys only feed cosine affinities. Features are
    returned in float32 either way.
    ``provided_tokens``: the ``TOKEN_NAMES`` a subclass can compute, in ``extract_with_tokens``.
    """

    stride: int
    supports_amp = False
    provided_tokens: frozenset[str] = frozenset()

    @configurable
    def __init__(
        self,
        *,
        name: str | None = None,
        arch: str = "",
        checkpoint: str = "",
        checkpoint_format: str = "auto",
        short_side: int = 480,
        max_side: int = 800,
        amp: bool = False,
    ) -> None:
        super().__init__()
        self.name = type(self).__name__ if name is None else str(name)
        self.arch = str(arch)
        self.checkpoint = str(checkpoint)
        self.checkpoint_format = str(checkpoint_format)
        self.short_side = int(short_side)
        self.max_side = int(max_side)
        self.amp = bool(amp) and self.supports_amp
        self.checkpoint_sha256: str | None = None
        self.requested_tokens: frozenset[str] = frozenset()
        self.register_buffer("_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("_std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), False)

    @classmethod
    def from_config(cls, cfg, short_side: int = 480, max_side: int = 800) -> dict[str, Any]:
        """Constructor arguments from one extractor node ``cfg`` (the only place reading it;
        subclasses add their own keys) and the shared input size."""
        return {
            "name": cfg.NAME,
            "arch": cfg.ARCH,
            "checkpoint": cfg.CHECKPOINT,
            "checkpoint_format": cfg.CHECKPOINT_FORMAT,
            "short_side": short_side,
            "max_side": max_side,
        }

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def request_tokens(self, names: Iterable[str]) -> None:
        """Every later forward also returns the tokens ``names`` (added to those requested
        before: several consumers may share one extractor and its forward)."""
        names = frozenset(names)
        unknown = names - set(TOKEN_NAMES)
        if unknown:
            raise ValueError(f"unknown token names {sorted(unknown)}; known: {list(TOKEN_NAMES)}")
        missing = names - self.provided_tokens
        if missing:
            raise TokenUnavailableError(
                f"extractor {self.name} ({type(self).__name__}, arch {self.arch!r}) cannot "
                f"provide the token(s) {sorted(missing)}; it provides "
                f"{sorted(self.provided_tokens) or 'none'}"
            )
        self.requested_tokens = self.requested_tokens | names

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB uint8 (3, H, W) -> normalised float (3, H', W') on the extractor's device."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB image tensor (3, H, W), got {tuple(image.shape)}")
        height, width = int(image.shape[1]), int(image.shape[2])
        size = preprocessed_size(height, width, self.short_side, self.max_side, self.stride)
        x = image.to(self.device, torch.float32).unsqueeze(0) / 255.0
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self._mean) / self._std)[0]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> the model's input normalisation on its device, at the
        size given: for callers that resize themselves (e.g. to a fixed square, as Leopart's
        evaluation does) instead of ``preprocess``'s aspect-keeping rule."""
        return (pixels.to(self.device, torch.float32) - self._mean) / self._std

    def forward(self, images: torch.Tensor) -> FeatureMap:
        if images.ndim != 4 or images.shape[-2] % self.stride or images.shape[-1] % self.stride:
            raise ValueError(
                f"{self.name}: input {tuple(images.shape)} must be (B, 3, H, W) with H and W "
                f"multiples of the stride {self.stride}; use preprocess()"
            )
        use_amp = self.amp and images.device.type == "cuda"
        tokens: dict[str, torch.Tensor] = {}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            if self.requested_tokens:
                features, tokens = self.extract_with_tokens(images, self.requested_tokens)
            else:
                features = self.extract(images)
        tokens = {name: tokens[name].float() for name in sorted(self.requested_tokens)}
        return FeatureMap(features.float(), self.stride, tokens)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, C, H / stride, W / stride)."""
        raise NotImplementedError

    def extract_with_tokens(
        self, images: torch.Tensor, names: frozenset[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``extract``'s features and the tokens ``names`` (a subset of ``provided_tokens``)
        from one forward; subclasses that provide tokens implement it."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Provenance: which extractor, which weights (sha256 of the checkpoint file)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "stride": self.stride,
        }


def build_feature_extractor(
    node, short_side: int = 480, max_side: int = 800, amp: bool = False
) -> FeatureExtractor:
    """Instantiate the extractor named by ``node.NAME`` (an extractor config node); ``amp``
    (PROPOSALS.AMP) enables bf16 autocast on CUDA for extractors that support it."""
    name = node.NAME
    if name not in FEATURE_EXTRACTOR_REGISTRY:
        known = sorted(k for k, _ in FEATURE_EXTRACTOR_REGISTRY)
        raise KeyError(f"extractor NAME = {name!r} is not registered; known: {known}")
    extractor_class = FEATURE_EXTRACTOR_REGISTRY.get(name)
    return extractor_class(node, short_side=short_side, max_side=max_side, amp=amp).eval()


def extract_features_and_tokens(
    extractor: FeatureExtractor, images: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Per image (C, h, w) features and the dict of the extractor's requested tokens (shapes of
    ``TOKEN_NAMES`` without the batch dimension; empty when none was requested). Images of
    equal preprocessed size share one forward pass."""
    inputs = [extractor.preprocess(image) for image in images]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape), []).append(index)
    features: list[torch.Tensor] = [torch.empty(0)] * len(images)
    tokens: list[dict[str, torch.Tensor]] = [{} for _ in images]
    for indices in groups.values():
        output = extractor(torch.stack([inputs[i] for i in indices]))
        for row, i in enumerate(indices):
            features[i] = output.features[row]
            tokens[i] = {name: value[row] for name, value in output.tokens.items()}
    return features, tokens


def extract_features(extractor: FeatureExtractor, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per image (C, h, w) features; images of equal preprocessed size share one forward pass."""
    return extract_features_and_tokens(extractor, images)[0]
