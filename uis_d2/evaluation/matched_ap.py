"""Matched instance AP: class-aware COCO AP of instances named by cluster ids (MaskDistill).

Predictions are COCO results whose ``category_id`` is a cluster id. A cluster -> category
mapping renames them, then COCOeval runs class-aware (``coco_agnostic.run_coco_eval``):

- ``multi``: every renamed prediction.
- ``single``: per image only the most confident renamed prediction, against the one non-crowd
  ground-truth object whose box overlaps it most (MaskDistill's ``eval_instances.py``, which
  also considers crowd objects; COCO20k and the VOC json have none); images without a
  prediction drop out.

The mapping stays label-free until this evaluation. By default it comes from instance overlaps
(MaskDistill): each predicted mask's "true" class is the class of the non-crowd ground-truth
instance it has the largest mask IoU with (a mask overlapping none does not vote), then the
cluster x class vote counts are matched: ``hungarian`` one-to-one maximising the matched votes,
``majority`` / ``precision`` many-to-one (``cluster_matching``). It can also be given, e.g. the
semantic evaluation's via ``mapping_from_semantic``. Predictions of clusters mapped to no
category (unmatched, or the background) are dropped: they cannot match an object of any class.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from uis_d2.evaluation.cluster_matching import MATCHINGS, UNMATCHED, match_clusters, one_to_one
from uis_d2.evaluation.coco_agnostic import (
    BACKENDS,
    GroundTruth,
    Predictions,
    load_ground_truth,
    load_predictions,
    normalize_predictions,
    run_coco_eval,
    source_name,
)
from uis_d2.evaluation.semantic import CLUSTER_ID_OFFSET, check_evaluation_split
from uis_d2.utils.masks import to_compressed_rle

PROTOCOLS = ("multi", "single")
ClusterMapping = Mapping[int, int | None]  # cluster id -> ground-truth category id, or None


def _cluster_ids(raw: Sequence[Mapping[str, Any]], source: str) -> list[int]:
    clusters = []
    for index, pred in enumerate(raw):
        if not isinstance(pred.get("category_id"), (int, np.integer)):
            raise ValueError(
                f"{source}: prediction {index} needs an integer 'category_id' (its cluster id), "
                f"got {pred.get('category_id')!r}"
            )
        clusters.append(int(pred["category_id"]))
    return clusters


def _gt_instances(gt_dataset: Mapping[str, Any]) -> dict[Any, list[tuple[dict, dict]]]:
    """Non-crowd ground-truth annotations of every image, each with its mask as RLE."""
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt_dataset["images"]}
    by_image: dict[Any, list[tuple[dict, dict]]] = defaultdict(list)
    for ann in gt_dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if "segmentation" not in ann:
            raise ValueError(f"ground-truth annotation {ann.get('id')} has no segmentation")
        rle = to_compressed_rle(ann["segmentation"], *sizes[ann["image_id"]])
        by_image[ann["image_id"]].append((ann, rle))
    return by_image


def _by_image(results: Sequence[Mapping[str, Any]]) -> dict[Any, list[int]]:
    indices: dict[Any, list[int]] = defaultdict(list)
    for index, result in enumerate(results):
        indices[result["image_id"]].append(index)
    return indices


def mask_votes(
    gt_dataset: Mapping[str, Any], results: Sequence[Mapping[str, Any]], clusters: Sequence[int]
) -> tuple[np.ndarray, list[int], list[int]]:
    """Vote counts (clusters x categories): each predicted mask votes for the category of the
    non-crowd ground-truth instance it overlaps most; rows are the sorted cluster ids,
    columns the sorted category ids (both returned)."""
    cluster_ids = sorted(set(clusters))
    category_ids = sorted(int(c["id"]) for c in gt_dataset["categories"])
    row = {c: i for i, c in enumerate(cluster_ids)}
    column = {c: i for i, c in enumerate(category_ids)}
    votes = np.zeros((len(cluster_ids), len(category_ids)), dtype=np.int64)
    gt = _gt_instances(gt_dataset)
    for image_id, indices in _by_image(results).items():
        if not gt.get(image_id):
            continue
        iou = mask_utils.iou(
            [results[i]["segmentation"] for i in indices],
            [rle for _, rle in gt[image_id]],
            [0] * len(gt[image_id]),
        )
        for index, ious in zip(indices, np.atleast_2d(iou)):
            if ious.max() > 0:
                category = gt[image_id][int(ious.argmax())][0]["category_id"]
                votes[row[clusters[index]], column[category]] += 1
    return votes, cluster_ids, category_ids


def mapping_from_instances(
    gt_dataset: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    clusters: Sequence[int],
    matching: str = "hungarian",
) -> dict[int, int | None]:
    """Cluster -> category from mask votes (see the module's note); None for unmatched."""
    if matching not in MATCHINGS:
        raise ValueError(f"matching {matching!r}: must be one of {MATCHINGS}")
    votes, cluster_ids, category_ids = mask_votes(gt_dataset, results, clusters)
    assignment = one_to_one(votes) if matching == "hungarian" else match_clusters(votes, matching)
    return {
        cluster: None if column == UNMATCHED else category_ids[column]
        for cluster, column in zip(cluster_ids, assignment.tolist())
    }


def mapping_from_semantic(
    semantic_mapping: Sequence[int], category_ids: Sequence[int]
) -> dict[int, int | None]:
    """Cluster -> category from a semantic evaluation's mapping (class index of every semantic
    id 0..K): cluster k is semantic id k + 1, class c >= 1 the c-th of the sorted
    ``category_ids``; ids matched to the background or to nothing map to None."""
    ordered = sorted(category_ids)
    return {
        semantic_id - CLUSTER_ID_OFFSET: ordered[c - 1] if c >= 1 else None
        for semantic_id, c in enumerate(semantic_mapping)
        if semantic_id >= CLUSTER_ID_OFFSET
    }


def most_confident(
    gt_dataset: dict[str, Any], results: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``single`` protocol's ground truth and predictions (see the module's note)."""
    best: dict[Any, dict[str, Any]] = {}
    for result in results:
        current = best.get(result["image_id"])
        if current is None or result["score"] > current["score"]:
            best[result["image_id"]] = result
    gt = _gt_instances(gt_dataset)
    selected = []
    for image_id, result in best.items():
        if not gt.get(image_id):
            continue
        boxes = [ann.get("bbox") or mask_utils.toBbox(rle).tolist() for ann, rle in gt[image_id]]
        ious = mask_utils.iou([result["bbox"]], boxes, [0] * len(boxes))
        selected.append(gt[image_id][int(np.argmax(ious))][0])
    return {**gt_dataset, "annotations": selected}, list(best.values())


def matched_instance_ap(
    gt: GroundTruth,
    predictions: Predictions,
    mapping: ClusterMapping | None = None,
    matching: str = "hungarian",
    protocols: Sequence[str] = PROTOCOLS,
    split_name: str | None = None,
    allow_train_split: bool = False,
    iou_types: Sequence[str] = ("segm",),
    backend: str = "pycocotools",
) -> dict[str, Any]:
    """Class-aware COCO metrics (percent) of cluster-named predictions after the mapping:
    ``{protocol: {iou_type: metrics}}`` plus the split, the mapping (category names) and how
    many predictions it dropped. ``split_name`` (default: the ground truth's file name) is
    checked like the semantic evaluator's: no matching on a training split unless allowed."""
    split_name = split_name or source_name(gt, "ground truth")
    check_evaluation_split(split_name, allow_train_split)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: must be one of {PROTOCOLS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    source = source_name(predictions, "predictions")
    gt_dataset = load_ground_truth(gt)
    raw = load_predictions(predictions)
    clusters = _cluster_ids(raw, source)
    results = normalize_predictions(raw, gt_dataset, source)
    if mapping is None:
        mapping = mapping_from_instances(gt_dataset, results, clusters, matching)
        mapping_from = f"instance overlaps, {matching}"
    else:
        mapping_from = "given"
    names = {int(c["id"]): c["name"] for c in gt_dataset["categories"]}
    unknown = sorted({c for c in mapping.values() if c is not None and c not in names})
    if unknown:
        raise ValueError(f"mapping names categories {unknown}, not in the ground truth")
    renamed = []
    for result, cluster in zip(results, clusters):
        category = mapping.get(cluster)
        if category is not None:
            renamed.append({**result, "category_id": category})
    report: dict[str, Any] = {
        "split": split_name,
        "mapping_from": mapping_from,
        "mapping": {str(k): None if v is None else names[v] for k, v in sorted(mapping.items())},
        "num_predictions": len(results),
        "dropped_predictions": len(results) - len(renamed),
    }
    for protocol in protocols:
        if protocol == "multi":
            gt_used, used = gt_dataset, renamed
        else:
            gt_used, used = most_confident(gt_dataset, renamed)
        report[protocol] = run_coco_eval(gt_used, used, iou_types, True, backend, source=source)
    return report
