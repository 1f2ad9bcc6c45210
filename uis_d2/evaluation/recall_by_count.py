"""Recall of raw mask proposals split by instance count (Engstler et al. 2023, Table 1).

Every ground-truth instance goes to the bucket of how many instances of *its own category* its
image holds (two cats and a dog: the cats count in bucket 2, the dog in bucket 1), so the table
shows whether proposals separate instances of the same class or merge them into one region.

Choices the paper leaves open (documented here and in the tool's output):
- Matching is one-to-one per image and class-agnostic, greedy by IoU: (proposal, instance) pairs
  are taken in descending mask IoU, each proposal and each instance at most once. A mask that
  covers two cats can therefore recall only one of them. Scores play no part, as raw proposals
  have no meaningful ranking, and every proposal of an image is used (no maxDets cap).
- Recall at IoU t = matched instances with IoU >= t / instances in the bucket, pooled over the
  dataset; average recall = its mean over t in 0.5:0.05:0.95 (COCO's thresholds).
- Crowd annotations (iscrowd=1) are left out, as COCOeval ignores them too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from uis_d2.evaluation.coco_agnostic import (
    GroundTruth,
    Predictions,
    load_ground_truth,
    load_predictions,
    normalize_predictions,
    source_name,
)
from uis_d2.utils.masks import to_compressed_rle

BUCKET_LABELS = ("1", "2", "3", "4", "5", "6+")
ALL_LABEL = "all"
# Same values as COCOeval.params.iouThrs, so ">= t" agrees with COCOeval at the boundaries.
IOU_THRESHOLDS = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))


@dataclass(frozen=True)
class RecallByCount:
    """Per bucket (``BUCKET_LABELS`` plus "all"): instance counts and recall in percent.

    Buckets without instances have NaN recall.
    """

    num_instances: dict[str, int]
    average_recall: dict[str, float]
    recall_at_iou: dict[str, list[float]]
    iou_thresholds: tuple[float, ...]
    num_images: int
    num_proposals: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_bucket(count: int) -> str:
    """Bucket label of an instance whose image holds ``count`` instances of its category."""
    if count < 1:
        raise ValueError(f"an instance count is at least 1, got {count}")
    return BUCKET_LABELS[min(count, len(BUCKET_LABELS)) - 1]


def greedy_matched_ious(iou: np.ndarray, min_iou: float) -> np.ndarray:
    """IoU of each instance's partner in the greedy one-to-one matching; 0 if it has none.

    ``iou`` is (proposals, instances). Pairs are taken in descending IoU, so the matches with
    IoU >= t are exactly those the same greedy matching restricted to pairs >= t would make:
    one matching serves every threshold.
    """
    matched = np.zeros(iou.shape[1])
    instance_used = np.zeros(iou.shape[1], dtype=bool)
    proposal_used = np.zeros(iou.shape[0], dtype=bool)
    proposal_idx, instance_idx = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[proposal_idx, instance_idx], kind="stable")
    for p, g in zip(proposal_idx[order], instance_idx[order]):
        if not (instance_used[g] or proposal_used[p]):
            matched[g] = iou[p, g]
            instance_used[g] = proposal_used[p] = True
    return matched


def recall_by_instance_count(
    gt: GroundTruth,
    proposals: Predictions,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> RecallByCount:
    """Average recall of ``proposals`` (all of them per image) per same-category count bucket."""
    source = source_name(proposals, "proposals")
    gt_dataset = load_ground_truth(gt)
    results = normalize_predictions(load_predictions(proposals), gt_dataset, source)
    proposals_by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for index, result in enumerate(results):
        if "segmentation" not in result:
            raise ValueError(f"{source}: proposal {index} has no segmentation")
        proposals_by_image[result["image_id"]].append(result["segmentation"])
    instances_by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in gt_dataset["annotations"]:
        if not ann["iscrowd"]:
            instances_by_image[ann["image_id"]].append(ann)

    buckets: list[str] = []
    matched_ious: list[np.ndarray] = []
    for image in tqdm(gt_dataset["images"], desc="recall by count", unit="img", disable=None):
        instances = instances_by_image[image["id"]]
        if not instances:
            continue
        per_category = Counter(ann["category_id"] for ann in instances)
        buckets.extend(count_bucket(per_category[ann["category_id"]]) for ann in instances)
        size = (image["height"], image["width"])
        instance_rles = [to_compressed_rle(ann["segmentation"], *size) for ann in instances]
        proposal_rles = proposals_by_image[image["id"]]
        iou = np.zeros((len(proposal_rles), len(instance_rles)))
        if proposal_rles:
            iou[:] = mask_utils.iou(proposal_rles, instance_rles, [0] * len(instance_rles))
        matched_ious.append(greedy_matched_ious(iou, min(iou_thresholds)))

    return _summarize(
        np.array(buckets, dtype=object),
        np.concatenate(matched_ious) if matched_ious else np.zeros(0),
        tuple(float(t) for t in iou_thresholds),
        num_images=len(gt_dataset["images"]),
        num_proposals=len(results),
    )


def _summarize(
    buckets: np.ndarray,
    matched_ious: np.ndarray,
    iou_thresholds: tuple[float, ...],
    num_images: int,
    num_proposals: int,
) -> RecallByCount:
    hits = matched_ious[:, None] >= np.asarray(iou_thresholds)[None, :]
    num_instances, average_recall, recall_at_iou = {}, {}, {}
    for label in (*BUCKET_LABELS, ALL_LABEL):
        selected = hits if label == ALL_LABEL else hits[buckets == label]
        num_instances[label] = int(selected.shape[0])
        recall = selected.mean(axis=0) * 100 if len(selected) else np.full(hits.shape[1], np.nan)
        recall_at_iou[label] = [float(r) for r in recall]
        average_recall[label] = float(recall.mean())
    return RecallByCount(
        num_instances, average_recall, recall_at_iou, iou_thresholds, num_images, num_proposals
    )
