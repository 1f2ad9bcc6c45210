"""CutLER's next-round labels: a round's selected predictions plus the masks it trained on that
no selected prediction covers (``SELF_TRAINING.MERGE: cutler``).

CutLER (Wang et al. 2023) keeps, for round r + 1, round r's predictions above a per-round score
threshold, and adds round r's own pseudo-masks whose mask IoU with every kept prediction of their
image is below 0.5: an object the model missed keeps its old mask, and one the model found is
not labelled twice. Masks are compared as COCO RLE, never decoded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from detectron2.data import get_detection_dataset_dicts
from pycocotools import mask as mask_utils

from uis_d2.data.pseudo_labels import (
    EMBEDDING_STORE_DTYPE,
    SCORE_DECIMALS,
    SCORE_KEY,
    EmbeddingLookup,
    annotation_score,
    json_floats,
)
from uis_d2.utils.masks import rle_areas, rle_boxes_xywh, to_compressed_rle

MERGE_MODES = ("none", "cutler")


def uncovered(
    previous: Sequence[Mapping[str, Any]], predicted: Sequence[Mapping[str, Any]], iou_thresh: float
) -> list[int]:
    """Indices of the ``previous`` RLE masks whose IoU with every ``predicted`` RLE mask (of
    the same image) is < ``iou_thresh``."""
    if not previous or not predicted:
        return list(range(len(previous)))
    ious = np.asarray(mask_utils.iou(list(previous), list(predicted), [0] * len(predicted)))
    return np.flatnonzero(ious.max(axis=1) < iou_thresh).tolist()


class PreviousLabels:
    """A round's training pseudo-masks, found by image file, merged into that round's
    predictions. The datasets are read on first use, so only the process that writes the
    labels reads them."""

    def __init__(self, dataset_names: Sequence[str], iou_thresh: float) -> None:
        self.dataset_names = list(dataset_names)
        self.iou_thresh = iou_thresh
        self.num_added = 0
        # Images whose predictions carry embeddings but whose added masks do not (or of another
        # width): their labels are written without embeddings.
        self.num_without_embeddings = 0
        self._dataset: Sequence[dict[str, Any]] | None = None
        self._positions: dict[str, int] = {}

    def merge(self, record: dict[str, Any], embedding_width: int | None) -> dict[str, Any]:
        """A labelling record (``file_name``, ``height``, ``width``, ``annotations`` as
        ``encode_masks`` gives them, ``embeddings`` rows or None) with the uncovered previous
        masks of its image appended, keeping their scores (1.0 for ground truth).

        ``embedding_width``: that of the model's predicted embeddings (None: it predicts none,
        and the merged labels carry none).
        """
        if self._dataset is None:
            self._dataset = get_detection_dataset_dicts(self.dataset_names, filter_empty=False)
            self._positions = {d["file_name"]: i for i, d in enumerate(self._dataset)}
        position = self._positions.get(record["file_name"])
        if position is None:
            return record
        previous = self._dataset[position]
        candidates = [a for a in previous.get("annotations") or [] if not a.get("iscrowd", 0)]
        height, width = record["height"], record["width"]
        rles = [to_compressed_rle(a["segmentation"], height, width) for a in candidates]
        predicted = [a["segmentation"] for a in record["annotations"]]
        added = [
            i for i in uncovered(rles, predicted, self.iou_thresh) if rle_areas([rles[i]])[0] > 0
        ]
        if not added:
            return record
        added_rles = [rles[i] for i in added]
        scores = np.array([annotation_score(candidates[i]) for i in added])
        fields = {
            "segmentation": added_rles,
            "bbox": rle_boxes_xywh(added_rles),
            "area": rle_areas(added_rles),
            SCORE_KEY: json_floats(scores, SCORE_DECIMALS),
        }
        self.num_added += len(added)
        store = EmbeddingLookup(previous.get("embedding_store"))
        return {
            **record,
            "annotations": record["annotations"]
            + [dict(zip(fields, r)) for r in zip(*fields.values())],
            "embeddings": self._stacked(
                record["embeddings"],
                store.embeddings([candidates[i] for i in added]),
                embedding_width,
            ),
        }

    def _stacked(
        self, predicted: np.ndarray | None, added: np.ndarray | None, width: int | None
    ) -> np.ndarray | None:
        """Embedding rows of the merged annotations (``predicted`` is None for an image
        without predictions); None when the model predicts none or the added masks carry none
        of its width."""
        if width is None:
            return None
        if added is None or added.shape[1] != width:
            self.num_without_embeddings += 1
            return None
        if predicted is None:
            predicted = np.zeros((0, width), dtype=EMBEDDING_STORE_DTYPE)
        return np.concatenate([predicted, added.astype(EMBEDDING_STORE_DTYPE)])
