"""Foreground from a folder of saliency maps computed elsewhere (``ExternalMaps``).

COMUS (Zadaianchuk et al. 2023, section 3.1) takes its foreground from an unsupervised saliency
network (BASNet trained on DeepUSPS pseudo-labels), whose weights and training data we do not
ship; any such network's output can be used by writing one grey PNG per image into a folder.

Lookup: the image's file name as the proposals record it (relative to the dataset's image root,
e.g. ``train2017/000000000009.jpg`` or ``a/b/c.jpg``) keeps its folders, and its extension is
replaced by ``SUFFIX``: ``<DIR>/a/b/c<SUFFIX>``, so nested datasets and images of equal base
names in different folders cannot collide. An absolute file name (an image outside the image
root) uses its base name only. A colour map is read as the mean of its channels.

Per map (COMUS's rules): foreground = value / 255 >= ``THRESH``; a map of another size than the
image is resized to it (nearest, after thresholding, as COMUS resizes its 256 x 256 masks); a
map with at most ``MIN_PIXELS`` foreground pixels, counted at the image's size, is empty (COMUS
drops such images: 400 px, 20 x 20). A missing or unreadable map follows
``INPUT.BAD_IMAGE_POLICY``: "skip" logs a warning naming the map and the image and gives the
image an empty foreground (no proposal passes a saliency filter on it; the proposal run's
summary counts the warnings), "fail" raises ``BadImageError`` naming the map.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uis_d2.data.image_io import BadImageError, read_image
from uis_d2.foreground.base import FOREGROUND_REGISTRY, ForegroundProvider

logger = logging.getLogger(__name__)


@FOREGROUND_REGISTRY.register()
class ExternalMaps(ForegroundProvider):
    """One thresholded saliency PNG per image, at the image's pixel resolution (see the module
    docstring). Reads no features."""

    needs_extractor = False

    @configurable
    def __init__(
        self, *, directory: str, suffix: str, thresh: float, min_pixels: int, policy: str
    ) -> None:
        if not Path(directory).is_dir():
            raise FileNotFoundError(
                f"PROPOSALS.FOREGROUND.EXTERNAL.DIR = {directory!r}: not a folder"
            )
        self.directory = Path(directory)
        self.suffix = suffix
        self.thresh = thresh
        self.min_pixels = min_pixels
        self.policy = policy

    @classmethod
    def from_config(cls, cfg, extractor=None) -> dict[str, Any]:
        e = cfg.PROPOSALS.FOREGROUND.EXTERNAL
        return {
            "directory": e.DIR,
            "suffix": e.SUFFIX,
            "thresh": e.THRESH,
            "min_pixels": e.MIN_PIXELS,
            "policy": cfg.INPUT.BAD_IMAGE_POLICY,
        }

    def map_path(self, name: str) -> Path:
        """Where the map of the image recorded as ``name`` lives."""
        relative = Path(name)
        if relative.is_absolute():
            relative = Path(relative.name)
        return self.directory / relative.parent / (relative.stem + self.suffix)

    @torch.no_grad()
    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        if names is None or len(names) != len(images):
            raise ValueError(
                "ExternalMaps needs the file name of every image (names=...), to find its map"
            )
        return [self._foreground(image, name) for image, name in zip(images, names)]

    def _foreground(self, image: torch.Tensor, name: str) -> torch.Tensor:
        size = tuple(image.shape[1:])
        path = self.map_path(name)
        try:
            grey = read_image(path).mean(axis=2, dtype=np.float32)
        except BadImageError as err:
            if self.policy == "fail":
                raise BadImageError(
                    path,
                    f"{err.reason} (saliency map of image {name}; "
                    "INPUT.BAD_IMAGE_POLICY is 'fail')",
                ) from err
            logger.warning(
                "saliency map %s of image %s: %s; the image gets an empty foreground",
                path,
                name,
                err.reason,
            )
            return torch.zeros(size, dtype=torch.bool, device=image.device)
        foreground = torch.from_numpy(grey / 255.0 >= self.thresh).to(image.device)
        if tuple(foreground.shape) != size:
            foreground = F.interpolate(foreground[None, None].float(), size=size, mode="nearest")
            foreground = foreground[0, 0] > 0.5
        if int(foreground.sum()) <= self.min_pixels:
            return torch.zeros_like(foreground)
        return foreground

    def describe(self) -> dict[str, Any]:
        return {
            "provider": "ExternalMaps",
            "dir": str(self.directory),
            "suffix": self.suffix,
            "thresh": self.thresh,
            "min_pixels": self.min_pixels,
        }
