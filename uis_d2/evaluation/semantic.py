"""Semantic segmentation with pseudo-class ids: a detectron2 evaluator and its report.

Unsupervised segmenters name their segments with arbitrary ids 0..K (0 = background). The
evaluator accumulates one dataset-level (K + 1) x (C + 1) pixel confusion of those ids against
the ground-truth classes (255 ignored), maps ids to classes on it (``cluster_matching``:
hungarian, majority, precision) and scores per-class IoU, mIoU, pixel accuracy and the
classes discovered (IoU >= 20%, COMUS). The mapping is chosen on the evaluated split's own
pixels, so evaluating a split named as a training split is refused unless asked for.

Size: ``eval_size=0`` scores at the ground truth's size (MaskDistill, COMUS), a prediction of
another size resized to it by nearest neighbour; ``eval_size=N`` resizes both to N x N by
nearest neighbour first (Leopart's 100 x 100). Score maps are reduced by argmax before any
resize.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training servers
import matplotlib.pyplot as plt
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from uis_d2.data.semantic import (
    decode_segmentation,
    paint_masks,
    resize_labels,
    semantic_map,
)
from uis_d2.evaluation.cluster_matching import (
    MATCHINGS,
    UNMATCHED,
    accumulate_confusion,
    match_clusters,
    relabelled_confusion,
    semantic_scores,
)
from uis_d2.evaluation.plotting import _save
from uis_d2.utils.files import atomic_write_json

logger = logging.getLogger(__name__)

METRICS_FILE = "semantic_metrics.json"
CONFUSION_FILE = "semantic_confusion_{matching}.png"
DISCOVERY_IOU = 0.2  # COMUS Table 3: a class is "discovered" at IoU >= 20%
TRAIN_MARKER = "train"
# Instance predictions name clusters 0..K-1 (the pseudo-class field); as semantic ids they are
# 1..K, 0 being the background.
CLUSTER_ID_OFFSET = 1


def check_evaluation_split(name: str, allow_train_split: bool = False) -> None:
    """Refuse a split whose name marks it as training data: a mapping chosen there would
    score the clusters on the pixels they were fitted to (MaskDistill's reference does so)."""
    if TRAIN_MARKER in name.lower() and not allow_train_split:
        raise ValueError(
            f"split {name!r} looks like a training split ({TRAIN_MARKER!r} in its name): the "
            "cluster->class matching must be computed on evaluation data; pass "
            "allow_train_split=True (--allow-train-split) to evaluate on it anyway"
        )


def prediction_ids(sem_seg: torch.Tensor | np.ndarray, num_ids: int | None = None) -> np.ndarray:
    """An (H, W) int64 id map from (K + 1, H, W) scores (argmax over ids; ``num_ids``, when
    known, must equal K + 1) or an (H, W) integer id map."""
    values = sem_seg.detach().cpu().numpy() if isinstance(sem_seg, torch.Tensor) else sem_seg
    values = np.asarray(values)
    if values.ndim == 3:
        if num_ids is not None and len(values) != num_ids:
            raise ValueError(f"{len(values)} score maps, expected K + 1 = {num_ids}")
        return values.argmax(axis=0).astype(np.int64)
    if values.ndim == 2 and (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        return values.astype(np.int64)
    raise ValueError(
        f"sem_seg must be (K+1, H, W) scores or an (H, W) integer id map, got shape "
        f"{values.shape} of {values.dtype}"
    )


def instances_to_ids(
    predictions: Sequence[Mapping[str, Any]], height: int, width: int, score_thresh: float
) -> np.ndarray:
    """An id map painted from one image's instance predictions (COCO results whose
    ``category_id`` is a cluster id 0..K-1, painted as id + 1): those scoring at least
    ``score_thresh``, the most confident on top; unpainted pixels are background."""
    if any("segmentation" not in p for p in predictions):
        raise ValueError("instance predictions need masks ('segmentation') to be painted")
    kept = sorted(
        (p for p in predictions if float(p.get("score", 1.0)) >= score_thresh),
        key=lambda p: float(p.get("score", 1.0)),
    )
    masks = [decode_segmentation(p["segmentation"], height, width) for p in kept]
    ids = [int(p["category_id"]) + CLUSTER_ID_OFFSET for p in kept]
    return paint_masks(masks, ids, height, width, dtype=np.int64)


def semantic_report(
    confusion: np.ndarray,
    class_names: Sequence[str],
    matchings: Sequence[str],
    discovery_iou: float = DISCOVERY_IOU,
) -> dict[str, dict[str, Any]]:
    """Per matching: scores in percent, per-class IoU by name and the class of every id
    (``mapping``: class index, -1 unmatched; ``mapping_names``: class name or None)."""
    report = {}
    for method in matchings:
        mapping = match_clusters(confusion, method)
        scores = semantic_scores(confusion, mapping, discovery_iou)
        report[method] = {
            "mIoU": 100 * scores.miou,
            "pACC": 100 * scores.pixel_accuracy,
            "discovered": scores.discovered,
            "discovered_mIoU": 100 * scores.discovered_miou,
            # None: a class neither present nor predicted, left out of the means.
            "per_class_iou": {
                n: 100 * float(v) if defined else None
                for n, v, defined in zip(class_names, scores.per_class_iou, scores.defined)
            },
            "mapping": mapping.tolist(),
            "mapping_names": [None if c == UNMATCHED else class_names[c] for c in mapping],
        }
    return report


def format_semantic_table(summary: Mapping[str, Any]) -> str:
    """The summary's headline numbers per matching, then per-class IoU, as a text table."""
    matchings = summary["matchings"]
    num_classes = len(summary["classes"])
    size = summary["eval_size"]
    lines = [
        f"semantic evaluation on {summary['split']}: {summary['num_images']} images, "
        f"{summary['num_clusters'] + 1} predicted ids (K = {summary['num_clusters']} + "
        f"background), {num_classes} classes, "
        f"{'original size' if size == 'original' else f'{size[0]} x {size[1]}'}",
        f"{'matching':<10}{'mIoU':>8}{'pACC':>8}{'discovered':>12}{'its mIoU':>10}",
    ]
    for method, r in matchings.items():
        discovered = f"{r['discovered']}/{num_classes}"
        lines.append(
            f"{method:<10}{r['mIoU']:>8.2f}{r['pACC']:>8.2f}{discovered:>12}"
            f"{r['discovered_mIoU']:>10.2f}"
        )
    header = "per-class IoU (%)"
    width = max(len(header), *(len(name) for name in summary["classes"])) + 2
    lines.append(header.ljust(width) + "".join(f"{m:>11}" for m in matchings))
    for name in summary["classes"]:
        ious = [r["per_class_iou"][name] for r in matchings.values()]
        row = "".join(f"{'-':>11}" if v is None else f"{v:>11.2f}" for v in ious)
        lines.append(f"{name:<{width}}{row}")
    lines.append("(-: a class neither present nor predicted, left out of the means)")
    return "\n".join(lines)


def plot_semantic_confusion(
    confusion: np.ndarray,
    mapping: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str,
) -> None:
    """The confusion after matching as a PNG: a row per ground-truth class, normalised to the
    share of its pixels predicted as each class (plus "unmatched" for ids with no class)."""
    mapped = relabelled_confusion(confusion, mapping).T.astype(np.float64)  # rows: ground truth
    unmatched = confusion[mapping == UNMATCHED].sum(0).astype(np.float64)
    columns = list(class_names)
    if unmatched.any():
        mapped = np.concatenate([mapped, unmatched[:, None]], axis=1)
        columns.append("unmatched")
    totals = mapped.sum(1, keepdims=True)
    shares = np.divide(mapped, totals, out=np.zeros_like(mapped), where=totals > 0)
    small = len(columns) <= 25  # cell values and larger labels only where they stay readable
    side = max(4.0, (0.35 if small else 0.2) * len(columns) + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(shares, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the class's pixels")
    fontsize = 9 if small else 6
    ax.set_xticks(np.arange(len(columns)), columns, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(len(class_names)), class_names, fontsize=fontsize)
    ax.set_xlabel("prediction after matching")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if small:
        for (row, col), share in np.ndenumerate(shares):
            if share >= 0.005:
                color = "white" if share > 0.5 else "black"
                ax.text(col, row, f"{share:.2f}", ha="center", va="center", fontsize=7, color=color)
    _save(fig, path)


class UnsupervisedSemSegEvaluator(DatasetEvaluator):
    """Semantic predictions with pseudo-class ids against a registered semantic split.

    ``process`` reads each output's ``sem_seg``: (K + 1, H, W) scores or an (H, W) id map, ids
    0..K with 0 the background. ``num_clusters`` = K fixes the ids' range (an id outside 0..K
    is an error); ``None`` takes K from the largest id seen. ``matchings``: any of hungarian
    (one-to-one, K = C), majority and precision (many-to-one, K > C). Results are percentages
    per matching under ``sem_seg_<matching>``; with ``output_dir``, the full summary (split,
    size, confusion, mappings) goes to ``semantic_metrics.json`` and a confusion PNG per
    matching beside it.
    """

    def __init__(
        self,
        dataset_name: str,
        num_clusters: int | None = None,
        matchings: Sequence[str] = ("hungarian",),
        eval_size: int = 0,
        output_dir: str | Path | None = None,
        distributed: bool = True,
        allow_train_split: bool = False,
        discovery_iou: float = DISCOVERY_IOU,
    ) -> None:
        check_evaluation_split(dataset_name, allow_train_split)
        for method in matchings:
            if method not in MATCHINGS:
                raise ValueError(f"matching {method!r}: must be one of {MATCHINGS}")
        if not matchings:
            raise ValueError("at least one matching is needed")
        if eval_size < 0:
            raise ValueError(f"eval_size must be 0 (original size) or positive, got {eval_size}")
        if num_clusters is not None and num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = list(metadata.stuff_classes)
        self._ignore_label = int(metadata.get("ignore_label", 255))
        self._num_clusters = num_clusters
        self._matchings = tuple(matchings)
        self._eval_size = eval_size
        self._output_dir = Path(output_dir) if output_dir is not None else None
        self._distributed = distributed
        self._discovery_iou = discovery_iou
        self._records: dict[str, Mapping[str, Any]] | None = None
        self.reset()

    def reset(self) -> None:
        rows = 1 if self._num_clusters is None else self._num_clusters + 1
        self._confusion = np.zeros((rows, len(self._class_names)), dtype=np.int64)
        self._num_images = 0

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for item, output in zip(inputs, outputs):
            if item is None:  # unreadable image skipped by policy: nothing to score
                continue
            source = item["file_name"]
            num_ids = None if self._num_clusters is None else self._num_clusters + 1
            try:
                pred = prediction_ids(output["sem_seg"], num_ids)
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from e
            self.add_image(pred, semantic_map(self._record(source)), source)

    def add_image(self, pred: np.ndarray, gt: np.ndarray, source: str) -> None:
        """Add one image's (H, W) id map ``pred`` against its ground-truth map ``gt`` (sizes may
        differ: see the module's note on size); ``source`` names the image in errors."""
        size = gt.shape if self._eval_size == 0 else (self._eval_size, self._eval_size)
        pred, gt = resize_labels(pred, size), resize_labels(gt, size)
        if self._num_clusters is None and pred.size and pred.max() >= len(self._confusion):
            self._confusion = _pad_rows(self._confusion, int(pred.max()) + 1)
        try:
            accumulate_confusion(self._confusion, pred, gt, self._ignore_label)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
        self._num_images += 1

    def evaluate(self) -> OrderedDict[str, dict[str, float]]:
        confusion, num_images = self._confusion, self._num_images
        if self._distributed:
            comm.synchronize()
            parts = comm.gather((confusion, num_images), dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            rows = max(len(c) for c, _ in parts)
            confusion = sum(_pad_rows(c, rows) for c, _ in parts)
            num_images = sum(n for _, n in parts)
        summary = self._summary(confusion, num_images)
        logger.info(format_semantic_table(summary))
        if self._output_dir is not None:
            atomic_write_json(self._output_dir / METRICS_FILE, summary, indent=2)
            for method, result in summary["matchings"].items():
                plot_semantic_confusion(
                    confusion,
                    np.asarray(result["mapping"]),
                    self._class_names,
                    self._output_dir / CONFUSION_FILE.format(matching=method),
                    f"{self._dataset_name}, {method}: mIoU {result['mIoU']:.1f}%",
                )
        return OrderedDict(
            (f"sem_seg_{method}", _scalars(result))
            for method, result in summary["matchings"].items()
        )

    def _summary(self, confusion: np.ndarray, num_images: int) -> dict[str, Any]:
        """Everything the evaluation found, json-ready: the setting, the confusion, the report."""
        num_clusters = len(confusion) - 1
        if "hungarian" in self._matchings and num_clusters != len(self._class_names) - 1:
            logger.warning(
                f"hungarian matching with K = {num_clusters} ids for C = "
                f"{len(self._class_names) - 1} classes: unmatched ids count as errors, classes "
                "without an id score IoU 0"
            )
        if num_images == 0:
            logger.warning(f"{self._dataset_name}: no image was evaluated; every score is 0")
        return {
            "split": self._dataset_name,
            "num_images": num_images,
            "eval_size": "original" if self._eval_size == 0 else [self._eval_size] * 2,
            "num_clusters": num_clusters,
            "num_clusters_from": "given" if self._num_clusters is not None else "largest id",
            "classes": self._class_names,
            "ignore_label": self._ignore_label,
            "discovery_iou": self._discovery_iou,
            "matchings": semantic_report(
                confusion, self._class_names, self._matchings, self._discovery_iou
            ),
            "confusion": confusion.tolist(),  # rows: ids 0..K, columns: classes
        }

    def _record(self, file_name: str) -> Mapping[str, Any]:
        if self._records is None:
            self._records = {r["file_name"]: r for r in DatasetCatalog.get(self._dataset_name)}
        if file_name not in self._records:
            raise KeyError(f"{file_name} is not an image of {self._dataset_name}")
        return self._records[file_name]


def _pad_rows(confusion: np.ndarray, rows: int) -> np.ndarray:
    """``confusion`` with zero rows added up to ``rows`` (ids no image predicted so far)."""
    return np.pad(confusion, ((0, rows - len(confusion)), (0, 0)))


def _scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers detectron2's loggers take: headline scores and IoU per class."""
    scalars = {k: float(result[k]) for k in ("mIoU", "pACC", "discovered", "discovered_mIoU")}
    ious = result["per_class_iou"].items()
    scalars.update({f"IoU-{name}": iou for name, iou in ious if iou is not None})
    return scalars
