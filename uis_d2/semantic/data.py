"""Inputs of the semantic stage: the references' augmentations as detectron2 transforms, and the
loaders the Trainer uses for a ``SemanticSegmentor`` config.

Training maps image + ``sem_seg_file_name`` as detectron2's ``DatasetMapper`` does (both
augmented by the same transforms, labels nearest-neighbour), reading the image with the
project's ``read_image`` so that an unreadable training image follows INPUT.BAD_IMAGE_POLICY
("skip": detectron2's loader draws another image, a warning names the file; "fail": the error
names it), as for the instance models. ``SEMANTIC.AUGMENTATION``:

- "resized_crop" (COMUS, torchvision's RandomResizedCrop): a crop whose sides are shares of the
  image's drawn from [sqrt(MIN_CROP_AREA), 1] (``T.RandomCrop("relative_range")``), resized to
  the square input, aspect not kept; then the flip. torchvision draws the crop's area and aspect
  instead (ratio 3/4-4/3, whole image after 10 misses). A crop never pads, so no label needs a
  padding value (detectron2 v0.6 pads segmentations with 0, i.e. background).
- "scale_rotate" (MaskDistill, ref ``ScaleNRotate`` + ``FixedResize``): flip, then one affine
  warp about the image centre by a scale in SCALE_RANGE and an angle in +-ROTATION degrees at
  the image's size (cubic for the image, nearest for the labels; what leaves the image is cut,
  what enters is 0 in the image and background in the labels, as the ref's
  ``cv2.warpAffine``), then the resize to the square input.

Prediction resizes to the square input only, as both references do. The references then take
the argmax at that size and resize it back nearest, which the relabelling of COMUS's rounds
does (rounds.py); evaluation keeps detectron2's contract instead: ``SemanticSegmentor``
returns the logits upsampled bilinearly to the image's size, and the evaluator takes their
argmax. Inputs must be multiples of 8 on each side: the output stride of the dilated ResNet.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T

from uis_d2.data.image_io import BadImageError, read_image
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.data.semantic import read_label_png
from uis_d2.engine.unreadable import MapKeepingUnreadable

logger = logging.getLogger(__name__)

SEMANTIC_META_ARCHITECTURE = "SemanticSegmentor"
AUGMENTATIONS = ("resized_crop", "scale_rotate")


def is_semantic(cfg: CfgNode) -> bool:
    """Whether ``cfg`` trains a semantic model (detectron2's ``SemanticSegmentor``)."""
    return cfg.MODEL.META_ARCHITECTURE == SEMANTIC_META_ARCHITECTURE


class ScaleRotateTransform(T.Transform):
    """Scale by ``scale`` and rotate by ``angle`` degrees (counter-clockwise) about the image
    centre, keeping the image's size; borders filled with 0."""

    def __init__(self, height: int, width: int, angle: float, scale: float):
        super().__init__()
        self.height, self.width = height, width
        self.matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)

    def _warp(self, array: np.ndarray, interp: int) -> np.ndarray:
        return cv2.warpAffine(array, self.matrix, (self.width, self.height), flags=interp)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._warp(img, cv2.INTER_CUBIC)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._warp(segmentation, cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]


class RandomScaleRotate(T.Augmentation):
    """``ScaleRotateTransform`` with a uniform scale in ``scale_range`` and a uniform angle in
    [-max_angle, max_angle]."""

    def __init__(self, scale_range: Sequence[float], max_angle: float):
        super().__init__()
        self.scale_range = tuple(scale_range)
        self.max_angle = max_angle

    def get_transform(self, image: np.ndarray) -> T.Transform:
        scale = np.random.uniform(*self.scale_range)
        angle = np.random.uniform(-self.max_angle, self.max_angle)
        return ScaleRotateTransform(image.shape[0], image.shape[1], angle, scale)


def semantic_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """SEMANTIC.AUGMENTATION's transforms for training, the square resize for prediction."""
    s = cfg.SEMANTIC
    resize = T.Resize((s.INPUT_SIZE, s.INPUT_SIZE))
    if not is_train:
        return [resize]
    flip = cfg.INPUT.RANDOM_FLIP
    flips = (
        []
        if flip == "none"
        else [T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical")]
    )
    if s.AUGMENTATION == "resized_crop":
        side = math.sqrt(s.MIN_CROP_AREA)
        return [T.RandomCrop("relative_range", (side, side)), resize, *flips]
    if s.AUGMENTATION == "scale_rotate":
        return [*flips, RandomScaleRotate(s.SCALE_RANGE, s.ROTATION), resize]
    raise ValueError(f"SEMANTIC.AUGMENTATION = {s.AUGMENTATION!r}: one of {list(AUGMENTATIONS)}")


class SemanticTrainMapper(DatasetMapper):
    """Image and label map through the same augmentations (see the module docstring); None for
    an unreadable image under the skip policy."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(
            True, augmentations=semantic_augmentations(cfg, True), image_format=cfg.INPUT.FORMAT
        )
        self.skip_bad_images = cfg.INPUT.BAD_IMAGE_POLICY == "skip"

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = read_image(dataset_dict["file_name"], self.image_format)
        except BadImageError as err:
            if not self.skip_bad_images:
                raise
            logger.warning(f"Skipping unreadable training image (INPUT.BAD_IMAGE_POLICY): {err}")
            return None
        labels = read_label_png(dataset_dict.pop("sem_seg_file_name")).astype(np.uint8)
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"{dataset_dict['file_name']}: label map {labels.shape} and image "
                f"{image.shape[:2]} differ in size"
            )
        aug_input = T.AugInput(image, sem_seg=labels)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(aug_input.image.transpose(2, 0, 1).copy())
        dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        return dataset_dict


def build_semantic_train_loader(cfg: CfgNode):
    """detectron2's train loader over DATASETS.TRAIN's map records (``SemanticTrainMapper``)."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    return build_detection_train_loader(cfg, mapper=SemanticTrainMapper(cfg), dataset=dicts)


def build_semantic_inference_loader(cfg: CfgNode, dicts: Sequence[dict[str, Any]]):
    """Test loader at the square input; an unreadable image comes through as None under the
    skip policy and gets no prediction (engine/unreadable.py)."""
    mapper = PseudoMaskDatasetMapper(
        False,
        augmentations=semantic_augmentations(cfg, False),
        image_format=cfg.INPUT.FORMAT,
        bad_image_policy=cfg.INPUT.BAD_IMAGE_POLICY,
        skip_bad_at_inference=True,
    )
    return build_detection_test_loader(
        MapKeepingUnreadable(dicts, mapper), mapper=None, num_workers=cfg.DATALOADER.NUM_WORKERS
    )
