"""detectron2 DatasetEvaluator for the class-agnostic protocol.

detectron2's COCOEvaluator has no class-agnostic switch and returns no AR, both of which the
papers report; this evaluator collects COCO results and hands them to ``evaluate_agnostic``.
(detectron2 imports are safe here: importing this module runs uis_d2/__init__, the compat fixes.)
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Instances
from detectron2.utils import comm

from uis_d2.data.pseudo_labels import OBJECT_CATEGORY_ID
from uis_d2.evaluation.coco_agnostic import IOU_TYPES, evaluate_agnostic, format_metrics_table
from uis_d2.utils.files import atomic_write_json
from uis_d2.utils.masks import masks_to_rles, rle_boxes_xywh

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "class_agnostic_predictions.json"
METRICS_FILE = "class_agnostic_metrics.json"


def instances_to_coco_results(
    instances: Instances, image_id: int, class_aware: bool = False
) -> list[dict[str, Any]]:
    """One COCO result per predicted instance; the box comes from the mask if there is none.
    ``category_id`` is the class-agnostic object id, or with ``class_aware`` the predicted class
    0..K-1 (a pseudo-class: tools/evaluate_semantic.py and the semantic painting read it)."""
    if not instances.has("pred_masks"):
        raise ValueError("ClassAgnosticEvaluator needs 'pred_masks' in the model's Instances")
    masks = instances.pred_masks
    if masks.dtype != torch.bool:
        masks = masks >= 0.5  # soft masks: the usual 0.5 binarisation
    # Encoded where the model left them: only run starts, not whole masks, reach the host.
    rles = masks_to_rles(masks)
    scores = instances.scores.tolist() if instances.has("scores") else [1.0] * len(instances)
    if instances.has("pred_boxes"):
        xyxy = instances.pred_boxes.tensor.cpu().numpy().astype(np.float64)
        boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).tolist()
    else:
        boxes = rle_boxes_xywh(rles)
    if class_aware and instances.has("pred_classes"):
        categories = [int(c) for c in instances.pred_classes.tolist()]
    else:
        categories = [OBJECT_CATEGORY_ID] * len(rles)
    return [
        {
            "image_id": image_id,
            "category_id": category,
            "segmentation": rle,
            "bbox": box,
            "score": float(score),
        }
        for rle, box, score, category in zip(rles, boxes, scores, categories)
    ]


class ClassAgnosticEvaluator(DatasetEvaluator):
    """Class-agnostic mask and box AP/AR on a registered dataset, percentages.

    Ground truth: the dataset's ``json_file`` metadata when present, else its dataset dicts
    converted to COCO (needs ``thing_classes``, like detectron2's own conversion).
    ``class_aware`` (a model of K pseudo-classes) writes each prediction's class as its
    ``category_id`` in the predictions file; the metrics ignore categories either way.
    ``with_metrics=False`` writes the predictions file only: for images whose ground truth, if
    any, is not instances (a semantic split the MaskDistill pipeline paints predictions of).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | Path | None = None,
        distributed: bool = True,
        backend: str = "pycocotools",
        class_aware: bool = False,
        with_metrics: bool = True,
    ) -> None:
        self._dataset_name = dataset_name
        self._class_aware = class_aware
        self._with_metrics = with_metrics
        self._output_dir = Path(output_dir) if output_dir is not None else None
        self._distributed = distributed
        self._backend = backend
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for item, output in zip(inputs, outputs):
            if item is None:  # unreadable image skipped by policy: no predictions, GT still counts
                continue
            self._predictions.extend(
                instances_to_coco_results(output["instances"], item["image_id"], self._class_aware)
            )

    def evaluate(self) -> OrderedDict[str, dict[str, float]]:
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return OrderedDict()
        if not predictions:
            logger.warning(f"{self._dataset_name}: no predictions at all; every metric is 0")
        if not self._with_metrics:
            logger.info(f"{self._dataset_name}: {len(predictions)} predictions, no metrics")
            if self._output_dir is not None:
                atomic_write_json(self._output_dir / PREDICTIONS_FILE, predictions)
            return OrderedDict()
        metrics = evaluate_agnostic(self._ground_truth(), predictions, IOU_TYPES, self._backend)
        logger.info(
            f"Class-agnostic results on {self._dataset_name}:\n" + format_metrics_table(metrics)
        )
        if self._output_dir is not None:
            atomic_write_json(self._output_dir / PREDICTIONS_FILE, predictions)
            atomic_write_json(self._output_dir / METRICS_FILE, metrics, indent=2)
        return OrderedDict(metrics)

    def _ground_truth(self) -> str | dict[str, Any]:
        json_file = getattr(MetadataCatalog.get(self._dataset_name), "json_file", None)
        if json_file:
            return json_file
        if not hasattr(MetadataCatalog.get(self._dataset_name), "thing_classes"):
            raise ValueError(
                f"dataset {self._dataset_name!r} has neither 'json_file' nor 'thing_classes' in "
                "its metadata, so there is no ground truth to evaluate against"
            )
        return convert_to_coco_dict(self._dataset_name)
