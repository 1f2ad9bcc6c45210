"""Class-agnostic COCO evaluation, the detectron2 evaluator and recall by instance count."""

from __future__ import annotations

# isort: off
import uis_d2  # noqa: F401  (compat fixes before any detectron2 import)

# isort: on
import contextlib
import io
import json
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from evaluation_cases import (
    COUNT_EXPECTED_AR,
    COUNT_EXPECTED_INSTANCES,
    PARTIAL_EXPECTED,
    count_case,
    partial_case,
    random_case,
    rect_mask,
    result,
)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from uis_d2.config import load_config
from uis_d2.engine import Trainer
from uis_d2.evaluation.coco_agnostic import METRIC_KEYS, evaluate_agnostic
from uis_d2.evaluation.evaluator import METRICS_FILE, PREDICTIONS_FILE, ClassAgnosticEvaluator
from uis_d2.evaluation.recall_by_count import (
    count_bucket,
    greedy_matched_ious,
    recall_by_instance_count,
)
from uis_d2.utils.masks import masks_to_boxes_xyxy, rle_to_mask, to_compressed_rle


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def direct_cocoeval(gt_file: str, results: list[dict], iou_type: str) -> dict[str, float]:
    """Reference: plain pycocotools with useCats=0. segm results lose their box (as in
    detectron2's COCOEvaluator) so their area, used for the size ranges, is the mask's."""
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_file)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), iou_type)
        coco_eval.params.useCats = 0
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {k: v * 100 if v >= 0 else math.nan for k, v in zip(METRIC_KEYS, coco_eval.stats)}


def assert_metrics_equal(actual: dict, expected: dict, tol: float = 1e-9) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=tol), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_direct_pycocotools(tmp_path, seed):
    gt, predictions = random_case(seed)
    gt_file = write_json(tmp_path / "gt.json", gt)
    pred_file = write_json(tmp_path / "pred.json", predictions)
    metrics = evaluate_agnostic(gt_file, pred_file)
    for iou_type in ("segm", "bbox"):
        assert_metrics_equal(metrics[iou_type], direct_cocoeval(gt_file, predictions, iou_type))
    assert 0 < metrics["segm"]["AR100"] < 100  # the case is neither trivial nor empty


def test_perfect_predictions_with_wrong_categories_score_100():
    gt, _ = random_case(3)
    gt["annotations"] = [a | {"iscrowd": 0} for a in gt["annotations"]]
    predictions = [
        {"image_id": a["image_id"], "category_id": 3, "segmentation": a["segmentation"]}
        for a in gt["annotations"]
        if a["category_id"] != 3
    ]
    predictions += [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.5,
         "segmentation": a["segmentation"]}
        for a in gt["annotations"]
        if a["category_id"] == 3
    ]  # fmt: skip
    metrics = evaluate_agnostic(gt, predictions)
    for iou_type in ("segm", "bbox"):
        for key in ("AP", "AP50", "AP75", "AR10", "AR100"):  # AR1 < 100: several per image
            assert metrics[iou_type][key] == pytest.approx(100.0), (iou_type, key)


def test_partial_case_matches_hand_computed_values():
    gt, predictions = partial_case()
    for iou_type, values in evaluate_agnostic(gt, predictions).items():
        assert_metrics_equal(values, PARTIAL_EXPECTED, tol=1e-6)
        assert math.isnan(values["APl"]) and math.isnan(values["ARl"]), iou_type


def test_faster_backend_gives_the_same_numbers():
    pytest.importorskip("faster_coco_eval")
    cases = [random_case(seed) for seed in range(4)] + [partial_case(), (random_case(5)[0], [])]
    for gt, predictions in cases:
        reference = evaluate_agnostic(gt, predictions, backend="pycocotools")
        fast = evaluate_agnostic(gt, predictions, backend="faster")
        for iou_type in reference:
            assert_metrics_equal(fast[iou_type], reference[iou_type], tol=1e-9)


def test_empty_predictions_give_zeros():
    gt, _ = partial_case()
    metrics = evaluate_agnostic(gt, [])
    for values in metrics.values():
        assert all(values[k] == 0.0 for k in METRIC_KEYS if k not in ("APl", "ARl"))


def test_pseudo_label_dict_scores_default_to_one(tmp_path):
    gt, predictions = partial_case()
    stray = rect_mask(128, 128, (100, 120), (0, 30))
    pseudo = {
        "images": gt["images"],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            {k: v for k, v in result(1, stray).items() if k != "score"} | {"emb": [0.1], "k": 3},
            predictions[0] | {"score": 0.5},
        ],
    }
    metrics = evaluate_agnostic(write_json(tmp_path / "gt.json", gt), pseudo)
    # the unscored false positive (score 1.0) ranks first: precision 1/2 when the small object
    # is found at recall 1/2, so AP = 0.5 * 51/101 (it would be 51/101 with a default below 0.5)
    assert metrics["segm"]["AP"] == pytest.approx(100 * 0.5 * 51 / 101)
    assert metrics["segm"]["AR100"] == pytest.approx(50.0)


def test_unknown_image_id_is_named():
    gt, predictions = partial_case()
    with pytest.raises(ValueError, match="not in the ground truth: 77"):
        evaluate_agnostic(gt, predictions + [result(77, rect_mask(8, 8, (0, 2), (0, 2)))])


def test_mask_of_the_wrong_size_is_named():
    gt, _ = partial_case()
    with pytest.raises(ValueError, match=r"prediction 0 has a \[64, 128\] mask for image 1"):
        evaluate_agnostic(gt, [result(1, rect_mask(64, 128, (0, 9), (0, 9)))])


def test_bad_inputs_name_the_file(tmp_path):
    gt, predictions = partial_case()
    gt_file = write_json(tmp_path / "gt.json", gt)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        evaluate_agnostic(gt_file, broken)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        evaluate_agnostic(tmp_path / "absent.json", predictions)
    with pytest.raises(ValueError, match="'annotations'"):
        evaluate_agnostic({"images": gt["images"]}, predictions)


def test_to_compressed_rle_accepts_every_coco_form():
    mask = rect_mask(12, 10, (2, 6), (3, 8))
    rle = to_compressed_rle(result(1, mask)["segmentation"], 12, 10)
    polygon = to_compressed_rle([[3.0, 2.0, 8.0, 2.0, 8.0, 6.0, 3.0, 6.0]], 12, 10)
    column_runs = [38, 4, 8, 4, 8, 4, 8, 4, 8, 4, 30]  # column-major runs, zeros first
    uncompressed = to_compressed_rle({"size": [12, 10], "counts": column_runs}, 12, 10)
    for converted in (rle, polygon, uncompressed):
        assert isinstance(converted["counts"], str)
        assert np.array_equal(rle_to_mask(converted), mask)


# --- ClassAgnosticEvaluator ---


def fake_output(masks: list[np.ndarray], scores: list[float], with_boxes: bool) -> dict:
    instances = Instances(masks[0].shape if masks else (128, 128))
    stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, 128, 128), dtype=bool)
    instances.pred_masks = stacked
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    if with_boxes:
        instances.pred_boxes = Boxes(masks_to_boxes_xyxy(stacked))
    return {"instances": instances}


def registered_dataset(gt: dict, gt_file: str | None) -> str:
    """A uniquely named dataset, with a json_file in its metadata or only thing_classes."""
    name = f"uis_test_agnostic_{uuid.uuid4().hex[:8]}"
    dicts = [
        {
            "file_name": image["file_name"],
            "image_id": image["id"],
            "height": image["height"],
            "width": image["width"],
            "annotations": [
                {**a, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
                for a in gt["annotations"]
                if a["image_id"] == image["id"]
            ],
        }
        for image in gt["images"]
    ]
    DatasetCatalog.register(name, lambda: dicts)
    if gt_file is not None:
        MetadataCatalog.get(name).set(json_file=gt_file)
    else:
        MetadataCatalog.get(name).set(thing_classes=["object"])
    return name


def test_an_instance_model_on_a_semantic_split_writes_predictions_only(tmp_path):
    """MaskDistill paints an instance model's predictions of VOC train_aug, a semantic split:
    the Trainer's evaluator there writes them without scoring against missing instances."""
    cfg = load_config("configs/synthetic/mask_rcnn_R18_cpu.yaml")
    evaluator = Trainer.build_evaluator(cfg, "synthetic_val_sem", str(tmp_path / "eval"))
    assert isinstance(evaluator, ClassAgnosticEvaluator)
    masks = [np.zeros((32, 32), bool)]
    masks[0][4:20, 6:30] = True
    evaluator.reset()
    evaluator.process([{"image_id": 7}], [fake_output(masks, [0.8], with_boxes=True)])
    assert evaluator.evaluate() == {}
    written = json.loads((tmp_path / "eval" / PREDICTIONS_FILE).read_text())
    assert [(p["image_id"], p["score"]) for p in written] == [(7, pytest.approx(0.8))]
    assert not (tmp_path / "eval" / METRICS_FILE).exists()


@pytest.mark.parametrize("with_json_file", [True, False])
def test_evaluator_equals_evaluate_agnostic(tmp_path, with_json_file):
    gt, predictions = random_case(4)
    gt_file = write_json(tmp_path / "gt.json", gt)
    name = registered_dataset(gt, gt_file if with_json_file else None)
    evaluator = ClassAgnosticEvaluator(name, output_dir=tmp_path / "eval")
    evaluator.reset()
    for image in gt["images"]:
        own = [p for p in predictions if p["image_id"] == image["id"]]
        masks = [rle_to_mask(p["segmentation"]) for p in own]
        output = fake_output(masks, [p["score"] for p in own], with_boxes=image["id"] % 2 == 0)
        evaluator.process([{"image_id": image["id"]}], [output])
    metrics = evaluator.evaluate()

    expected = evaluate_agnostic(gt_file, predictions)
    assert list(metrics) == ["segm", "bbox"]
    for iou_type in metrics:
        assert_metrics_equal(metrics[iou_type], expected[iou_type])
    written = json.loads((tmp_path / "eval" / METRICS_FILE).read_text())
    assert written["segm"]["AP"] == pytest.approx(metrics["segm"]["AP"])
    assert len(json.loads((tmp_path / "eval" / PREDICTIONS_FILE).read_text())) == len(predictions)


def test_evaluator_without_predictions_reports_zeros(tmp_path):
    gt, _ = partial_case()
    name = registered_dataset(gt, write_json(tmp_path / "gt.json", gt))
    evaluator = ClassAgnosticEvaluator(name)
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [fake_output([], [], with_boxes=True)])
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AR100"] == 0.0 and metrics["bbox"]["AP"] == 0.0


def test_evaluator_perfect_masks_score_100(tmp_path):
    gt, _ = partial_case()
    name = registered_dataset(gt, write_json(tmp_path / "gt.json", gt))
    evaluator = ClassAgnosticEvaluator(name, distributed=False)
    evaluator.reset()
    masks = [rle_to_mask(a["segmentation"]) for a in gt["annotations"]]
    evaluator.process([{"image_id": 1}], [fake_output(masks, [0.3, 0.8], with_boxes=False)])
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert metrics["bbox"]["AR100"] == pytest.approx(100.0)


# --- recall by instance count (Table 1) ---


def test_count_bucket():
    assert [count_bucket(n) for n in (1, 2, 5, 6, 40)] == ["1", "2", "5", "6+", "6+"]
    with pytest.raises(ValueError):
        count_bucket(0)


def test_greedy_matching_is_one_to_one_by_descending_iou():
    # proposal 0 overlaps both instances; the 0.9 pair wins, so instance 1 keeps proposal 1
    iou = np.array([[0.9, 0.8], [0.0, 0.6], [0.7, 0.0]])
    assert np.allclose(greedy_matched_ious(iou, 0.5), [0.9, 0.6])
    assert np.allclose(greedy_matched_ious(iou[:1], 0.5), [0.9, 0.0])
    assert np.allclose(greedy_matched_ious(np.zeros((0, 3)), 0.5), [0, 0, 0])


def test_recall_by_instance_count_hand_case():
    gt, proposals = count_case()
    report = recall_by_instance_count(gt, proposals)
    assert report.num_instances == COUNT_EXPECTED_INSTANCES
    for label, value in COUNT_EXPECTED_AR.items():
        assert report.average_recall[label] == pytest.approx(value), label
    for label in ("3", "4", "5"):
        assert math.isnan(report.average_recall[label])
    assert report.recall_at_iou["2"][0] == pytest.approx(75.0)  # 3 of 4 matched at IoU 0.5
    assert report.recall_at_iou["2"][-1] == pytest.approx(25.0)  # only A at IoU 0.95
    assert report.num_proposals == len(proposals) and report.num_images == 4
