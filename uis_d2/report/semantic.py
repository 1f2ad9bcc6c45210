"""The semantic pipelines' results as a table, colour maps and an offline page.

Each stage of tools/run_semantic_pipeline.py (initial pseudo-labels, the instance model's
confident maps, each DeepLab round) has evaluator outputs (uis_d2/evaluation/semantic.py:
``semantic_metrics.json`` and a confusion-matrix PNG per matching); this gathers their Hungarian
mIoU and pixel accuracy, the clustering's pseudo-class accuracy, and draws ground truth |
pseudo-labels | prediction colour maps of a few training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from uis_d2.data.image_io import read_image
from uis_d2.data.semantic import IGNORE_LABEL, read_label_png, semantic_map
from uis_d2.report.page import write_report
from uis_d2.utils.files import read_json

STAGE_KEYS = ["train mIoU", "train pACC", "val mIoU", "val pACC"]


def label_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB: black background, distinct hues for the classes."""
    colours = np.zeros((count, 3), np.uint8)
    for index in range(1, count):
        hue = np.uint8(180 * (index - 1) / max(count - 1, 1))
        colours[index] = cv2.cvtColor(np.array([[[hue, 200, 230]]], np.uint8), cv2.COLOR_HSV2RGB)[
            0, 0
        ]
    return colours


def colour_map(labels: np.ndarray, mapping: list[int] | None, count: int) -> np.ndarray:
    """An (H, W) id map as RGB: ids first renamed to classes by ``mapping`` (id -> class,
    -1 unmatched: grey), ignored pixels white."""
    colours = label_colours(count)
    if mapping is not None:
        lookup = np.asarray([m if m >= 0 else count for m in mapping] + [count] * 256)[:256]
        labels = np.where(labels == IGNORE_LABEL, IGNORE_LABEL, lookup[labels])
    out = np.full((*labels.shape, 3), 128, np.uint8)
    for value in range(count):
        out[labels == value] = colours[value]
    out[labels == IGNORE_LABEL] = 255
    return out


def stage_rows(stages: dict[str, dict[str, Path]]) -> dict[str, dict[str, float | None]]:
    """Hungarian mIoU and pixel accuracy of every stage on each split it was evaluated on."""
    rows = {}
    for stage, splits in stages.items():
        row: dict[str, float | None] = dict.fromkeys(STAGE_KEYS)
        for split, metrics_file in splits.items():
            hungarian = read_json(metrics_file)["matchings"]["hungarian"]
            row[f"{split} mIoU"] = hungarian["mIoU"]
            row[f"{split} pACC"] = hungarian["pACC"]
        rows[stage] = row
    return rows


def hungarian_mapping(metrics_file: Path) -> list[int]:
    return read_json(metrics_file)["matchings"]["hungarian"]["mapping"]


def write_map_grid(
    out: Path, dataset: str, columns: dict[str, tuple[Path, list[int]]], count: int, num: int
) -> list[Path]:
    """One PNG per image (the first ``num`` of ``dataset``): image | ground truth | each folder
    of ``columns`` (maps named like the images, drawn with their stage's id -> class mapping)."""
    records = DatasetCatalog.get(dataset)[:num]
    image_root = Path(MetadataCatalog.get(dataset).image_root)
    written = []
    for record in records:
        relative = Path(record["file_name"]).relative_to(image_root).with_suffix(".png")
        gt = semantic_map(record)
        panels = [read_image(record["file_name"]), colour_map(gt, None, count)]
        for folder, mapping in columns.values():
            path = folder / relative
            labels = read_label_png(path) if path.is_file() else np.zeros_like(gt)
            if labels.shape != gt.shape:
                labels = cv2.resize(labels, gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
            panels.append(colour_map(labels, mapping, count))
        gap = np.full((gt.shape[0], 4, 3), 255, np.uint8)
        row = np.concatenate([p for panel in panels for p in (panel, gap)], axis=1)
        path = out / f"{relative.stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written


def write_semantic_report(
    out: Path, p: Any, clustered: Path, stages: dict[str, dict[str, Path]], num_maps: int = 6
) -> dict[str, Any]:
    """OUT/semantic.html and the summary that goes to OUT/semantic_metrics.json."""
    rows = stage_rows(stages)
    clustering_file = clustered.with_name(clustered.stem + ".metrics.json")
    clustering = read_json(clustering_file) if clustering_file.is_file() else None
    sections = [
        (
            f"Confusion ({stage}, {split}, Hungarian matching)",
            sorted(Path(metrics).parent.glob("semantic_confusion_hungarian.png")),
        )
        for stage, splits in stages.items()
        for split, metrics in splits.items()
    ]
    maps = {
        stage: (
            out / folder,
            read_json(stages[stage]["train"])["matchings"]["hungarian"]["mapping"],
        )
        for stage, folder in (
            ("initial pseudo-labels", "maps_initial"),
            ("instance model (confident maps)", "maps_confident"),
            ("DeepLab round 1", "semantic/round1/labels"),
        )
        if stage in stages and "train" in stages[stage] and (out / folder).is_dir()
    }
    if maps and p.EVAL.TRAIN_DATASET:
        count = len(MetadataCatalog.get(p.EVAL.TRAIN_DATASET).stuff_classes)
        grid = write_map_grid(out / "maps_grid", p.EVAL.TRAIN_DATASET, maps, count, num_maps)
        titles = " | ".join(["image", "ground truth", *maps])
        sections.insert(0, (f"{titles} (classes matched as in each stage's evaluation)", grid))
    notes = [f"System: {p.SYSTEM}; K = {p.CLUSTERING.NUM_CLUSTERS} pseudo-classes."]
    if clustering is not None:
        notes.append(f"Pseudo-classes against the ground-truth categories: {clustering}")
    per_class = per_class_rows(stages)
    classes = list(next(iter(per_class.values()), {}))
    write_report(
        out,
        rows,
        sections,
        notes,
        keys=STAGE_KEYS,
        heading="Hungarian-matched semantic segmentation, every stage",
        file_name="semantic.html",
        tables=[("Per-class IoU after Hungarian matching (%)", per_class, classes)],
    )
    return {"stages": rows, "per_class_iou": per_class, "clustering": clustering}


def per_class_rows(stages: dict[str, dict[str, Path]]) -> dict[str, dict[str, float | None]]:
    """Per-class IoU of every stage and split ("stage (split)"), None for an absent class."""
    return {
        f"{stage} ({split})": read_json(metrics)["matchings"]["hungarian"]["per_class_iou"]
        for stage, splits in stages.items()
        for split, metrics in splits.items()
    }
