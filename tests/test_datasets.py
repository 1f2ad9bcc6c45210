"""Dataset registration (lazy, class-agnostic, root from $DETECTRON2_DATASETS) and the
datasets/prepare_*.py converters, on tiny fake inputs."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from scripts import load_script
from uis_d2.data import datasets
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle, rle_to_mask

REPO = Path(__file__).resolve().parents[1]
INTERFACE_NAMES = [
    "uis_coco_train2017",
    "uis_coco_unlabeled2017",
    "uis_coco_train2017_unlabeled2017",
    "uis_coco_val2017",
    "uis_coco20k",
    "uis_voc2012",
    "uis_uvo_val",
    "synthetic_train",
    "synthetic_val",
    "synthetic_train_pseudo",
]


def _load_script(name: str):
    return load_script(f"datasets/{name}.py")


def _write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _fake_instances() -> dict:
    """Three images; image 2 holds a crowd annotation; COCO-style non-contiguous category ids."""
    box = [1.0, 2.0, 3.0, 4.0]
    poly = [[1.0, 2.0, 4.0, 2.0, 4.0, 6.0, 1.0, 6.0]]
    return {
        "images": [
            {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 8, "width": 8}
            for i in (9, 25, 30)
        ],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 18, "bbox": box, "area": 12.0,
             "iscrowd": 0, "segmentation": poly},
            {"id": 2, "image_id": 25, "category_id": 44, "bbox": box, "area": 12.0,
             "iscrowd": 0, "segmentation": poly},
            {"id": 3, "image_id": 25, "category_id": 1, "bbox": box, "area": 12.0,
             "iscrowd": 1, "segmentation": poly},
            {"id": 4, "image_id": 30, "category_id": 1, "bbox": box, "area": 12.0,
             "iscrowd": 0, "segmentation": poly},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
                       {"id": 44, "name": "bottle"}],
    }  # fmt: skip


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    return tmp_path


@pytest.fixture
def scratch_name():
    """A dataset name removed from both catalogs after the test."""
    name = "uis_test_scratch"
    yield name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    MetadataCatalog.pop(name, None)


def test_interface_names_registered_with_class_agnostic_metadata(root: Path):
    for name in INTERFACE_NAMES:
        assert name in DatasetCatalog.list(), name
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["object"]
        assert meta.evaluator_type == "class_agnostic"
        assert Path(meta.json_file).is_relative_to(root)
        assert Path(meta.image_root).is_relative_to(root)
    pseudo = MetadataCatalog.get("synthetic_train_pseudo")
    assert pseudo.json_file == str(root / "synthetic/pseudo/train.json")
    assert pseudo.image_root == str(root / "synthetic/train")
    assert "coco_2017_val" in DatasetCatalog.list()  # detectron2's builtins are untouched


def test_absent_split_raises_file_not_found_naming_the_path(root: Path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json") as info:
        DatasetCatalog.get("uis_coco_val2017")
    assert str(root / "coco" / "annotations" / "instances_val2017.json") in str(info.value)


def test_missing_image_folder_is_named(root: Path):
    _write_json(root / "coco/annotations/instances_val2017.json", _fake_instances())
    with pytest.raises(FileNotFoundError, match="val2017"):
        DatasetCatalog.get("uis_coco_val2017")


def test_present_split_loads_class_agnostic(root: Path):
    _write_json(root / "coco/annotations/instances_val2017.json", _fake_instances())
    (root / "coco/val2017").mkdir()
    dicts = DatasetCatalog.get("uis_coco_val2017")
    assert [d["image_id"] for d in dicts] == [9, 25, 30]
    assert dicts[0]["file_name"] == str(root / "coco/val2017/COCO_train2014_000000000009.jpg")
    annotations = [a for d in dicts for a in d["annotations"]]
    assert len(annotations) == 4
    assert {a["category_id"] for a in annotations} == {0}
    assert MetadataCatalog.get("uis_coco_val2017").thing_classes == ["object"]


def test_root_is_read_when_loading_not_at_import(tmp_path: Path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(first))
    assert MetadataCatalog.get("uis_coco20k").json_file.startswith(str(first))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(second))
    assert datasets.datasets_root() == second
    assert MetadataCatalog.get("uis_coco20k").json_file.startswith(str(second))
    with pytest.raises(FileNotFoundError, match=str(second)):
        DatasetCatalog.get("uis_coco20k")


def test_default_root_is_local_datasets_folder(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert datasets.datasets_root() == Path("datasets")


def test_image_only_split_and_concatenation(root: Path):
    _write_json(root / "coco/annotations/instances_train2017.json", _fake_instances())
    unlabeled = {"images": [{"id": 7, "file_name": "000000000007.jpg", "height": 5, "width": 6}]}
    _write_json(root / "coco/annotations/image_info_unlabeled2017.json", unlabeled)
    (root / "coco/train2017").mkdir()
    (root / "coco/unlabeled2017").mkdir()
    only_images = DatasetCatalog.get("uis_coco_unlabeled2017")
    assert only_images == [
        {
            "file_name": str(root / "coco/unlabeled2017/000000000007.jpg"),
            "height": 5,
            "width": 6,
            "image_id": 7,
            "annotations": [],
        }
    ]
    both = DatasetCatalog.get("uis_coco_train2017_unlabeled2017")
    assert [d["image_id"] for d in both] == [9, 25, 30, 7]
    meta = MetadataCatalog.get("uis_coco_train2017_unlabeled2017")
    assert meta.json_files == [
        str(root / "coco/annotations/instances_train2017.json"),
        str(root / "coco/annotations/image_info_unlabeled2017.json"),
    ]


def _pseudo_json() -> dict:
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:3] = True
    rle = mask_to_rle(mask)
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle,
                  "bbox": [1.0, 1.0, 2.0, 2.0], "area": 4.0, "score": 0.75, "emb": [0.5, -1.0],
                  "k": 3, "saliency_overlap": 0.9, "round": 2}  # fmt: skip
    return {
        "images": [{"id": 1, "file_name": "000000.png", "height": 4, "width": 5}],
        "annotations": [annotation],
        "categories": [{"id": 1, "name": "object"}],
    }


def test_pseudo_labels_keep_what_training_reads(tmp_path: Path, scratch_name: str):
    json_file = _write_json(tmp_path / "pseudo.json", _pseudo_json())
    datasets.register_pseudo_labels(scratch_name, str(json_file), str(tmp_path))
    (annotation,) = DatasetCatalog.get(scratch_name)[0]["annotations"]
    assert annotation["score"] == 0.75
    assert annotation["emb"] == [0.5, -1.0]  # inline embeddings of other tools' files
    # Per-rank records are compact: generator extras and unknown keys are not kept.
    assert not {"k", "saliency_overlap", "round", "id", "area"} & set(annotation)
    assert annotation["category_id"] == 0
    assert MetadataCatalog.get(scratch_name).json_file == str(json_file)


def test_synthetic_pseudo_split_keeps_score_and_emb(root: Path):
    _write_json(root / "synthetic/pseudo/train.json", _pseudo_json())
    (root / "synthetic/train").mkdir()
    (annotation,) = DatasetCatalog.get("synthetic_train_pseudo")[0]["annotations"]
    assert annotation["score"] == 0.75 and annotation["emb"] == [0.5, -1.0]


def test_reregistering_replaces_and_reimport_is_idempotent(tmp_path: Path, scratch_name: str):
    first = _write_json(tmp_path / "first.json", _pseudo_json())
    second_json = _pseudo_json()
    second_json["annotations"][0]["score"] = 0.25
    second = _write_json(tmp_path / "second.json", second_json)
    datasets.register_pseudo_labels(scratch_name, str(first), str(tmp_path))
    datasets.register_pseudo_labels(scratch_name, str(second), str(tmp_path))
    assert DatasetCatalog.get(scratch_name)[0]["annotations"][0]["score"] == 0.25
    assert MetadataCatalog.get(scratch_name).json_file == str(second)
    datasets.register_all()
    importlib.reload(datasets)
    assert set(INTERFACE_NAMES) <= set(DatasetCatalog.list())


def test_read_json_errors_name_the_file(tmp_path: Path):
    from uis_d2.utils.files import read_json

    with pytest.raises(FileNotFoundError, match="nothing.json"):
        read_json(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(bad)


# ---- datasets/prepare_coco20k.py


def test_prepare_coco20k_keeps_listed_images_and_drops_crowd(tmp_path: Path):
    script = _load_script("prepare_coco20k")
    instances = _write_json(tmp_path / "instances_train2014.json", _fake_instances())
    image_list = tmp_path / "coco20k.txt"
    image_list.write_text("# COCO20k\ntrain2014/COCO_train2014_000000000009.jpg\n\n25\n")
    output = tmp_path / "out" / "coco20k.json"
    argv = ["--instances", str(instances), "--image-list", str(image_list), "--output", str(output)]
    assert script.main(argv) == 0
    coco20k = json.loads(output.read_text())
    assert [image["id"] for image in coco20k["images"]] == [9, 25]
    assert [a["id"] for a in coco20k["annotations"]] == [1, 2]  # crowd id 3 and image 30 gone
    assert coco20k["categories"] == _fake_instances()["categories"]


def test_prepare_coco20k_errors_name_inputs(tmp_path: Path):
    script = _load_script("prepare_coco20k")
    instances = _write_json(tmp_path / "instances_train2014.json", _fake_instances())
    image_list = tmp_path / "list.txt"
    image_list.write_text("COCO_train2014_000000000009.jpg\nCOCO_train2014_000000000077.jpg\n")
    output = tmp_path / "out.json"
    argv = ["--instances", str(instances), "--image-list", str(image_list), "--output", str(output)]
    with pytest.raises(ValueError, match=r"1 listed image ids are not in .*instances_train2014"):
        script.main(argv)
    assert not output.exists()
    missing = ["--instances", str(tmp_path / "absent.json"), "--image-list", str(image_list)]
    with pytest.raises(FileNotFoundError, match="absent.json"):
        script.main(missing + ["--output", str(output)])
    image_list.write_text("no-digits-here.jpg\n")
    with pytest.raises(ValueError, match=r"list.txt:1"):
        script.main(argv)


# ---- datasets/prepare_class_agnostic.py


def test_prepare_class_agnostic_keeps_original_categories(tmp_path: Path):
    script = _load_script("prepare_class_agnostic")
    source = _write_json(tmp_path / "in.json", _fake_instances())
    output = tmp_path / "agnostic.json"
    assert script.main(["--input", str(source), "--output", str(output)]) == 0
    agnostic = json.loads(output.read_text())
    assert agnostic["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert [a["category_id"] for a in agnostic["annotations"]] == [1, 1, 1, 1]
    assert [a["orig_category_id"] for a in agnostic["annotations"]] == [18, 44, 1, 1]
    assert agnostic["orig_categories"] == _fake_instances()["categories"]
    assert agnostic["images"] == _fake_instances()["images"]


def test_prepare_class_agnostic_rejects_image_only_json(tmp_path: Path):
    script = _load_script("prepare_class_agnostic")
    source = _write_json(tmp_path / "info.json", {"images": [], "categories": []})
    with pytest.raises(ValueError, match=r"info.json has no 'annotations'"):
        script.main(["--input", str(source), "--output", str(tmp_path / "out.json")])


# ---- datasets/prepare_voc.py


def _write_palette_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def _fake_voc(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """One 10x12 image: a dog (class 12) and a person (class 15) with a void border."""
    objects = np.zeros((10, 12), np.uint8)
    objects[1:5, 1:6] = 1
    objects[6:9, 4:11] = 2
    objects[5, 4:11] = 255  # void border belongs to no instance
    classes = np.where(objects == 1, 12, np.where(objects == 2, 15, objects)).astype(np.uint8)
    _write_palette_png(root / "SegmentationObject" / "2007_000001.png", objects)
    _write_palette_png(root / "SegmentationClass" / "2007_000001.png", classes)
    (root / "JPEGImages").mkdir(parents=True)
    Image.new("RGB", (12, 10)).save(root / "JPEGImages" / "2007_000001.jpg")
    split = root / "ImageSets" / "Segmentation" / "trainval.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2007_000001\n")
    return objects == 1, objects == 2


def test_prepare_voc_converts_instance_pngs(tmp_path: Path):
    script = _load_script("prepare_voc")
    voc_root = tmp_path / "VOC2012"
    dog, person = _fake_voc(voc_root)
    output = tmp_path / "voc.json"
    assert script.main(["--voc-root", str(voc_root), "--output", str(output)]) == 0
    coco = json.loads(output.read_text())
    assert coco["images"] == [{"id": 1, "file_name": "2007_000001.jpg", "height": 10, "width": 12}]
    assert len(coco["categories"]) == 20 and coco["categories"][11]["name"] == "dog"
    first, second = coco["annotations"]
    assert (first["id"], first["category_id"], second["id"], second["category_id"]) == (
        1,
        12,
        2,
        15,
    )
    for annotation, expected in ((first, dog), (second, person)):
        mask = rle_to_mask(annotation["segmentation"])
        assert np.array_equal(mask, expected)
        assert annotation["bbox"] == mask_to_box_xywh(expected)
        assert annotation["area"] == int(expected.sum())


def test_prepare_voc_names_missing_files(tmp_path: Path):
    script = _load_script("prepare_voc")
    voc_root = tmp_path / "VOC2012"
    with pytest.raises(FileNotFoundError, match=r"Segmentation/trainval.txt"):
        script.main(["--voc-root", str(voc_root), "--output", str(tmp_path / "o.json")])
    _fake_voc(voc_root)
    (voc_root / "SegmentationClass" / "2007_000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/2007_000001.png"):
        script.main(["--voc-root", str(voc_root), "--output", str(tmp_path / "o.json")])
