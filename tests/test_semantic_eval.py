"""The unsupervised semantic evaluator, matched instance AP and tools/evaluate_semantic.py."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scripts import load_script
from uis_d2.data.semantic import resize_labels, semantic_map
from uis_d2.data.semantic_datasets import LabelFolderFiles, register_semantic_labels
from uis_d2.evaluation.cluster_matching import accumulate_confusion
from uis_d2.evaluation.matched_ap import mapping_from_semantic, matched_instance_ap
from uis_d2.evaluation.semantic import (
    CONFUSION_FILE,
    METRICS_FILE,
    UnsupervisedSemSegEvaluator,
    check_evaluation_split,
)
from uis_d2.utils.masks import mask_to_rle

CLASSES = ["background", "a", "b", "c"]  # C = 3


@pytest.fixture
def tiny_split(tmp_path: Path):
    """A registered label-folder split 'tiny_val_sem' of three random 12 x 15 maps (with 255)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "labels"
    folder.mkdir()
    for i in range(3):
        labels = rng.integers(0, 4, size=(12, 15)).astype(np.uint8)
        labels[rng.random(labels.shape) < 0.1] = 255
        Image.fromarray(labels).save(folder / f"{i}.png")
    register_semantic_labels("tiny_val_sem", LabelFolderFiles(str(folder)), CLASSES)
    yield "tiny_val_sem"
    DatasetCatalog.remove("tiny_val_sem")
    MetadataCatalog.remove("tiny_val_sem")


def _one_hot(ids: np.ndarray, num_ids: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(ids), num_ids).permute(2, 0, 1).float()


def test_a_permuted_perfect_prediction_scores_100(tiny_split: str, tmp_path: Path):
    permutation = np.array([2, 0, 3, 1])  # background predicted as id 2, class 1 as 0, ...
    out = tmp_path / "out"
    evaluator = UnsupervisedSemSegEvaluator(
        tiny_split, num_clusters=3, matchings=("hungarian", "majority", "precision"),
        output_dir=out,
    )  # fmt: skip
    evaluator.reset()
    for record in DatasetCatalog.get(tiny_split):
        gt = semantic_map(record)
        ids = permutation[np.where(gt == 255, 0, gt)]  # any id under the ignored pixels
        evaluator.process([{"file_name": record["file_name"]}], [{"sem_seg": _one_hot(ids, 4)}])
    results = evaluator.evaluate()
    for method in ("hungarian", "majority", "precision"):
        assert results[f"sem_seg_{method}"]["mIoU"] == pytest.approx(100.0)
        assert results[f"sem_seg_{method}"]["pACC"] == pytest.approx(100.0)
        assert results[f"sem_seg_{method}"]["discovered"] == 4
        assert (out / CONFUSION_FILE.format(matching=method)).stat().st_size > 0
    summary = json.loads((out / METRICS_FILE).read_text())
    assert summary["split"] == tiny_split and summary["eval_size"] == "original"
    assert summary["num_images"] == 3 and summary["num_clusters"] == 3
    assert summary["matchings"]["hungarian"]["mapping"] == [1, 3, 0, 2]  # inverse permutation


def _numpy_miou(pred: np.ndarray, gt: np.ndarray, mapping: list[int]) -> float:
    """mIoU computed directly from the pixels, for classes present or predicted."""
    valid = gt != 255
    mapped = np.asarray(mapping)[pred]  # -1 for unmatched ids: no class
    ious = []
    for c in range(len(CLASSES)):
        p, g = (mapped == c) & valid, (gt == c) & valid
        if (p | g).any():
            ious.append((p & g).sum() / (p | g).sum())
    return 100 * float(np.mean(ious))


def _evaluate(evaluator: UnsupervisedSemSegEvaluator, out: Path) -> tuple[dict, dict]:
    """The evaluator's results and the summary it wrote to ``out``."""
    results = evaluator.evaluate()
    return results, json.loads((out / METRICS_FILE).read_text())


@pytest.mark.parametrize("method", ["hungarian", "majority", "precision"])
def test_scores_equal_a_direct_numpy_computation(tiny_split: str, method: str, tmp_path: Path):
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 4, size=(20, 30)) for _ in range(3)]
    gts[0][:5] = 255
    noisy = [np.where(rng.random(g.shape) < 0.6, g, rng.integers(0, 5, g.shape)) for g in gts]
    preds = [np.minimum(p, 4) + 1 for p in noisy]  # ids 1..5 (K = 5), 0 never predicted
    evaluator = UnsupervisedSemSegEvaluator(
        tiny_split, num_clusters=5, matchings=(method,), output_dir=tmp_path
    )
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        evaluator.add_image(pred, gt, f"image {i}")
    results, summary = _evaluate(evaluator, tmp_path)
    results = results[f"sem_seg_{method}"]
    mapping = summary["matchings"][method]["mapping"]
    pred, gt = np.concatenate([p.ravel() for p in preds]), np.concatenate([g.ravel() for g in gts])
    assert results["mIoU"] == pytest.approx(_numpy_miou(pred, gt, mapping))
    valid = gt != 255
    accuracy = 100 * (np.asarray(mapping)[pred] == gt)[valid].mean()
    assert results["pACC"] == pytest.approx(accuracy)


def test_training_splits_are_refused_unless_allowed(tmp_path: Path):
    with pytest.raises(ValueError, match="'synthetic_train_sem' looks like a training split"):
        UnsupervisedSemSegEvaluator("synthetic_train_sem")
    with pytest.raises(ValueError, match="training split"):
        check_evaluation_split("uis_voc2012_trainaug_sem")
    evaluator = UnsupervisedSemSegEvaluator(
        "synthetic_train_sem", num_clusters=6, allow_train_split=True, output_dir=tmp_path,
        distributed=False,
    )  # fmt: skip
    evaluator.add_image(np.zeros((4, 4), int), np.zeros((4, 4), np.uint8), "x")
    evaluator.evaluate()
    assert json.loads((tmp_path / METRICS_FILE).read_text())["split"] == "synthetic_train_sem"


def test_fixed_size_evaluation_resizes_both_maps(tiny_split: str, tmp_path: Path):
    rng = np.random.default_rng(2)
    pred, gt = rng.integers(0, 4, size=(8, 8)), rng.integers(0, 4, size=(6, 9)).astype(np.uint8)
    evaluator = UnsupervisedSemSegEvaluator(
        tiny_split, num_clusters=3, eval_size=4, output_dir=tmp_path
    )
    evaluator.add_image(pred, gt, "x")
    _, summary = _evaluate(evaluator, tmp_path)
    expected = np.zeros((4, 4), np.int64)
    accumulate_confusion(expected, resize_labels(pred, (4, 4)), resize_labels(gt, (4, 4)))
    assert summary["confusion"] == expected.tolist()
    assert summary["eval_size"] == [4, 4]
    # at the original size a prediction of another size is resized to the ground truth
    original = UnsupervisedSemSegEvaluator(tiny_split, num_clusters=3, output_dir=tmp_path)
    original.add_image(pred, gt, "x")
    _, summary = _evaluate(original, tmp_path)
    expected = np.zeros((4, 4), np.int64)
    accumulate_confusion(expected, resize_labels(pred, gt.shape), gt)
    assert summary["confusion"] == expected.tolist() and summary["eval_size"] == "original"


def test_ids_outside_the_range_and_unknown_classes_are_clear_errors(tiny_split: str):
    evaluator = UnsupervisedSemSegEvaluator(tiny_split, num_clusters=3)
    gt = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"img\.png: predicted id 0\.\.4 outside 0\.\.3"):
        evaluator.add_image(np.array([[0, 4], [1, 1]]), gt, "img.png")
    with pytest.raises(ValueError, match=r"img\.png: predicted id -1\.\."):
        evaluator.add_image(np.array([[0, -1], [1, 1]]), gt, "img.png")
    with pytest.raises(ValueError, match=r"ground-truth class 0\.\.9 outside 0\.\.3"):
        evaluator.add_image(np.zeros((2, 2), int), np.array([[0, 9], [255, 1]]), "img.png")
    with pytest.raises(ValueError, match=r"a\.png: 5 score maps, expected K \+ 1 = 4"):
        evaluator.process([{"file_name": "a.png"}], [{"sem_seg": torch.zeros(5, 2, 2)}])
    with pytest.raises(ValueError, match="integer id map"):
        evaluator.process([{"file_name": "a.png"}], [{"sem_seg": torch.zeros(2, 2)}])


def test_k_is_taken_from_the_largest_id_when_not_given(tiny_split: str, tmp_path: Path):
    evaluator = UnsupervisedSemSegEvaluator(
        tiny_split, matchings=("majority",), output_dir=tmp_path
    )
    evaluator.add_image(np.array([[0, 2]]), np.array([[0, 1]], np.uint8), "x")
    evaluator.add_image(np.array([[7, 0]]), np.array([[3, 0]], np.uint8), "y")
    results, summary = _evaluate(evaluator, tmp_path)  # gathered over a world of one
    assert (summary["num_clusters"], summary["num_clusters_from"]) == (7, "largest id")
    assert summary["matchings"]["majority"]["per_class_iou"]["b"] is None  # neither present
    assert results["sem_seg_majority"]["mIoU"] == pytest.approx(100.0)


# ---- matched instance AP


CATEGORY_IDS = [2, 5, 9]


def _instance_case() -> tuple[dict, list[dict]]:
    """Ground truth of 6 images with 2-3 objects each, and correctly labelled predictions:
    shifted copies of the objects with random scores, a few misnamed duplicates and some
    false positives on the background."""
    rng = np.random.default_rng(3)
    images, annotations, predictions = [], [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 48, "width": 64})
        for slot in range(rng.integers(2, 4)):
            mask = np.zeros((48, 64), bool)
            y, x = rng.integers(2, 20), 20 * slot + rng.integers(0, 4)
            mask[y : y + rng.integers(8, 20), x : x + rng.integers(8, 16)] = True
            category = int(rng.choice(CATEGORY_IDS))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "iscrowd": 0,
                    "segmentation": mask_to_rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in (x, y, mask.any(0).sum(), mask.any(1).sum())],
                }
            )
            shifted = np.roll(mask, (rng.integers(0, 3), rng.integers(0, 3)), axis=(0, 1))
            predictions.append((image_id, category, shifted, rng.uniform(0.3, 1.0)))
            if rng.random() < 0.3:  # a misnamed, less confident duplicate
                wrong = CATEGORY_IDS[(CATEGORY_IDS.index(category) + 1) % 3]
                predictions.append((image_id, wrong, mask, rng.uniform(0.0, 0.3)))
        background = np.zeros((48, 64), bool)
        background[40:46, 58:63] = True
        predictions.append((image_id, int(rng.choice(CATEGORY_IDS)), background, 0.5))
    gt = {"images": images, "annotations": annotations, "categories": []}
    gt["categories"] = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    results = [
        {"image_id": i, "category_id": c, "segmentation": mask_to_rle(m), "score": float(s)}
        for i, c, m, s in predictions
    ]
    return gt, results


def _cocoeval_stats(gt: dict, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return 100 * coco_eval.stats


def test_matched_ap_equals_class_aware_ap_after_a_known_relabelling():
    gt, correct = _instance_case()
    # cluster id = (class + 1) % C, class = the category's index in ascending id order
    clusters = [
        {**r, "category_id": (CATEGORY_IDS.index(r["category_id"]) + 1) % 3} for r in correct
    ]
    report = matched_instance_ap(gt, clusters, split_name="case_val")
    assert report["mapping"] == {"0": "class9", "1": "class2", "2": "class5"}
    assert report["dropped_predictions"] == 0
    expected = _cocoeval_stats(gt, correct)
    assert 20 < expected[0] < 95  # the case is neither trivial nor hopeless
    multi = report["multi"]["segm"]
    for key, value in zip(("AP", "AP50", "AP75"), expected):
        assert multi[key] == pytest.approx(value)


def test_single_protocol_keeps_the_most_confident_prediction_per_image():
    gt, correct = _instance_case()
    top = {}
    for r in correct:
        if r["image_id"] not in top or r["score"] > top[r["image_id"]]["score"]:
            top[r["image_id"]] = r
    # make every top prediction an exact copy of an object: one object per image is matched
    by_image = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], ann)
    for image_id, r in top.items():
        r["segmentation"], r["category_id"] = (
            by_image[image_id]["segmentation"],
            by_image[image_id]["category_id"],
        )
    identity = {c: c for c in CATEGORY_IDS}
    report = matched_instance_ap(gt, correct, identity, protocols=("single",), split_name="v")
    assert report["mapping_from"] == "given" and "multi" not in report
    assert report["single"]["segm"]["AP"] == pytest.approx(100.0)
    chosen = {**gt, "annotations": list(by_image.values())}
    assert report["single"]["segm"]["AP"] == pytest.approx(
        _cocoeval_stats(chosen, list(top.values()))[0]
    )
    # a cluster mapped to nothing drops its predictions
    dropped = matched_instance_ap(gt, correct, {2: 2, 5: 5, 9: None}, split_name="v")
    assert dropped["dropped_predictions"] == sum(r["category_id"] == 9 for r in correct)


def test_matched_ap_mapping_from_a_semantic_evaluation_and_its_checks():
    # semantic ids 0..3: background, then clusters 0, 1, 2 matched to classes 3, 0, 1
    assert mapping_from_semantic([0, 3, 0, 1], [9, 2, 5]) == {0: 9, 1: None, 2: 2}
    gt, correct = _instance_case()
    with pytest.raises(ValueError, match="training split"):
        matched_instance_ap(gt, correct, split_name="coco_train2017")
    with pytest.raises(ValueError, match=r"categories \[4\], not in the ground truth"):
        matched_instance_ap(gt, correct, {2: 4}, split_name="v")
    with pytest.raises(ValueError, match="integer 'category_id'"):
        matched_instance_ap(gt, [{**correct[0], "category_id": None}], split_name="v")


# ---- tools/evaluate_semantic.py


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/evaluate_semantic.py")


def test_tool_scores_permuted_ground_truth_100_end_to_end(
    training_datasets: Path, tool, tmp_path: Path, capsys
):
    permutation = np.array([0, 3, 1, 2, 6, 4, 5])  # ids of background and the six classes
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for record in DatasetCatalog.get("synthetic_val_sem"):
        labels = semantic_map(record)
        Image.fromarray(permutation[labels].astype(np.uint8)).save(
            predictions / Path(record["file_name"]).name  # the images are PNGs already
        )
    out = tmp_path / "out"
    argv = ["--pred", str(predictions), "--dataset", "synthetic_val_sem", "--out", str(out)]
    assert tool.main([*argv, "--matching", "hungarian", "majority", "--num-clusters", "6"]) == 0
    summary = json.loads((out / METRICS_FILE).read_text())
    assert summary["split"] == "synthetic_val_sem"
    assert summary["matchings"]["hungarian"]["mIoU"] == pytest.approx(100.0)
    assert summary["matchings"]["majority"]["mIoU"] == pytest.approx(100.0)
    assert "hungarian   100.00  100.00" in capsys.readouterr().out
    assert tool.main([*argv, "--eval-size", "32"]) == 0
    summary = json.loads((out / METRICS_FILE).read_text())
    assert summary["eval_size"] == [32, 32]
    assert summary["matchings"]["hungarian"]["mIoU"] == pytest.approx(100.0)

    assert tool.main([*argv, "--num-clusters", "2"]) == 1
    assert "outside 0..2" in capsys.readouterr().err
    train = ["--pred", str(predictions), "--dataset", "synthetic_train_sem", "--out", str(out)]
    assert tool.main(train) == 1
    assert "looks like a training split" in capsys.readouterr().err


def test_tool_on_an_instance_json_with_cluster_ids(training_datasets: Path, tool, tmp_path: Path):
    val_json = training_datasets / "synthetic/annotations/val.json"
    coco = json.loads(val_json.read_text())
    results = [
        {
            "image_id": a["image_id"],
            "category_id": (a["category_id"] + 2) % 6,  # cluster ids 0..5
            "segmentation": a["segmentation"],
            "score": 0.9,
        }
        for a in coco["annotations"]
    ]
    pred = tmp_path / "results.json"
    pred.write_text(json.dumps(results))
    out = tmp_path / "out"
    assert tool.main(["--pred", str(pred), "--gt", str(val_json), "--out", str(out)]) == 0
    summary = json.loads((out / METRICS_FILE).read_text())
    assert summary["split"] == "val" and summary["num_clusters"] <= 6
    assert summary["matchings"]["hungarian"]["mIoU"] == pytest.approx(100.0)
    report = json.loads((out / "matched_ap.json").read_text())
    assert report["multi"]["segm"]["AP"] == pytest.approx(100.0)
    assert report["single"]["segm"]["AP"] == pytest.approx(100.0)
