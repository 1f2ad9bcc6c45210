"""Foreground Jaccard and boundary F1 on hand-made maps, the ground-truth union, and
tools/evaluate_foreground.py end to end on a few synthetic images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2)
from scripts import load_script
from uis_d2.evaluation.foreground import (
    ForegroundCounts,
    boundary,
    foreground_counts,
    ground_truth_union,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]


def _square_and_left_half() -> tuple[np.ndarray, np.ndarray]:
    """GT: the 10 x 10 square at rows/columns 5-14 of a 20 x 20 image; prediction: its left
    half (columns 5-9)."""
    gt = np.zeros((20, 20), dtype=bool)
    gt[5:15, 5:15] = True
    pred = np.zeros_like(gt)
    pred[5:15, 5:10] = True
    return pred, gt


def test_jaccard_and_boundary_f1_of_a_hand_made_case():
    pred, gt = _square_and_left_half()
    # Boundaries: the GT ring has 36 pixels; the 10 x 5 prediction 50 - 8 * 3 = 26.
    assert boundary(gt).sum() == 36 and boundary(pred).sum() == 26
    exact = foreground_counts(pred, gt, tolerance=0)
    assert exact.jaccard == 50 / 100
    # At tolerance 0 the shared pixels match: the left column (10) and columns 6-9 of the top
    # and bottom rows (4 + 4), 18 on each side: P = 18/26, R = 18/36, F1 = 36/62.
    assert (exact.boundary_pred_matched, exact.boundary_gt_matched) == (18, 18)
    assert exact.boundary_f1 == pytest.approx(18 / 31)
    # Within 3 px: the prediction's right column (column 9, rows 6-13) is 1-3 px from the
    # top/bottom rows except rows 9-10 (4 px): 24 of 26. GT pixels within 3 px of the
    # prediction: left column 10, top and bottom rows up to column 12 (7 + 7): 24 of 36.
    near = foreground_counts(pred, gt, tolerance=3)
    assert (near.boundary_pred_matched, near.boundary_gt_matched) == (24, 24)
    assert near.boundary_precision == pytest.approx(24 / 26)
    assert near.boundary_recall == pytest.approx(24 / 36)
    assert near.boundary_f1 == pytest.approx(24 / 31)


def test_empty_maps_and_the_image_border():
    empty, full = np.zeros((6, 7), dtype=bool), np.ones((6, 7), dtype=bool)
    both_empty = foreground_counts(empty, empty, 3)
    assert both_empty.jaccard == 1.0 and both_empty.boundary_f1 == 1.0
    missed = foreground_counts(empty, full, 3)
    assert missed.jaccard == 0.0
    # The image border is no boundary: a full map has none, so these boundaries are empty too.
    assert boundary(full).sum() == 0 and missed.boundary_f1 == 1.0
    pred, gt = _square_and_left_half()
    none_predicted = foreground_counts(np.zeros_like(gt), gt, 3)
    assert none_predicted.jaccard == 0.0 and none_predicted.boundary_f1 == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        foreground_counts(pred, gt[:5], 3)


def test_dataset_figures_pool_the_counts_and_average_the_images():
    big = ForegroundCounts(50, 100, 10, 10, 10, 5)  # J 0.5, P 1, R 0.5
    small = ForegroundCounts(0, 10, 0, 0, 10, 0)  # J 0, nothing predicted
    result = summarize([big, small])
    assert result["jaccard"] == pytest.approx(50 / 110)
    assert result["mean_jaccard"] == pytest.approx(0.25)
    assert result["boundary_precision"] == 1.0 and result["boundary_recall"] == 5 / 20
    assert result["boundary_f1"] == pytest.approx(2 * 0.25 / 1.25)
    assert result["mean_boundary_f1"] == pytest.approx((2 * 0.5 / 1.5 + 0.0) / 2)
    assert result["num_images"] == 2


def test_ground_truth_union_of_polygons_rles_and_crowds():
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((2, 2), np.uint8), ((6, 0), (6, 0)))))
    rle["counts"] = rle["counts"].decode("ascii")
    record = {
        "file_name": "x.png",
        "height": 8,
        "width": 8,
        "annotations": [
            {"segmentation": [[0, 0, 4, 0, 4, 2, 0, 2]], "iscrowd": 0},  # rows 0-1, cols 0-3
            {"segmentation": rle, "iscrowd": 1},  # rows 6-7, cols 6-7: counted
        ],
    }
    union = ground_truth_union(record)
    assert union.shape == (8, 8) and union.sum() == 8 + 4
    assert union[:2, :4].all() and union[6:, 6:].all()
    record["annotations"].append({"bbox": [0, 0, 1, 1], "iscrowd": 0})
    with pytest.raises(ValueError, match="x.png: an annotation has no segmentation"):
        ground_truth_union(record)


# --- the tool ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Three synthetic validation images, and a folder of saliency maps equal to their ground
    truth, one of them missing."""
    from uis_d2.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("datasets")
    paths = generate_synthetic_dataset(root / "synthetic", num_train=0, num_val=3, seed=0)
    coco = json.loads(Path(paths["val_json"]).read_text())
    for image in coco["images"][:2]:  # the third has no map
        record = {
            "file_name": image["file_name"],
            "height": image["height"],
            "width": image["width"],
            "annotations": [a for a in coco["annotations"] if a["image_id"] == image["id"]],
        }
        maps = root / "maps"
        maps.mkdir(exist_ok=True)
        Image.fromarray(ground_truth_union(record).astype(np.uint8) * 255).save(
            maps / image["file_name"]
        )
    return root


def _run(args: list[str]) -> int:
    module = load_script("tools/evaluate_foreground.py")
    config = str(REPO / "configs/proposals/synthetic.yaml")
    return module.main(["--config-file", config, *args])


def test_the_tool_writes_table_csv_json_and_grid(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic))
    out = tmp_path / "out"
    code = _run(
        ["--dataset", "synthetic_val", "--providers", "SpectralBorder", "ExternalMaps"]
        + ["--combine", "union", "--out", str(out), "--grid", "2"]
        + ["PROPOSALS.FOREGROUND.EXTERNAL.DIR", str(synthetic / "maps")]
        + ["PROPOSALS.FOREGROUND.EXTERNAL.MIN_PIXELS", "0", "MODEL.DEVICE", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    names = ["SpectralBorder", "ExternalMaps", "SpectralBorder|ExternalMaps"]
    assert all(name in printed for name in names) and "J pooled" in printed

    report = json.loads((out / "foreground.json").read_text())
    assert list(report["results"]) == names
    assert report["boundary_tolerance_px"] == 3.0 and "crowd" in report["ground_truth"]
    # The maps are the ground truth: perfect on two images; the third has no map (empty).
    external = report["per_image"]["ExternalMaps"]
    assert [(r["jaccard"], r["boundary_f1"]) for r in external] == [(1, 1), (1, 1), (0, 0)]
    assert report["results"]["ExternalMaps"]["mean_jaccard"] == pytest.approx(2 / 3)
    # Where the external map is empty, the union is the spectral map alone.
    spectral = report["per_image"]["SpectralBorder"]
    combined = report["per_image"]["SpectralBorder|ExternalMaps"]
    assert 0 < report["results"]["SpectralBorder"]["jaccard"] < 1
    assert combined[2] == spectral[2] and [r["image_id"] for r in spectral] == [1, 2, 3]

    with (out / "foreground.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["provider"] for row in rows] == names
    assert float(rows[1]["jaccard"]) == pytest.approx(report["results"]["ExternalMaps"]["jaccard"])
    grid = Image.open(out / "foreground_grid.png")
    assert grid.width > 2 * grid.height  # 2 rows of 5 panels: image, GT, 3 maps


def test_the_tool_reads_a_gt_file_and_stops_at_a_missing_map_under_fail(
    synthetic, tmp_path, capsys
):
    common = ["--gt", str(synthetic / "synthetic/annotations/val.json")]
    common += ["--images", str(synthetic / "synthetic/val"), "--providers", "ExternalMaps"]
    common += ["PROPOSALS.FOREGROUND.EXTERNAL.DIR", str(synthetic / "maps")]
    assert _run([*common, "--out", str(tmp_path / "ok"), "--limit", "2", "--grid", "0"]) == 0
    report = json.loads((tmp_path / "ok/foreground.json").read_text())
    assert report["results"]["ExternalMaps"]["num_images"] == 2
    assert not (tmp_path / "ok/foreground_grid.png").exists()
    code = _run([*common, "--out", str(tmp_path / "fail"), "INPUT.BAD_IMAGE_POLICY", "fail"])
    assert code == 1
    assert "maps/000002.png: image file not found" in capsys.readouterr().err
    assert not (tmp_path / "fail").exists()
