"""Foreground (saliency) providers behind one registry (registration by import)."""

from uis_d2.foreground import attention, external, miner  # noqa: F401  (registration)
from uis_d2.foreground.base import (
    FOREGROUND_REGISTRY,
    CombinedForeground,
    ForegroundProvider,
    build_foreground_provider,
    resize_map,
)

__all__ = [
    "FOREGROUND_REGISTRY",
    "CombinedForeground",
    "ForegroundProvider",
    "build_foreground_provider",
    "resize_map",
]
