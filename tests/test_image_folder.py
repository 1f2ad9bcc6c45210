"""Image folders as datasets (uis_d2/data/image_folder.py): listing, stable ids, unreadable
files, and a folder's way through tools/generate_proposals.py into tools/train_net.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from training_cases import tiny_training_cfg

from scripts import REPO, load_script
from uis_d2.config.loading import ConfigError
from uis_d2.data.image_folder import (
    ensure_dataset,
    folder_image_id,
    list_images,
    load_image_folder,
)
from uis_d2.data.image_io import BadImageError
from uis_d2.data.synthetic import render_scene
from uis_d2.data.validation import check_coco_json
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.proposals.runner import prepare_job

GOOD = ["a/b/deep.png", "a/mid.jpg", "top.PNG"]  # sorted by relative path
BROKEN = "z/broken.jpg"
IGNORED = ["notes.txt", "a/labels.json", ".hidden/x.png", "a/._mid.jpg"]


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def _tiny(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (12, 20, 3), dtype=np.uint8)


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """Three tiny images in nested folders, files to ignore, and a broken .jpg."""
    root = tmp_path / "photos"
    for seed, name in enumerate(GOOD):
        _save(root / name, _tiny(seed))
    for name in IGNORED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not an image")
    (root / BROKEN).parent.mkdir(parents=True, exist_ok=True)
    (root / BROKEN).write_bytes(b"not a JPEG either")
    return root


def _ids(root: Path) -> dict[str, int]:
    return {
        Path(d["file_name"]).relative_to(root).as_posix(): d["image_id"]
        for d in load_image_folder(root)
    }


def test_listing_recurses_sorts_and_ignores_other_files(small_folder):
    listed = [p.relative_to(small_folder).as_posix() for p in list_images(small_folder)]
    assert listed == [*GOOD, BROKEN]


def test_ids_are_stable_across_listings_moves_and_added_files(small_folder, tmp_path):
    ids = _ids(small_folder)
    assert ids == _ids(small_folder)
    assert ids == {name: folder_image_id(name) for name in [*GOOD, BROKEN]}
    assert len(set(ids.values())) == len(ids) and all(0 < i < 2**63 for i in ids.values())
    _save(small_folder / "a/added.png", _tiny(9))  # sorts between existing files
    grown = _ids(small_folder)
    assert {k: grown[k] for k in ids} == ids and len(grown) == len(ids) + 1
    moved = tmp_path / "elsewhere"
    shutil.move(small_folder, moved)
    assert _ids(moved) == grown


def test_sizes_come_from_the_headers(small_folder):
    for record in load_image_folder(small_folder):
        if not record["file_name"].endswith(BROKEN):
            assert (record["height"], record["width"]) == (12, 20)


def test_unreadable_image_follows_the_bad_image_policy(small_folder):
    broken = next(d for d in load_image_folder(small_folder) if d["file_name"].endswith(BROKEN))
    assert "height" not in broken  # kept: the stage that decodes it names it (skip policy)
    with pytest.raises(BadImageError, match=r"broken\.jpg.*INPUT\.BAD_IMAGE_POLICY is 'fail'"):
        load_image_folder(small_folder, bad_image_policy="fail")


@pytest.mark.parametrize("content", [[], ["readme.txt", "sub/data.csv"]])
def test_a_folder_without_images_is_an_error_naming_it(tmp_path, content):
    root = tmp_path / "empty"
    root.mkdir()
    for name in content:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    with pytest.raises(FileNotFoundError, match=f"no image files .* under {root}"):
        list_images(root)
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path / 'nope'} not found"):
        list_images(tmp_path / "nope")


def test_specs_register_lazily_and_unknown_names_fail(small_folder, monkeypatch):
    monkeypatch.chdir(small_folder.parent)
    spec = "folder:photos"
    assert ensure_dataset(spec) == spec
    metadata = MetadataCatalog.get(spec)
    assert metadata.image_root == str(small_folder) and metadata.thing_classes == ["object"]
    assert metadata.evaluator_type == "class_agnostic"
    assert len(DatasetCatalog.get(spec)) == len(GOOD) + 1
    with pytest.raises(KeyError, match="no_such_dataset"):
        ensure_dataset("no_such_dataset")
    assert ensure_dataset("synthetic_val") == "synthetic_val"  # registered: left as it is


def test_limit_takes_the_smallest_ids_of_a_folder(small_folder):
    spec = ensure_dataset(f"folder:{small_folder}")
    job = prepare_job(spec, small_folder.parent / "out.json", limit=2)
    expected = sorted(_ids(small_folder).items(), key=lambda item: item[1])[:2]
    assert [(r.file_name, r.image_id) for r in job.records] == expected


# --- a folder through generate_proposals and train_net -----------------------------------------


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory) -> Path:
    """Synthetic scenes written as plain files in nested folders, with no json, and a broken
    file among them."""
    root = tmp_path_factory.mktemp("scenes") / "my photos"
    for index, name in enumerate(["one.png", "trip/two.jpg", "trip/day2/three.png"]):
        rgb, _ = render_scene(np.random.default_rng([7, index]))
        _save(root / name, rgb[:160, :160])
    (root / "trip/broken.jpg").write_bytes(b"truncated download")
    (root / "trip/notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder_proposals(scene_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("proposals") / "pseudo.json"
    argv = ["--config-file", str(REPO / "configs/proposals/synthetic.yaml")]
    argv += ["--dataset", f"folder:{scene_folder}", "--output", str(output), "--limit", "4"]
    argv += ["MODEL.DEVICE", "cpu", "PROPOSALS.NUM_WORKERS", "0"]
    load_script("tools/generate_proposals.py").main(argv)
    return output


def test_generate_proposals_on_a_folder_writes_relative_names(folder_proposals, scene_folder):
    data = json.loads(folder_proposals.read_text())
    info = data["info"]
    assert info["dataset"] == f"folder:{scene_folder}"
    assert info["image_root"] == str(scene_folder)
    names = {image["file_name"]: image["id"] for image in data["images"]}
    assert names == {
        name: folder_image_id(name) for name in ["one.png", "trip/day2/three.png", "trip/two.jpg"]
    }
    assert [s["file_name"] for s in info["skipped"]] == ["trip/broken.jpg"]
    assert data["annotations"]
    report = check_coco_json(folder_proposals, images_dir=scene_folder, kind="pseudo")
    assert report.ok, report.summary()


def test_bad_image_policy_fail_stops_before_any_work(scene_folder, tmp_path):
    output = tmp_path / "pseudo.json"
    argv = ["--config-file", str(REPO / "configs/proposals/synthetic.yaml")]
    argv += ["--dataset", f"folder:{scene_folder}", "--output", str(output)]
    argv += ["MODEL.DEVICE", "cpu", "INPUT.BAD_IMAGE_POLICY", "fail"]
    with pytest.raises(BadImageError, match=r"trip/broken\.jpg"):
        load_script("tools/generate_proposals.py").main(argv)
    assert not list(tmp_path.iterdir())  # no output, no shards


def test_train_net_trains_on_a_folders_pseudo_labels(folder_proposals, tmp_path):
    cfg = tiny_training_cfg(tmp_path / "out", max_iter=1)
    cfg.DATASETS.TRAIN = (f"pseudo:{folder_proposals}",)
    cfg.DATASETS.TEST = ()
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_script("tools/train_net.py").cli(["--config-file", str(config)])
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "out/round1/model_final.pth").is_file()
    embed_dim = json.loads(folder_proposals.read_text())["info"]["embedding_store"]["dim"]
    saved = (tmp_path / "out/round1/config.yaml").read_text()
    assert f"EMBED_DIM: {embed_dim}" in saved  # sized from the folder's pseudo-labels


def test_a_folder_in_datasets_train_says_how_to_get_pseudo_labels(scene_folder, tmp_path):
    cfg = tiny_training_cfg(tmp_path)
    cfg.DATASETS.TRAIN = (f"folder:{scene_folder}",)
    with pytest.raises(ConfigError, match="generate_proposals.py --dataset folder:"):
        prepare_run_config(cfg)
