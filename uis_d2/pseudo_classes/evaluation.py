"""How well pseudo-classes name the ground-truth classes of the masks (region level).

Each mask's true class is the category of the ground-truth instance it overlaps most: by mask
IoU (default) or by box IoU (MaskDistill's reference). Crowd instances are never candidates; a
mask overlapping no instance (IoU 0 with all: background fragments, images without ground
truth) has no class and is left out of the scores, and counted. Scores, as MaskDistill's
reference prints them, on the (K, C) confusion of cluster ids against classes: accuracy after
the one-to-one Hungarian matching of ``evaluation/cluster_matching.py`` (it maximises the summed
IoU of the matched pairs, where the reference maximises matched masks; equal on clean
clusterings), NMI (arithmetic normalisation, scikit-learn's default) and ARI. The ground truth
is only read here, never by the clustering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from uis_d2.evaluation.cluster_matching import (
    accumulate_confusion,
    match_clusters,
    semantic_scores,
)
from uis_d2.utils.masks import to_compressed_rle

GT_MATCHES = ("mask", "box")
NO_CLASS = -1


def region_classes(
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    gt: Mapping[str, Any],
    match: str = "mask",
) -> tuple[np.ndarray, list[str]]:
    """(N,) class index (into the returned names, the ground truth's categories by id) of each
    annotation, ``NO_CLASS`` where it overlaps no ground-truth instance. Images are matched by
    id; an id the ground truth lacks, or naming another file, is an error."""
    if match not in GT_MATCHES:
        raise ValueError(f"ground-truth match {match!r}: must be one of {GT_MATCHES}")
    categories = sorted(gt.get("categories", []), key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(categories)}
    gt_images = {image["id"]: image for image in gt.get("images", [])}
    instances: dict[Any, list[Mapping[str, Any]]] = {}
    for instance in gt.get("annotations", []):
        if not instance.get("iscrowd", 0):
            instances.setdefault(instance["image_id"], []).append(instance)
    by_image: dict[Any, list[int]] = {}
    for i, annotation in enumerate(annotations):
        by_image.setdefault(annotation["image_id"], []).append(i)
    classes = np.full(len(annotations), NO_CLASS, dtype=np.int64)
    for image in images:
        if image["id"] not in by_image:
            continue
        truth = gt_images.get(image["id"])
        if truth is None:
            raise ValueError(
                f"image id {image['id']} ({image['file_name']}) is not in the ground truth"
            )
        if Path(truth["file_name"]).name != Path(image["file_name"]).name:
            raise ValueError(
                f"image id {image['id']} is {image['file_name']} in the pseudo-labels but "
                f"{truth['file_name']} in the ground truth"
            )
        candidates = instances.get(image["id"], [])
        if not candidates:
            continue
        rows = by_image[image["id"]]
        ious = _ious([annotations[i] for i in rows], candidates, image, match)
        best = ious.argmax(axis=1)
        found = ious[np.arange(len(rows)), best] > 0
        labels = np.array([column[candidates[j]["category_id"]] for j in best])
        classes[np.asarray(rows)[found]] = labels[found]
    return classes, [c["name"] for c in categories]


def _ious(
    masks: list[Mapping[str, Any]],
    instances: list[Mapping[str, Any]],
    image: Mapping[str, Any],
    match: str,
) -> np.ndarray:
    """(len(masks), len(instances)) mask or box IoU."""
    crowd = [0] * len(instances)
    if match == "box":
        return np.asarray(
            mask_utils.iou([m["bbox"] for m in masks], [g["bbox"] for g in instances], crowd)
        ).reshape(len(masks), len(instances))
    height, width = image["height"], image["width"]
    ours = [to_compressed_rle(m["segmentation"], height, width) for m in masks]
    theirs = [to_compressed_rle(g["segmentation"], height, width) for g in instances]
    return np.asarray(mask_utils.iou(ours, theirs, crowd)).reshape(len(masks), len(instances))


def region_scores(
    labels: np.ndarray, classes: np.ndarray, num_clusters: int, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy after Hungarian matching, NMI and ARI of cluster ``labels`` against
    ``classes`` (``NO_CLASS`` entries left out), with the matching and the confusion."""
    confusion = np.zeros((num_clusters, len(class_names)), dtype=np.int64)
    accumulate_confusion(confusion, labels, classes, ignore_label=NO_CLASS)
    mapping = match_clusters(confusion, "hungarian")
    scores = semantic_scores(confusion, mapping)
    return {
        "masks": int(len(labels)),
        "masks_with_class": int(confusion.sum()),
        "accuracy": scores.pixel_accuracy,
        "nmi": normalized_mutual_info(confusion),
        "ari": adjusted_rand_index(confusion),
        "per_class_iou": dict(zip(class_names, scores.per_class_iou.round(6).tolist())),
        "matching": {
            f"cluster_{c}": class_names[m] if m >= 0 else None for c, m in enumerate(mapping)
        },
        "confusion": confusion.tolist(),
    }


def normalized_mutual_info(contingency: np.ndarray) -> float:
    """NMI of two labellings given as their contingency table, normalised by the arithmetic
    mean of the entropies; 1 when neither splits the data (scikit-learn's conventions)."""
    counts = contingency.astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 1.0
    rows, cols = counts.sum(1), counts.sum(0)
    entropy_rows, entropy_cols = _entropy(rows / total), _entropy(cols / total)
    if entropy_rows == 0 and entropy_cols == 0:
        return 1.0
    nonzero = counts > 0
    outer = np.outer(rows, cols)[nonzero]
    joint = counts[nonzero] / total
    mutual = float((joint * np.log(counts[nonzero] * total / outer)).sum())
    return max(mutual, 0.0) / ((entropy_rows + entropy_cols) / 2)


def adjusted_rand_index(contingency: np.ndarray) -> float:
    """Hubert and Arabie's ARI from the contingency table; 1 when both labellings agree that
    all points are together or all apart (scikit-learn's convention)."""
    counts = contingency.astype(np.float64)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    together = pairs(counts)
    rows, cols = pairs(counts.sum(1)), pairs(counts.sum(0))
    all_pairs = pairs(np.array([counts.sum()]))
    expected = rows * cols / all_pairs if all_pairs else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (together - expected) / (maximum - expected)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
