"""Embedded synthetic dataset: determinism, COCO validity, scene properties, the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog

from scripts import load_script
from uis_d2.data import synthetic
from uis_d2.utils.masks import mask_to_box_xywh, rle_to_mask

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 24, 4


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_synthetic_dataset(output, NUM_TRAIN, NUM_VAL, seed=0)
    return output


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_returns_paths_of_the_layout(tmp_path: Path):
    paths = synthetic.generate_synthetic_dataset(tmp_path, 1, 0, seed=3)
    assert paths == {
        "train_images": tmp_path / "train",
        "train_json": tmp_path / "annotations" / "train.json",
        "val_images": tmp_path / "val",
        "val_json": tmp_path / "annotations" / "val.json",
    }
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000000.png"]
    assert json.loads(paths["val_json"].read_text())["images"] == []


def test_same_seed_gives_identical_bytes(generated: Path, tmp_path: Path):
    synthetic.generate_synthetic_dataset(tmp_path, NUM_TRAIN, NUM_VAL, seed=0)
    assert _files(tmp_path) == _files(generated)


def test_images_do_not_depend_on_the_count(generated: Path, tmp_path: Path):
    synthetic.generate_synthetic_dataset(tmp_path, 3, 1, seed=0)
    for name in ("train/000000.png", "train/000002.png", "val/000000.png"):
        assert (tmp_path / name).read_bytes() == (generated / name).read_bytes()


def test_different_seed_differs(generated: Path, tmp_path: Path):
    synthetic.generate_synthetic_dataset(tmp_path, 3, 0, seed=1)
    for name in ("train/000000.png", "train/000001.png", "train/000002.png"):
        assert (tmp_path / name).read_bytes() != (generated / name).read_bytes()


def test_negative_counts_are_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="num_val=-1"):
        synthetic.generate_synthetic_dataset(tmp_path, 2, -1)


@pytest.mark.parametrize("split, count", [("train", NUM_TRAIN), ("val", NUM_VAL)])
def test_annotations_are_valid_coco(generated: Path, split: str, count: int):
    coco = json.loads((generated / "annotations" / f"{split}.json").read_text())
    images = {image["id"]: image for image in coco["images"]}
    assert len(images) == count
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    category_ids = {c["id"] for c in coco["categories"]}
    assert len(category_ids) == len(synthetic.CATEGORIES) >= 5
    masks_per_image: dict[int, list[np.ndarray]] = {i: [] for i in images}
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        mask = rle_to_mask(annotation["segmentation"])
        assert mask.shape == (image["height"], image["width"])
        assert annotation["bbox"] == mask_to_box_xywh(mask)
        assert annotation["area"] == int(mask.sum()) >= synthetic.MIN_VISIBLE_AREA
        assert annotation["iscrowd"] == 0 and annotation["category_id"] in category_ids
        masks_per_image[image["id"]].append(mask)
    for image_id, masks in masks_per_image.items():
        image = images[image_id]
        assert 1 <= len(masks) <= synthetic.MAX_OBJECTS
        low, high = synthetic.IMAGE_SIDE_RANGE
        assert low <= image["height"] <= high and low <= image["width"] <= high
        rgb = _read_rgb(generated / split / image["file_name"])
        assert rgb.shape == (image["height"], image["width"], 3)
        # visible parts: occluded pixels belong to exactly one instance
        assert int(np.sum(masks, axis=0).max()) == 1


def test_scenes_repeat_categories_and_vary(generated: Path):
    coco = json.loads((generated / "annotations" / "train.json").read_text())
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    per_image_category = Counter((a["image_id"], a["category_id"]) for a in coco["annotations"])
    repeated = {image_id for (image_id, _), n in per_image_category.items() if n >= 2}
    assert len(repeated) >= NUM_TRAIN // 3
    assert len(set(per_image.values())) >= 4  # object counts vary
    assert len({a["category_id"] for a in coco["annotations"]}) == len(synthetic.CATEGORIES)
    sides = [np.sqrt(a["area"]) for a in coco["annotations"]]
    assert min(sides) < 20 and max(sides) > 60  # small and large objects


def test_objects_stand_out_from_background_by_saturation(generated: Path):
    """The learnability premise: objects are saturated, backgrounds are not."""
    coco = json.loads((generated / "annotations" / "train.json").read_text())
    inside, outside = [], []
    for image in coco["images"][:8]:
        rgb = _read_rgb(generated / "train" / image["file_name"])
        saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
        masks = [
            rle_to_mask(a["segmentation"])
            for a in coco["annotations"]
            if a["image_id"] == image["id"]
        ]
        foreground = np.any(masks, axis=0)
        inside.append(saturation[foreground].mean())
        outside.append(saturation[~foreground].mean())
    assert min(inside) > max(outside) + 40


def test_registered_synthetic_splits_load(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "synthetic").symlink_to(generated)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    train = DatasetCatalog.get("synthetic_train")
    assert len(train) == NUM_TRAIN
    assert Path(train[0]["file_name"]).is_file()
    assert {a["category_id"] for d in train for a in d["annotations"]} == {0}
    assert len(DatasetCatalog.get("synthetic_val")) == NUM_VAL


def test_make_synthetic_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tool = load_script("tools/make_synthetic.py")
    argv = ["--output", str(tmp_path), "--num-train", "2", "--num-val", "1", "--seed", "5"]
    assert tool.main(argv) == 0
    assert "wrote 2 train + 1 val images" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000000.png", "000001.png"]
    assert len(json.loads((tmp_path / "annotations" / "val.json").read_text())["images"]) == 1
    with pytest.raises(SystemExit):
        tool.main(["--output", str(tmp_path), "--num-train", "-1"])
