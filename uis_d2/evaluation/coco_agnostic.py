"""Class-agnostic COCO evaluation (papers' protocol): every instance is one class.
(``run_coco_eval`` also runs the class-aware protocol, for matched instance AP.)

``COCOeval.params.useCats = 0`` makes a prediction match any ground-truth object, so the
category ids that pseudo-labels or models emit never matter. Inputs are normalised here (RLE
forms, missing boxes/scores, image ids) so both backends receive the same, valid results.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from uis_d2.data.pseudo_labels import CATEGORIES
from uis_d2.utils.files import read_json
from uis_d2.utils.masks import to_compressed_rle

METRIC_KEYS = [
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
]
IOU_TYPES = ("segm", "bbox")
BACKENDS = ("pycocotools", "faster", "auto")

GroundTruth = str | Path | COCO | Mapping[str, Any]
Predictions = Sequence[Mapping[str, Any]] | Mapping[str, Any] | str | Path


def source_name(obj: Any, default: str) -> str:
    """How errors refer to an input: its path when it came from a file, else ``default``."""
    return str(obj) if isinstance(obj, (str, Path)) else default


def load_ground_truth(gt: GroundTruth) -> dict[str, Any]:
    """A validated COCO dataset dict from a path, a dict or a COCO object.

    Missing ``area``/``iscrowd`` are filled in (COCOeval needs them) on a copy, never in place.
    """
    source = source_name(gt, "ground truth")
    if isinstance(gt, (str, Path)):
        dataset = read_json(gt, "ground-truth file", expect_object=False)
    elif hasattr(gt, "dataset"):  # a pycocotools or faster-coco-eval COCO object
        dataset = gt.dataset
    else:
        dataset = gt
    if not isinstance(dataset, Mapping):
        raise ValueError(f"{source}: expected a COCO json object, got {type(dataset).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: missing or non-list '{key}'")
    sizes = {}
    for index, image in enumerate(dataset["images"]):
        if not all(k in image for k in ("id", "height", "width")):
            raise ValueError(f"{source}: images[{index}] needs 'id', 'height' and 'width'")
        sizes[image["id"]] = (image["height"], image["width"])
    annotations = []
    for index, ann in enumerate(dataset["annotations"]):
        if ann.get("image_id") not in sizes:
            raise ValueError(
                f"{source}: annotations[{index}] has image_id {ann.get('image_id')!r}, "
                "which is not in 'images'"
            )
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = _annotation_area(ann, *sizes[ann["image_id"]])
        annotations.append(ann)
    return {
        **dataset,
        "annotations": annotations,
        # Ground truth without categories: the class-agnostic protocol needs only one.
        "categories": dataset.get("categories") or CATEGORIES,
    }


def _annotation_area(ann: Mapping[str, Any], height: int, width: int) -> float:
    if "segmentation" in ann:
        return float(mask_utils.area(to_compressed_rle(ann["segmentation"], height, width)))
    return float(ann["bbox"][2] * ann["bbox"][3])


def load_predictions(predictions: Predictions) -> list[Mapping[str, Any]]:
    """Raw prediction entries from a results list, a pseudo-label dict or either's json file."""
    source = source_name(predictions, "predictions")
    if isinstance(predictions, (str, Path)):
        predictions = read_json(predictions, "predictions file", expect_object=False)
    if isinstance(predictions, Mapping):
        if not isinstance(predictions.get("annotations"), list):
            raise ValueError(
                f"{source}: a json object of predictions needs an 'annotations' list "
                "(pseudo-label format); otherwise give a COCO results list"
            )
        predictions = predictions["annotations"]
    if not isinstance(predictions, Sequence) or isinstance(predictions, (str, bytes)):
        raise ValueError(f"{source}: expected a list of predictions, got {type(predictions)}")
    return list(predictions)


def normalize_predictions(
    raw: Sequence[Mapping[str, Any]], gt_dataset: Mapping[str, Any], source: str = "predictions"
) -> list[dict[str, Any]]:
    """Fresh result dicts with compressed RLE, a box (from the mask if absent) and a score.

    The category becomes the ground truth's first one: class-agnostic evaluation ignores it, but
    both backends expect an id they know. Extra keys (``emb``, ``k``...) are dropped.
    """
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt_dataset["images"]}
    category_id = gt_dataset["categories"][0]["id"]
    unknown_ids = sorted({str(p.get("image_id")) for p in raw if p.get("image_id") not in sizes})
    if unknown_ids:
        shown = ", ".join(unknown_ids[:10]) + (" ..." if len(unknown_ids) > 10 else "")
        raise ValueError(f"{source}: image ids not in the ground truth: {shown}")
    results = []
    for index, pred in enumerate(raw):
        result = {
            "image_id": pred["image_id"],
            "category_id": category_id,
            "score": float(pred.get("score", 1.0)),
        }
        if "segmentation" in pred:
            try:
                rle = to_compressed_rle(pred["segmentation"], *sizes[pred["image_id"]])
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{source}: prediction {index}: bad segmentation ({e})") from e
            if tuple(rle["size"]) != sizes[pred["image_id"]]:
                raise ValueError(
                    f"{source}: prediction {index} has a {rle['size']} mask for image "
                    f"{pred['image_id']} of size {list(sizes[pred['image_id']])}"
                )
            result["segmentation"] = rle
            result["bbox"] = [float(v) for v in pred.get("bbox", mask_utils.toBbox(rle))]
        elif "bbox" in pred:
            result["bbox"] = [float(v) for v in pred["bbox"]]
        else:
            raise ValueError(f"{source}: prediction {index} has neither 'segmentation' nor 'bbox'")
        results.append(result)
    return results


def evaluate_agnostic(
    gt: GroundTruth,
    predictions: Predictions,
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "pycocotools",
    verbose: bool = False,
) -> dict[str, dict[str, float]]:
    """Class-agnostic COCO metrics in percent, ``{iou_type: {METRIC_KEYS...}}``.

    ``backend``: "pycocotools" (reference, default), "faster" (faster-coco-eval, same numbers on
    the tests) or "auto" (faster when importable). Metrics undefined for the data (no ground
    truth in an area range) are NaN, as in detectron2's COCOEvaluator. ``verbose`` prints
    COCOeval's own summary.
    """
    source = source_name(predictions, "predictions")
    gt_dataset = load_ground_truth(gt)
    results = normalize_predictions(load_predictions(predictions), gt_dataset, source)
    return run_coco_eval(gt_dataset, results, iou_types, False, backend, verbose, source)


def run_coco_eval(
    gt_dataset: dict[str, Any],
    results: list[dict[str, Any]],
    iou_types: Sequence[str],
    use_cats: bool,
    backend: str = "pycocotools",
    verbose: bool = False,
    source: str = "predictions",
) -> dict[str, dict[str, float]]:
    """COCO metrics in percent of ground truth from ``load_ground_truth`` and results from
    ``normalize_predictions``: class-agnostic, or class-aware (``use_cats``) for results whose
    ``category_id`` was set to a ground-truth category afterwards (matched instance AP)."""
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    run = _resolve_backend(backend)
    metrics = {}
    for iou_type in iou_types:
        typed = _results_for(iou_type, results, source)
        metrics[iou_type] = stats_to_metrics(run(gt_dataset, typed, iou_type, verbose, use_cats))
    return metrics


def _results_for(iou_type: str, results: list[dict[str, Any]], source: str) -> list[dict]:
    """Copies for one iou type (COCO.loadRes writes into them).

    segm results carry no box, so loadRes takes their area from the mask (as detectron2 does);
    with a box it would use the box area for the size ranges.
    """
    if iou_type == "bbox":
        return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    missing = next((i for i, r in enumerate(results) if "segmentation" not in r), None)
    if missing is not None:
        raise ValueError(f"{source}: segm evaluation needs a segmentation in prediction {missing}")
    return [{k: v for k, v in r.items() if k != "bbox"} for r in results]


def stats_to_metrics(stats: Sequence[float]) -> dict[str, float]:
    """COCOeval.stats[0:12] -> percentages keyed by METRIC_KEYS (-1 "undefined" -> NaN)."""
    return {key: float(v) * 100 if v >= 0 else math.nan for key, v in zip(METRIC_KEYS, stats)}


def format_metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Rows per iou type, one column per metric, values in percent."""
    header = f"{'type':<6}" + "".join(f"{k:>8}" for k in METRIC_KEYS)
    rows = [
        f"{iou_type:<6}" + "".join(f"{values[k]:>8.2f}" for k in METRIC_KEYS)
        for iou_type, values in metrics.items()
    ]
    return "\n".join([header, *rows])


Runner = Callable[[dict[str, Any], list[dict[str, Any]], str, bool, bool], np.ndarray]


def _resolve_backend(backend: str) -> Runner:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pycocotools":
        return _run_pycocotools
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError as e:
        if backend == "faster":
            raise ImportError("backend='faster' needs: pip install faster-coco-eval") from e
        return _run_pycocotools
    return _run_faster


def _results_coco(coco_cls: type, coco_gt: Any, gt: dict[str, Any], results: list[dict]) -> Any:
    """loadRes, except for no results, which loadRes of pycocotools cannot index."""
    if results:
        return coco_gt.loadRes(results)
    empty = coco_cls()
    empty.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    empty.createIndex()
    return empty


def _coco_stats(coco_eval: Any, use_cats: bool) -> np.ndarray:
    """Run a (pycocotools-compatible) COCOeval, class-aware or with every instance as one class
    (the class-agnostic protocol), 100 dets max."""
    coco_eval.params.useCats = int(use_cats)
    coco_eval.params.maxDets = [1, 10, 100]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return np.asarray(coco_eval.stats[:12])


def _run_pycocotools(
    gt: dict[str, Any], results: list[dict], iou_type: str, verbose: bool, use_cats: bool
) -> np.ndarray:
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, _results_coco(COCO, coco_gt, gt, results), iou_type)
        return _coco_stats(coco_eval, use_cats)


def _run_faster(
    gt: dict[str, Any], results: list[dict], iou_type: str, verbose: bool, use_cats: bool
) -> np.ndarray:
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    quiet: Callable[..., None] = print if verbose else (lambda *args, **kwargs: None)
    coco_gt = FasterCOCO(gt, print_function=quiet)
    coco_dt = _results_coco(FasterCOCO, coco_gt, gt, results)
    coco_eval = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=quiet)
    return _coco_stats(coco_eval, use_cats)
