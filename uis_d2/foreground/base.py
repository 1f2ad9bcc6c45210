"""The contract of every foreground (saliency) provider, and their combinations.

A provider turns a batch of images into one binary foreground map per image, at its own
resolution: a patch grid or pixels. The spectral generator's saliency filter names one in
``PROPOSALS.SALIENCY.PROVIDERS`` (one name, or several combined by ``SALIENCY.COMBINE``) and
resizes each map to its instance grid; tools (foreground evaluation, MaskDistill's miner as a
generator) use them directly. Providers are plug-ins built the detectron2 way:
``@FOREGROUND_REGISTRY.register()`` on a class whose ``@configurable`` constructor takes plain
arguments and whose ``from_config(cls, cfg)`` reads ``cfg.PROPOSALS`` (the only place that does).

Providers that read features use ``PROPOSALS.SALIENCY.EXTRACTOR``; their ``from_config(cfg,
extractor=None)`` takes an already built extractor for it (``build_saliency_extractor``), so a
generator whose instance features come from the same config shares the module, and may then
hand the provider that extractor's output for the batch (``features``, and ``tokens`` when the
extractor was asked for them) instead of a second forward. A combination builds one saliency
extractor for all its providers that read features and runs it once per batch for them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from fvcore.common.registry import Registry

from uis_d2.features.base import (
    FeatureExtractor,
    build_feature_extractor,
    extract_features_and_tokens,
)

FOREGROUND_REGISTRY = Registry("FOREGROUND")
FOREGROUND_REGISTRY.__doc__ = "Per-image binary foreground maps, built from cfg.PROPOSALS."

COMBINE_MODES = ("intersection", "union")


class ForegroundProvider:
    """Base class. ``extractor``: the feature extractor whose output ``__call__`` may be handed
    (None for providers that read none, e.g. external maps)."""

    extractor: FeatureExtractor | None = None
    # Whether from_config builds a PROPOSALS.SALIENCY.EXTRACTOR module (unless handed one).
    needs_extractor: ClassVar[bool] = True

    def reads_extractor_output(self) -> bool:
        """Whether ``__call__`` uses the ``features``/``tokens`` it is handed; a combination
        runs the shared extractor for its providers only when one of them does."""
        return self.extractor is not None

    @torch.no_grad()
    def __call__(
        self,
        images: list[torch.Tensor],
        features: list[torch.Tensor] | None = None,
        tokens: list[dict[str, torch.Tensor]] | None = None,
        names: list[str] | None = None,
        clusters: list[dict[int, torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """``images``: RGB uint8 (3, H, W) of any sizes; ``features``/``tokens``: the output of
        ``self.extractor`` on them, when already computed; ``names``: the images' file names
        (providers that read per-image files need them); ``clusters``: per image the spectral
        label maps {k: (h, w)} of ``features``, when the caller already clustered them (the
        spectral generator), for providers that would cluster the same features again. Returns
        per image a bool map (h, w) on the images' device, at the provider's resolution."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Provenance recorded in the proposals' ``info``."""
        raise NotImplementedError

    def to(self, device: torch.device) -> ForegroundProvider:
        if self.extractor is not None:
            self.extractor.to(device)
        return self


def build_saliency_extractor(cfg, extractor: FeatureExtractor | None = None) -> FeatureExtractor:
    """``extractor`` when given (a module built from the same config), else a new one from
    ``PROPOSALS.SALIENCY.EXTRACTOR``."""
    if extractor is not None:
        return extractor
    p = cfg.PROPOSALS
    return build_feature_extractor(p.SALIENCY.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP)


def resize_map(foreground: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A bool map at another resolution: area-weighted share >= 0.5 when shrinking, bilinear
    >= 0.5 when growing (the rule of proposals.postprocess.upsample_masks, so a provider's grid
    map reaches the instance grid exactly as the built-in saliency map does)."""
    if tuple(foreground.shape) == tuple(size):
        return foreground
    x = foreground[None, None].float()
    if size[0] <= foreground.shape[0] and size[1] <= foreground.shape[1]:
        return F.adaptive_avg_pool2d(x, size)[0, 0] >= 0.5
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0] >= 0.5


def reads_output_of(
    providers: list[ForegroundProvider], extractor: FeatureExtractor | None
) -> bool:
    """Whether any of ``providers`` sharing ``extractor`` reads its output."""
    return any(p.extractor is extractor and p.reads_extractor_output() for p in providers)


def run_providers(
    providers: list[ForegroundProvider],
    extractor: FeatureExtractor | None,
    images: list[torch.Tensor],
    features: list[torch.Tensor] | None = None,
    tokens: list[dict[str, torch.Tensor]] | None = None,
    names: list[str] | None = None,
    clusters: list[dict[int, torch.Tensor]] | None = None,
) -> list[list[torch.Tensor]]:
    """Each provider's maps of a batch. The providers sharing ``extractor`` get its output (and
    ``clusters``): as handed, else computed here once for all of them when one reads it."""
    if features is None and reads_output_of(providers, extractor):
        features, tokens = extract_features_and_tokens(extractor, images)
    out = []
    for provider in providers:
        shared = provider.extractor is extractor
        out.append(
            provider(
                images,
                features if shared else None,
                tokens if shared else None,
                names,
                clusters=clusters if shared else None,
            )
        )
    return out


class CombinedForeground(ForegroundProvider):
    """The intersection or union of several providers' maps, at the first one's resolution.
    ``extractor``: the first provider's extractor that any has; providers sharing it get its
    output, computed once per batch when the caller hands none."""

    def __init__(self, providers: list[ForegroundProvider], mode: str) -> None:
        if mode not in COMBINE_MODES:
            raise ValueError(
                f"PROPOSALS.SALIENCY.COMBINE = {mode!r}: must be one of {COMBINE_MODES}"
            )
        self.providers = providers
        self.mode = mode
        self.extractor = next((p.extractor for p in providers if p.extractor is not None), None)

    def reads_extractor_output(self) -> bool:
        return reads_output_of(self.providers, self.extractor)

    @torch.no_grad()
    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        per_provider = run_providers(
            self.providers, self.extractor, images, features, tokens, names, clusters
        )
        combined = []
        for maps in zip(*per_provider, strict=True):
            out = maps[0]
            for other in maps[1:]:
                other = resize_map(other, tuple(out.shape))
                out = out & other if self.mode == "intersection" else out | other
            combined.append(out)
        return combined

    def describe(self) -> dict[str, Any]:
        return {"combine": self.mode, "providers": [p.describe() for p in self.providers]}

    def to(self, device: torch.device) -> CombinedForeground:
        for provider in self.providers:
            provider.to(device)
        return self


def build_foreground_provider(
    cfg, name: str | None = None, extractor: FeatureExtractor | None = None
) -> ForegroundProvider:
    """The provider of ``PROPOSALS.SALIENCY.PROVIDERS`` (combined by ``SALIENCY.COMBINE`` when
    several are named), or the one registered as ``name``; ``extractor``: a built module for
    ``PROPOSALS.SALIENCY.EXTRACTOR`` that providers reading features share (when not given, a
    combination builds one for all of them)."""
    names = [name] if name is not None else list(cfg.PROPOSALS.SALIENCY.PROVIDERS)
    if not names:
        raise ValueError("PROPOSALS.SALIENCY.PROVIDERS is empty: name at least one provider")
    for provider_name in names:
        if provider_name not in FOREGROUND_REGISTRY:
            known = sorted(k for k, _ in FOREGROUND_REGISTRY)
            raise KeyError(
                f"PROPOSALS.SALIENCY.PROVIDERS: {provider_name!r} is not registered; known: {known}"
            )
    classes = [FOREGROUND_REGISTRY.get(provider_name) for provider_name in names]
    if extractor is None and sum(c.needs_extractor for c in classes) > 1:
        extractor = build_saliency_extractor(cfg)
    providers = [provider_class(cfg, extractor=extractor) for provider_class in classes]
    if len(providers) == 1:
        return providers[0]
    return CombinedForeground(providers, cfg.PROPOSALS.SALIENCY.COMBINE)


__all__ = [
    "COMBINE_MODES",
    "FOREGROUND_REGISTRY",
    "CombinedForeground",
    "ForegroundProvider",
    "build_foreground_provider",
    "resize_map",
    "build_saliency_extractor",
    "run_providers",
]
