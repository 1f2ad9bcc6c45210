"""Semantic ground truth: maps painted from COCO-format jsons, VOC label PNGs, registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from uis_d2.data.semantic import (
    IGNORE_LABEL,
    load_coco_semantic,
    load_label_folder,
    read_label_png,
    resize_labels,
    semantic_map,
)
from uis_d2.data.semantic_datasets import (
    COCO_SEMANTIC_SPLITS,
    SEMANTIC_EVALUATOR_TYPE,
    VOC_SEMANTIC_SPLITS,
    register_semantic_coco,
)
from uis_d2.utils.masks import mask_to_rle, rle_to_mask

H, W = 8, 10


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _coco(tmp_path: Path) -> Path:
    """Categories 7 ('cat', class 2) and 3 ('dog', class 1), listed out of id order; a large dog
    under a small cat, a crowd region partly under a dog (polygon) mask."""
    large_dog, small_cat = _box(0, 6, 0, 6), _box(2, 4, 2, 4)
    crowd, near_crowd = _box(5, 8, 6, 10), _box(6, 8, 8, 10)
    annotations = [
        (7, small_cat, 0),  # listed first, but smaller: painted over the dog
        (3, large_dog, 0),
        (3, near_crowd, 0),  # an instance inside a crowd region stays labelled
        (7, crowd, 1),
    ]
    coco = {
        "images": [{"id": 5, "file_name": "a.jpg", "height": H, "width": W}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 5,
                "category_id": category,
                "iscrowd": crowd_flag,
                "segmentation": mask_to_rle(mask),
            }
            for i, (category, mask, crowd_flag) in enumerate(annotations)
        ],
    }
    # the dog as a polygon too: segmentations of every COCO form are painted
    coco["annotations"][2]["segmentation"] = [[8, 6, 10, 6, 10, 8, 8, 8]]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_json_painted_by_sorted_category_with_crowd_ignored(tmp_path: Path):
    (record,) = load_coco_semantic(_coco(tmp_path), tmp_path / "images")
    assert record["file_name"] == str(tmp_path / "images" / "a.jpg")
    assert (record["image_id"], record["height"], record["width"]) == (5, H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[_box(5, 8, 6, 10)] = IGNORE_LABEL  # crowd first ...
    expected[_box(0, 6, 0, 6)] = 1  # ... then by decreasing area: dog (id 3 -> class 1)
    expected[_box(6, 8, 8, 10)] = 1  # the dog polygon inside the crowd region
    expected[_box(2, 4, 2, 4)] = 2  # the small cat (id 7 -> class 2) on top
    np.testing.assert_array_equal(semantic_map(record), expected)


def test_registered_coco_split_checks_its_classes(tmp_path: Path):
    json_file = _coco(tmp_path)
    (tmp_path / "images").mkdir()
    register_semantic_coco(
        "test_sem_ok", str(json_file), str(tmp_path / "images"), ["background", "dog", "cat"]
    )
    register_semantic_coco(
        "test_sem_bad", str(json_file), str(tmp_path / "images"), ["background", "cat", "dog"]
    )
    try:
        meta = MetadataCatalog.get("test_sem_ok")
        assert meta.stuff_classes == ["background", "dog", "cat"]
        assert (meta.ignore_label, meta.evaluator_type) == (255, SEMANTIC_EVALUATOR_TYPE)
        assert meta.json_file == str(json_file)
        assert len(DatasetCatalog.get("test_sem_ok")) == 1
        with pytest.raises(ValueError, match=r"categories \['dog', 'cat'\] differ"):
            DatasetCatalog.get("test_sem_bad")
    finally:
        for name in ("test_sem_ok", "test_sem_bad"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_bad_coco_annotations_are_named(tmp_path: Path):
    path = _coco(tmp_path)
    coco = json.loads(path.read_text())
    coco["annotations"][1]["category_id"] = 99
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="annotation 2 has category_id 99"):
        load_coco_semantic(path, tmp_path)
    coco["annotations"][1]["category_id"] = 3
    del coco["annotations"][1]["segmentation"]
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="annotation 2 has no segmentation"):
        load_coco_semantic(path, tmp_path)


def _write_palette_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def test_voc_label_pngs_keep_palette_indices_and_void(tmp_path: Path):
    labels = np.zeros((6, 7), np.uint8)
    labels[1:4, 1:5] = 12
    labels[4, :] = 255
    voc = tmp_path / "voc" / "VOC2012"
    _write_palette_png(voc / "SegmentationClass" / "2007_000002.png", labels)
    _write_palette_png(voc / "SegmentationClass" / "2007_000001.png", labels == 12)
    (voc / "JPEGImages").mkdir()
    split = voc / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2007_000002\n2007_000001\n")
    np.testing.assert_array_equal(read_label_png(voc / "SegmentationClass/2007_000002.png"), labels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(tmp_path))
        records = DatasetCatalog.get("uis_voc2012_val_sem")
        meta = MetadataCatalog.get("uis_voc2012_val_sem")
        assert len(meta.stuff_classes) == 21 and meta.stuff_classes[12] == "dog"
        assert meta.sem_seg_root == str(voc / "SegmentationClass")
    # the split file's order, numbered from 1 as datasets/prepare_voc.py numbers its json
    assert [(r["image_id"], Path(r["file_name"]).name) for r in records] == [
        (1, "2007_000002.jpg"),
        (2, "2007_000001.jpg"),
    ]
    np.testing.assert_array_equal(semantic_map(records[0]), labels)

    # without images or a split file: every PNG, file_name the PNG itself
    records = load_label_folder(voc / "SegmentationClass")
    assert [Path(r["file_name"]).name for r in records] == ["2007_000001.png", "2007_000002.png"]

    Image.new("RGB", (3, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="got mode RGB"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError, match="label PNG not found"):
        read_label_png(tmp_path / "missing.png")


def test_semantic_splits_register_lazily():
    for name in [*COCO_SEMANTIC_SPLITS, *VOC_SEMANTIC_SPLITS]:
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == SEMANTIC_EVALUATOR_TYPE and meta.ignore_label == 255
        assert meta.stuff_classes[0] == "background"
    assert len(MetadataCatalog.get("uis_coco_val2017_sem").stuff_classes) == 81
    assert len(MetadataCatalog.get("synthetic_val_sem").stuff_classes) == 7


def test_synthetic_split_paints_the_visible_masks(training_datasets: Path):
    coco = json.loads((training_datasets / "synthetic/annotations/val.json").read_text())
    records = DatasetCatalog.get("synthetic_val_sem")
    assert len(records) == len(coco["images"])
    for record in records:
        labels = semantic_map(record)
        assert labels.shape == np.asarray(Image.open(record["file_name"])).shape[:2]
        expected = np.zeros_like(labels)
        for ann in coco["annotations"]:
            if ann["image_id"] == record["image_id"]:
                expected[rle_to_mask(ann["segmentation"])] = ann["category_id"]  # ids 1-6
        np.testing.assert_array_equal(labels, expected)


def test_resize_labels_samples_pixel_centres():
    labels = np.arange(16).reshape(4, 4)
    np.testing.assert_array_equal(resize_labels(labels, (2, 2)), [[5, 7], [13, 15]])
    np.testing.assert_array_equal(resize_labels(np.array([[1, 2]]), (1, 4)), [[1, 1, 2, 2]])
    assert resize_labels(labels, (4, 4)) is labels
