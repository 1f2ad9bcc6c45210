"""Dataset mapper for training on pseudo-masks (and for inference on plain images).

Differs from detectron2's ``DatasetMapper`` where pseudo-labels (data/pseudo_labels.py) need it:
masks arrive as RLE with a confidence score and a semantic embedding that must follow each mask
through filtering, augmentation and copy-paste; boxes are always recomputed from the final
masks; images go through the project's ``read_image`` so unusual files decode identically
everywhere and bad ones follow ``INPUT.BAD_IMAGE_POLICY``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances, polygons_to_bitmask

from uis_d2.config.loading import model_num_classes
from uis_d2.data.copy_paste import CopyPasteParams, copy_paste
from uis_d2.data.image_io import BAD_IMAGE_POLICIES, BadImageError, read_image
from uis_d2.data.pseudo_labels import EmbeddingLookup, annotation_score
from uis_d2.utils.masks import masks_to_boxes_xyxy, rle_to_mask

logger = logging.getLogger(__name__)


@dataclass
class PseudoInstances:
    """Per-image pseudo-labels as aligned numpy arrays (one row per instance)."""

    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64
    embeddings: np.ndarray | None  # (N, D) float32, or None when the labels carry none

    def select(self, keep: np.ndarray) -> PseudoInstances:
        return PseudoInstances(
            self.masks[keep],
            self.scores[keep],
            self.classes[keep],
            None if self.embeddings is None else self.embeddings[keep],
        )


def decode_annotations(
    annotations: Sequence[dict[str, Any]],
    height: int,
    width: int,
    *,
    min_score: float,
    min_area: int,
    class_agnostic: bool,
    file_name: str,
    embeddings: EmbeddingLookup | None = None,
) -> PseudoInstances:
    """Decode RLE / polygon pseudo-masks, dropping crowd regions, low scores and tiny masks;
    ``embeddings`` reads the kept masks' embeddings (from the file's store or inline); None
    reads none.

    A missing score counts as 1.0, so ground-truth jsons can be used as pseudo-labels.
    """
    masks, scores, classes, kept = [], [], [], []
    for index, annotation in enumerate(annotations):
        if annotation.get("iscrowd", 0):
            continue
        score = annotation_score(annotation)
        if score < min_score:
            continue
        mask = _decode_segmentation(annotation, height, width, f"{file_name}, annotation {index}")
        if mask.sum() < max(min_area, 1):
            continue
        masks.append(mask)
        scores.append(score)
        classes.append(0 if class_agnostic else int(annotation.get("category_id", 0)))
        kept.append(annotation)
    try:
        kept_embeddings = None if embeddings is None else embeddings.embeddings(kept)
    except ValueError as err:
        raise ValueError(f"{file_name}: {err}") from err
    return PseudoInstances(
        masks=np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
        scores=np.asarray(scores, dtype=np.float32),
        classes=np.asarray(classes, dtype=np.int64),
        embeddings=kept_embeddings,
    )


def _decode_segmentation(annotation: dict[str, Any], height: int, width: int, where: str):
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):
        mask = rle_to_mask(segmentation)
        if mask.shape != (height, width):
            raise ValueError(
                f"{where}: RLE size {list(mask.shape)} differs from the image size "
                f"{[height, width]}"
            )
        return mask
    if isinstance(segmentation, list) and segmentation:
        return polygons_to_bitmask(segmentation, height, width)
    raise ValueError(f"{where}: 'segmentation' must be an RLE dict or a list of polygons")


class PseudoMaskDatasetMapper:
    """Callable turning a detectron2 dataset dict into the model's input dict.

    Training output: ``image`` (uint8 C,H,W tensor in ``image_format``), ``instances`` with
    gt_masks (BitMasks), gt_boxes (from the masks), gt_classes, gt_scores and, when
    ``embedding_dim`` > 0 and the labels carry embeddings, gt_embeddings (N, D); plus
    ``height``/``width`` of the original image. What GeneralizedRCNN reads (image, gt_boxes,
    gt_classes, gt_masks) is in every output; its heads carry the other fields along unused.
    Returning None for an unreadable training image lets detectron2's ``MapDataset`` retry
    another index. Randomness is drawn from ``np.random``, which detectron2 seeds per worker,
    so the mapper holds no mutable state and works with any number of workers.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list[T.Augmentation | T.Transform],
        image_format: str,
        min_score: float = 0.0,
        min_area: int = 0,
        class_agnostic: bool = True,
        copy_paste_prob: float = 0.0,
        copy_paste_params: CopyPasteParams | None = None,
        copy_paste_sources: Sequence[dict[str, Any]] | None = None,
        bad_image_policy: str = "skip",
        embedding_dim: int = 0,
        skip_bad_at_inference: bool = False,
    ):
        """
        Args:
            copy_paste_sources: dataset dicts the pasted instances are drawn from (usually the
                training set itself); copy-paste is off when None or empty.
            skip_bad_at_inference: let the skip policy apply at inference too (labelling the
                training images for self-training); evaluation keeps it off.
            embedding_dim: width of the model's embedding head; 0 (none) = embeddings are
                neither read nor emitted (INPUT.PSEUDO_MASKS.EMBEDDINGS False gives 0).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT = {image_format!r}: the mapper reads RGB or BGR only")
        if bad_image_policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"INPUT.BAD_IMAGE_POLICY = {bad_image_policy!r}: use skip or fail")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.min_score = min_score
        self.min_area = min_area
        self.class_agnostic = class_agnostic
        self.copy_paste_prob = copy_paste_prob if copy_paste_sources else 0.0
        self.copy_paste_params = copy_paste_params or CopyPasteParams()
        self.copy_paste_sources = copy_paste_sources
        self.bad_image_policy = bad_image_policy
        self.embedding_dim = embedding_dim
        self.skip_bad_images = bad_image_policy == "skip" and (is_train or skip_bad_at_inference)
        mode = "training" if is_train else "inference"
        logger.info(
            f"[PseudoMaskDatasetMapper] {mode}: augmentations {augmentations}, "
            f"copy-paste probability {self.copy_paste_prob}"
        )

    @classmethod
    def from_config(
        cls,
        cfg,
        is_train: bool = True,
        copy_paste_sources: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        augmentations = detection_utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        cp = cfg.INPUT.COPY_PASTE
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "min_score": cfg.INPUT.PSEUDO_MASKS.MIN_SCORE,
            "min_area": cfg.INPUT.PSEUDO_MASKS.MIN_AREA,
            "class_agnostic": model_num_classes(cfg) == 1,
            "copy_paste_prob": cp.PROB if (cp.ENABLED and is_train) else 0.0,
            "copy_paste_params": CopyPasteParams(
                max_instances=cp.MAX_INSTANCES,
                scale_range=tuple(cp.SCALE_RANGE),
                max_shift=cp.MAX_SHIFT,
                occlusion_thresh=cp.OCCLUSION_THRESH,
                min_area=max(cfg.INPUT.PSEUDO_MASKS.MIN_AREA, 1),
            ),
            "copy_paste_sources": copy_paste_sources,
            "bad_image_policy": cfg.INPUT.BAD_IMAGE_POLICY,
            "embedding_dim": (
                cfg.MODEL.SOLOV2.EMBED_DIM if cfg.INPUT.PSEUDO_MASKS.EMBEDDINGS else 0
            ),
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = read_image(file_name, self.image_format)
        except BadImageError as err:
            # Outside training a skip needs a loader that keeps the None (engine/unreadable.py).
            if not self.skip_bad_images:
                raise
            logger.warning(f"Skipping unreadable image (INPUT.BAD_IMAGE_POLICY): {err}")
            return None
        detection_utils.check_image_size(dataset_dict, image)

        annotations = dataset_dict.pop("annotations", None)
        original_shape = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        if self.is_train and annotations is not None:
            instances = self._load_instances(dataset_dict, annotations, *original_shape)
            instances.masks = _transform_masks(instances.masks, transforms, image.shape[:2])
            instances = instances.select(instances.masks.any(axis=(1, 2)))
            rng = np.random.default_rng(np.random.randint(2**31))
            if self.copy_paste_prob > 0 and rng.random() < self.copy_paste_prob:
                image, instances = self._copy_paste(image, instances, rng)
            dataset_dict["instances"] = _to_instances(
                instances, image.shape[:2], self.embedding_dim
            )
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return dataset_dict

    def _load_instances(
        self,
        record: dict[str, Any],
        annotations: Sequence[dict[str, Any]],
        height: int,
        width: int,
    ) -> PseudoInstances:
        """The pseudo-masks of a dataset record; embeddings (when the model has an embedding
        head) come from the record's file's store (``embedding_store``), of which only this
        image's rows are read, or inline."""
        store = record.get("embedding_store")
        return decode_annotations(
            annotations,
            height,
            width,
            min_score=self.min_score,
            min_area=self.min_area,
            class_agnostic=self.class_agnostic,
            file_name=record["file_name"],
            embeddings=EmbeddingLookup(store) if self.embedding_dim > 0 else None,
        )

    def _copy_paste(
        self, image: np.ndarray, instances: PseudoInstances, rng: np.random.Generator
    ) -> tuple[np.ndarray, PseudoInstances]:
        """Paste instances of a random training image; unchanged when the source is unusable."""
        source_dict = self.copy_paste_sources[int(rng.integers(len(self.copy_paste_sources)))]
        source_file = source_dict["file_name"]
        try:
            source_image = read_image(source_file, self.image_format)
        except BadImageError as err:
            logger.warning(f"Copy-paste source skipped: {err}")
            return image, instances
        source = self._load_instances(
            source_dict, source_dict.get("annotations", []), *source_image.shape[:2]
        )
        if (source.embeddings is None) != (instances.embeddings is None) or (
            source.embeddings is not None
            and source.embeddings.shape[1] != instances.embeddings.shape[1]
        ):
            # Mixed embedding layouts cannot be stacked into one gt_embeddings tensor.
            return image, instances
        result = copy_paste(
            image, instances.masks, source_image, source.masks, self.copy_paste_params, rng
        )
        pasted = PseudoInstances(
            masks=result.masks,
            scores=result.gather(instances.scores, source.scores),
            classes=result.gather(instances.classes, source.classes),
            embeddings=(
                None
                if source.embeddings is None
                else result.gather(instances.embeddings, source.embeddings)
            ),
        )
        return result.image, pasted


def _transform_masks(
    masks: np.ndarray, transforms: T.TransformList, image_shape: tuple[int, int]
) -> np.ndarray:
    """Apply the image's geometric transforms to each mask (nearest-neighbour)."""
    if masks.shape[0] == 0:
        return np.zeros((0, *image_shape), dtype=bool)
    return np.stack([transforms.apply_segmentation(m.astype(np.uint8)) for m in masks]).astype(bool)


def _to_instances(
    instances: PseudoInstances, image_shape: tuple[int, int], embedding_dim: int
) -> Instances:
    """detectron2 ``Instances`` with boxes recomputed from the final masks."""
    masks = torch.from_numpy(np.ascontiguousarray(instances.masks))
    result = Instances(image_shape)
    result.gt_masks = BitMasks(masks)
    result.gt_boxes = Boxes(masks_to_boxes_xyxy(masks))
    result.gt_classes = torch.from_numpy(instances.classes)
    result.gt_scores = torch.from_numpy(instances.scores)
    if instances.embeddings is not None:
        result.gt_embeddings = torch.from_numpy(instances.embeddings)
    elif len(result) == 0 and embedding_dim > 0:
        result.gt_embeddings = torch.zeros((0, embedding_dim))
    return result
