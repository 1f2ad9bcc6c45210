"""COCO json validation: clean files pass, each kind of defect is reported with its id and field."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from uis_d2.data import validation
from uis_d2.data.validation import (
    AnnotationError,
    ValidationReport,
    check_coco_json,
    rle_string_runs,
    validate_coco_dict,
    validate_coco_json,
)
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle

HEIGHT, WIDTH = 20, 30


def _square_mask(x: int, y: int, side: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y : y + side, x : x + side] = True
    return mask


def _pseudo_annotation(ann_id: int, image_id: int, mask: np.ndarray) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": mask_to_rle(mask),
        "bbox": mask_to_box_xywh(mask),
        "area": float(mask.sum()),
        "score": 0.5,
        "emb": [0.1, -0.2, 0.3],
    }


def _pseudo_dataset() -> dict:
    """Two images; annotation 3 (image 2) sits in the right half so that x + x2 > width."""
    return {
        "info": {"description": "test"},
        "images": [
            {"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH} for i in (1, 2, 3)
        ],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            _pseudo_annotation(1, 1, _square_mask(2, 3, 5)),
            _pseudo_annotation(2, 1, _square_mask(10, 10, 4)),
            _pseudo_annotation(3, 2, _square_mask(20, 4, 6)),
        ],
    }


def _gt_dataset() -> dict:
    """Ground truth with a polygon and an uncompressed (list-counts) crowd RLE."""
    data = _pseudo_dataset()
    crowd = mask_utils.encode(np.asfortranarray(_square_mask(20, 4, 6).astype(np.uint8)))
    runs = rle_string_runs([crowd["counts"].decode()])[0].tolist()
    for ann in data["annotations"]:
        del ann["score"], ann["emb"]
    data["annotations"][0]["segmentation"] = [[2, 3, 7, 3, 7, 8, 2, 8]]
    data["annotations"][2].update(iscrowd=1, segmentation={"size": [HEIGHT, WIDTH], "counts": runs})
    return data


def _validate(data: dict, kind: str = "auto", max_problems: int = 100) -> ValidationReport:
    report = ValidationReport(path="mem.json", max_problems=max_problems)
    return validate_coco_dict(data, report, kind=kind)


def _write(tmp_path, data: dict, name: str = "ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_clean_pseudo_labels_pass():
    report = _validate(_pseudo_dataset())
    assert report.ok, report.details()
    assert (report.kind, report.num_images, report.num_annotations) == ("pseudo", 3, 3)
    assert report.num_images_without_annotations == 1
    assert report.embedding_dim == 3


def test_clean_ground_truth_passes():
    report = _validate(_gt_dataset())
    assert report.ok, report.details()
    assert report.kind == "gt" and report.num_categories == 1 and report.embedding_dim is None


def _set_ann(index: int, key: str, value) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data["annotations"][index][key] = value

    return mutate


def _set_image(index: int, key: str, value) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data["images"][index][key] = value

    return mutate


def _xyxy_boxes(data: dict) -> None:
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x, y, x + w, y + h]


DEFECTS = {
    "wrong mask size": (
        _set_ann(1, "segmentation", mask_to_rle(np.ones((HEIGHT, WIDTH + 1), dtype=bool))),
        ["id=2", "'segmentation.size'", "mask of the wrong size"],
    ),
    "garbage counts": (
        _set_ann(0, "segmentation", {"size": [HEIGHT, WIDTH], "counts": "not~rle"}),
        ["id=1", "'segmentation.counts'", "not a valid compressed RLE"],
    ),
    "counts too short": (
        _set_ann(0, "segmentation", {"size": [HEIGHT, WIDTH], "counts": "0`0"}),
        ["id=1", "'segmentation.counts'", "needs 600"],
    ),
    "list counts with wrong sum": (
        _set_ann(2, "segmentation", {"size": [HEIGHT, WIDTH], "counts": [10, 5]}),
        ["id=3", "'segmentation.counts'", "runs cover 15 pixels"],
    ),
    "odd polygon": (
        _set_ann(0, "segmentation", [[1, 2, 3, 4, 5, 6, 7]]),
        ["id=1", "'segmentation'", "even"],
    ),
    "segmentation missing": (
        lambda d: d["annotations"][1].pop("segmentation"),
        ["id=2", "'segmentation'"],
    ),
    "xyxy boxes": (_xyxy_boxes, ["id=3", "'bbox'", "x1y1x2y2", "outside"]),
    "negative box size": (_set_ann(0, "bbox", [2, 3, -5, 5]), ["id=1", "'bbox'", "negative"]),
    "non-finite box": (_set_ann(0, "bbox", [2, 3, math.nan, 5]), ["id=1", "'bbox'", "finite"]),
    "box of three numbers": (_set_ann(0, "bbox", [2, 3, 5]), ["id=1", "'bbox'"]),
    "box off its mask": (_set_ann(1, "bbox", [0, 0, 4, 4]), ["id=2", "does not match its mask"]),
    "negative area": (_set_ann(1, "area", -1), ["id=2", "'area'"]),
    "score above one": (_set_ann(2, "score", 1.5), ["id=3", "'score'", "[0, 1]"]),
    "score missing in pseudo labels": (
        lambda d: d["annotations"][1].pop("score"),
        ["id=2", "'score'"],
    ),
    "emb of another length": (_set_ann(1, "emb", [0.0] * 5), ["id=2", "'emb'", "expected 3"]),
    "emb with nan": (_set_ann(2, "emb", [0.0, math.nan, 1.0]), ["id=3", "'emb'", "finite"]),
    "emb with a string": (_set_ann(0, "emb", [0.0, "x", 1.0]), ["id=1", "'emb'", "finite"]),
    "unknown image": (_set_ann(1, "image_id", 99), ["id=2", "'image_id'", "99"]),
    "unknown category": (_set_ann(1, "category_id", 7), ["id=2", "'category_id'", "7"]),
    "duplicate annotation id": (_set_ann(1, "id", 1), ["id=1", "'id' is duplicated"]),
    "duplicate image id": (_set_image(1, "id", 1), ["image #1 (id=1)", "'id' is duplicated"]),
    "zero height": (_set_image(2, "height", 0), ["id=3", "'height'", "positive int"]),
    "float width": (_set_image(2, "width", 30.0), ["id=3", "'width'"]),
    "no file name": (_set_image(0, "file_name", ""), ["id=1", "'file_name'"]),
    "repeated file name": (_set_image(1, "file_name", "1.png"), ["id=2", "repeats image id=1"]),
    "empty image list": (lambda d: d.update(images=[]), ["'images' is empty"]),
    "no annotations key": (lambda d: d.pop("annotations"), ["'annotations'"]),
    "duplicate category": (
        lambda d: d["categories"].append({"id": 1, "name": "again"}),
        ["category #1 (id=1)", "duplicated"],
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_is_reported_with_id_and_field(defect):
    mutate, expected = DEFECTS[defect]
    data = _pseudo_dataset()
    mutate(data)
    report = _validate(data)
    assert not report.ok
    text = report.details()
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


def test_xyxy_boxes_inside_the_image_are_recognised_by_their_masks():
    data = _pseudo_dataset()
    _xyxy_boxes(data)
    text = _validate(data).details()
    # Annotation 1 ([2, 3, 7, 8]) lies inside the image; only its mask gives the convention away.
    assert "annotation #0 (id=1): field 'bbox': bbox [2, 3, 7, 8] in x1y1x2y2" in text


def test_ground_truth_requires_categories_but_pseudo_labels_do_not():
    gt = _gt_dataset()
    del gt["categories"]
    assert "'categories'" in _validate(gt).details()
    pseudo = _pseudo_dataset()
    del pseudo["categories"]
    assert _validate(pseudo).ok


def test_ground_truth_boxes_need_not_be_tight():
    """Annotator boxes differ from mask boxes by a few pixels; only pseudo labels must be exact."""
    data = _gt_dataset()
    data["annotations"][1]["bbox"] = [9, 9, 6, 6]
    assert _validate(data, kind="gt").ok
    assert not _validate(data, kind="pseudo").ok


def test_all_problems_are_counted_and_the_list_is_capped():
    data = _pseudo_dataset()
    for ann in data["annotations"]:
        ann["score"] = 2.0
        ann["area"] = -1
    report = _validate(data, max_problems=2)
    assert report.num_problems == 6 and len(report.problems) == 2
    assert "... and 4 more" in report.details()


def test_check_coco_json_raises_one_error_naming_the_file(tmp_path):
    data = _pseudo_dataset()
    data["annotations"][0]["score"] = -0.5
    data["annotations"][2]["segmentation"]["size"] = [WIDTH, HEIGHT]
    path = _write(tmp_path, data, "pseudo.json")
    with pytest.raises(AnnotationError) as info:
        check_coco_json(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 2 problem(s)")
    assert "(id=1): field 'score'" in message and "(id=3): field 'segmentation.size'" in message
    assert info.value.report.num_problems == 2


def test_check_coco_json_returns_report_for_clean_file(tmp_path):
    report = check_coco_json(_write(tmp_path, _gt_dataset()), kind="gt")
    assert report.ok and report.num_annotations == 3


def test_images_dir_check(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("1.png", "3.png"):
        (images / name).write_bytes(b"x")
    report = validate_coco_json(_write(tmp_path, _pseudo_dataset()), images_dir=images)
    assert report.num_problems == 1
    assert "image #1 (id=2): field 'file_name': image file not found" in report.problems[0]
    missing_dir = validate_coco_json(_write(tmp_path, _pseudo_dataset()), images_dir=tmp_path / "x")
    assert "images_dir not found" in missing_dir.details()


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        validate_coco_json(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    report = validate_coco_json(broken)
    assert not report.ok and "not valid json" in report.problems[0]
    listing = _write(tmp_path, [1, 2], "list.json")
    assert "top level must be a json object" in validate_coco_json(listing).details()


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        _validate(_pseudo_dataset(), kind="labels")


def _reference_runs(mask: np.ndarray) -> list[int]:
    """Run lengths in column-major order, starting with a (possibly empty) background run."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    return [0, *runs] if flat[0] else runs


def test_rle_string_runs_matches_a_direct_run_length_encoding():
    rng = np.random.default_rng(0)
    masks = [np.zeros((3, 4), bool), np.ones((5, 2), bool)]
    masks += [rng.random(rng.integers(1, 40, 2)) < rng.random() for _ in range(60)]
    masks.append(np.tile([True, False], (300, 150)))  # many runs: exercises the delta coding
    masks.append(np.pad(np.ones((1, 1), bool), ((0, 0), (0, 4000))))  # a multi-character run
    strings = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
    runs = rle_string_runs([s.decode() for s in strings])
    for mask, got in zip(masks, runs, strict=True):
        assert got is not None and got.tolist() == _reference_runs(mask)


@pytest.mark.parametrize("bad", ["\x7f0", "P", "0" + "P" * 8 + "0"])
def test_rle_string_runs_rejects_malformed_strings(bad):
    good = mask_to_rle(np.ones((2, 2), bool))["counts"]
    runs = rle_string_runs([good, bad, good])
    assert runs[1] is None
    assert runs[0].tolist() == runs[2].tolist() == [0, 4]


def test_report_summary_mentions_counts():
    summary = _validate(_pseudo_dataset()).summary()
    assert "3 images, 3 annotations" in summary and "embedding dim 3" in summary


def test_negative_runs_are_reported():
    data = _pseudo_dataset()
    data["images"][0].update(height=1, width=1)
    data["annotations"] = [data["annotations"][0]]
    # "@" = -16, "a0" = 17: the runs sum to the 1 pixel of a 1x1 image, but one is negative.
    data["annotations"][0]["segmentation"] = {"size": [1, 1], "counts": "@a0"}
    assert rle_string_runs(["@a0"])[0].tolist() == [-16, 17]
    assert "negative run length" in _validate(data).details()


def test_rle_parsing_is_independent_of_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    masks = [rng.random((12, 9)) < 0.3 for _ in range(40)]
    strings = [mask_to_rle(m)["counts"] for m in masks] + ["", "P"]
    whole = rle_string_runs(strings)
    monkeypatch.setattr(validation, "_CHUNK_CHARS", 50)
    chunked = rle_string_runs(strings)
    assert [None if r is None else r.tolist() for r in chunked] == [
        None if r is None else r.tolist() for r in whole
    ]
    assert whole[-1] is None and whole[-2].tolist() == []
    ok, totals, negative = validation.rle_string_totals(strings)
    assert ok[:-1].all() and not ok[-1] and not negative.any()
    assert (totals[:-2] == 12 * 9).all() and totals[-2] == 0


def test_generated_synthetic_ground_truth_is_clean(tmp_path):
    """The project's own COCO writer and this validator agree on the format."""
    from uis_d2.data.synthetic import generate_synthetic_dataset

    paths = generate_synthetic_dataset(tmp_path, num_train=2, num_val=1, seed=0)
    report = check_coco_json(paths["train_json"], images_dir=paths["train_images"], kind="gt")
    assert report.num_images == 2 and report.num_annotations > 0
