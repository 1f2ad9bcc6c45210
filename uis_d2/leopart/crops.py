"""Leopart's multi-crop with geometry (SEED_SYSTEMS.md 3.2): crops that remember where they are.

Every crop is a RandomResizedCrop of the original image, kept as its box ``(x0, y0, x1, y1)``
in the image's pixels. The loss compares two crops only on their intersection, so for each pair
it needs that intersection in each crop's own pixel frame (``pair_boxes``). Crops are drawn
again until they overlap the global crops enough (``CropParams.min_overlap``); flips are never
applied, as they would break the alignment. Photometric augmentation changes colours only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import configurable
from torchvision.transforms import v2

from uis_d2.data.image_io import BadImageError, read_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropParams:
    """``LEOPART.CROPS``, one field per key (see the config's comments)."""

    num_global: int
    global_size: int
    global_scale: tuple[float, float]
    num_local: int
    local_size: int
    local_scale: tuple[float, float]
    ratio: tuple[float, float]
    min_overlap: float
    global_min_overlap: float
    max_tries: int

    @property
    def sizes(self) -> list[int]:
        """Side of every crop, global crops first."""
        return [self.global_size] * self.num_global + [self.local_size] * self.num_local


def box_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection area of xyxy boxes ``a`` and ``b`` (broadcast over leading dimensions)."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(
        min=0
    )
    return width * height


def _random_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    top, left, h, w = v2.RandomResizedCrop.get_params(
        torch.empty(1, height, width), list(scale), list(ratio)
    )
    return torch.tensor([left, top, left + w, top + h], dtype=torch.float64)


def sample_crop_boxes(height: int, width: int, params: CropParams) -> torch.Tensor:
    """(V, 4) xyxy boxes in the image's pixels, global crops first (torch's global RNG).

    The second global crop is drawn until it overlaps the first by more than
    ``global_min_overlap`` of the image area, every local crop until it overlaps each global
    one by more than ``min_overlap``; after ``max_tries`` draws the last is kept.
    """
    area = float(height * width)
    boxes: list[torch.Tensor] = []
    for index in range(params.num_global + params.num_local):
        is_global = index < params.num_global
        scale = params.global_scale if is_global else params.local_scale
        needed = params.global_min_overlap if is_global else params.min_overlap
        others = boxes[: params.num_global]
        for _ in range(params.max_tries):
            box = _random_box(height, width, scale, params.ratio)
            if all(box_overlap(box, other) / area > needed for other in others):
                break
        boxes.append(box)
    return torch.stack(boxes)


def box_in_frame(box: torch.Tensor, crop: torch.Tensor, size: int) -> torch.Tensor:
    """``box`` (..., 4) in image pixels, expressed in the pixel frame of ``crop`` (..., 4) after
    it was resized to ``size`` x ``size``."""
    origin = crop[..., [0, 1, 0, 1]]
    extent = (crop[..., [2, 3, 2, 3]] - crop[..., [0, 1, 0, 1]]).clamp(min=1e-9)
    scale = torch.stack([size / extent[..., 0], size / extent[..., 1]] * 2, dim=-1)
    return (box - origin) * scale


def pair_boxes(
    boxes: torch.Tensor, first: int, second: int, sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For crops ``first`` (j) and ``second`` (v) of every image, ``boxes`` (B, V, 4): their
    intersection in j's frame (B_{j,v}), in v's frame (B_{v,j}), and whether it is non-empty."""
    a, b = boxes[:, first], boxes[:, second]
    inter = torch.cat([torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])], dim=1)
    valid = box_overlap(a, b) > 0
    inter = torch.where(valid[:, None], inter, a)  # any finite box; the pair adds no loss
    return (
        box_in_frame(inter, a, sizes[first]),
        box_in_frame(inter, b, sizes[second]),
        valid,
    )


@dataclass(frozen=True)
class PhotometricParams:
    """``LEOPART.PHOTOMETRIC``, one field per key."""

    jitter: tuple[float, float, float, float]
    jitter_prob: float
    grayscale_prob: float
    blur_prob: float
    blur_sigma: tuple[float, float]
    blur_kernel_share: float


def photometric_transform(params: PhotometricParams, size: int) -> v2.Transform:
    """Colour jitter, grayscale and blur for crops of side ``size`` (no geometry)."""
    kernel = max(3, math.ceil(params.blur_kernel_share * size) // 2 * 2 + 1)
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(*params.jitter)], p=params.jitter_prob),
            v2.RandomGrayscale(p=params.grayscale_prob),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=params.blur_sigma)], p=params.blur_prob),
        ]
    )


class MultiCropMapper:
    """Dataset dict -> ``{"file_name", "crops": [uint8 (3, S, S)] * V, "boxes": (V, 4)}``.

    Unreadable images follow INPUT.BAD_IMAGE_POLICY: "skip" returns None, which detectron2's
    training loader answers by drawing another image (a warning names the file); "error"
    raises naming it.
    """

    @configurable
    def __init__(
        self, *, crops: CropParams, photometric: PhotometricParams, bad_image_policy: str
    ) -> None:
        self.crops = crops
        self.bad_image_policy = bad_image_policy
        self.transforms = {
            size: photometric_transform(photometric, size) for size in set(crops.sizes)
        }

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        c, p = cfg.LEOPART.CROPS, cfg.LEOPART.PHOTOMETRIC
        crops = CropParams(
            num_global=int(c.NUM_GLOBAL),
            global_size=int(c.GLOBAL_SIZE),
            global_scale=tuple(float(x) for x in c.GLOBAL_SCALE),
            num_local=int(c.NUM_LOCAL),
            local_size=int(c.LOCAL_SIZE),
            local_scale=tuple(float(x) for x in c.LOCAL_SCALE),
            ratio=tuple(float(x) for x in c.RATIO),
            min_overlap=float(c.MIN_OVERLAP),
            global_min_overlap=float(c.GLOBAL_MIN_OVERLAP),
            max_tries=int(c.MAX_TRIES),
        )
        photometric = PhotometricParams(
            jitter=tuple(float(x) for x in p.JITTER),
            jitter_prob=float(p.JITTER_PROB),
            grayscale_prob=float(p.GRAYSCALE_PROB),
            blur_prob=float(p.BLUR_PROB),
            blur_sigma=tuple(float(x) for x in p.BLUR_SIGMA),
            blur_kernel_share=float(p.BLUR_KERNEL_SHARE),
        )
        return {
            "crops": crops,
            "photometric": photometric,
            "bad_image_policy": cfg.INPUT.BAD_IMAGE_POLICY,
        }

    def __call__(self, record: dict[str, Any]) -> dict[str, Any] | None:
        try:
            image = torch.tensor(read_image(record["file_name"])).permute(2, 0, 1)
        except BadImageError as err:
            if self.bad_image_policy != "skip":
                raise
            logger.warning("skipping an unreadable training image: %s", err)
            return None
        height, width = int(image.shape[1]), int(image.shape[2])
        boxes = sample_crop_boxes(height, width, self.crops)
        crops = []
        for box, size in zip(boxes.tolist(), self.crops.sizes, strict=True):
            left, top, right, bottom = (int(round(v)) for v in box)
            crop = v2.functional.resized_crop(
                image, top, left, bottom - top, right - left, [size, size], antialias=True
            )
            crops.append(self.transforms[size](crop))
        return {"file_name": record["file_name"], "crops": crops, "boxes": boxes.float()}
