"""ExternalMaps: saliency PNGs from a folder (COMUS's threshold and 400-px rule), their lookup
by nested file name, and missing maps under both bad-image policies, alone and through
tools/generate_proposals.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2)

# isort: split
from detectron2.data.datasets import register_coco_instances

from scripts import load_script
from uis_d2.config import get_cfg
from uis_d2.config.loading import ConfigError, load_config
from uis_d2.data.image_io import BadImageError
from uis_d2.foreground import build_foreground_provider
from uis_d2.foreground.external import ExternalMaps

REPO = Path(__file__).resolve().parents[1]


def _provider(directory: Path, policy: str = "skip", **overrides) -> ExternalMaps:
    settings = {"suffix": ".png", "thresh": 0.5, "min_pixels": 0, **overrides}
    return ExternalMaps(directory=str(directory), policy=policy, **settings)


def _save(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def _image(height: int, width: int) -> torch.Tensor:
    return torch.zeros((3, height, width), dtype=torch.uint8)


def test_built_from_config_with_comus_defaults(tmp_path):
    cfg = get_cfg()
    cfg.PROPOSALS.FOREGROUND.EXTERNAL.DIR = str(tmp_path)
    provider = build_foreground_provider(cfg, "ExternalMaps")
    assert isinstance(provider, ExternalMaps)
    assert (provider.thresh, provider.min_pixels, provider.policy) == (0.5, 400, "skip")
    assert provider.extractor is None
    assert provider.describe()["dir"] == str(tmp_path)


def test_a_missing_folder_and_bad_values_fail_naming_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="EXTERNAL.DIR = .*nowhere.*not a folder"):
        _provider(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="EXTERNAL.THRESH"):
        load_config(None, ["PROPOSALS.FOREGROUND.EXTERNAL.THRESH", "1.5"])
    with pytest.raises(ConfigError, match="EXTERNAL.MIN_PIXELS"):
        load_config(None, ["PROPOSALS.FOREGROUND.EXTERNAL.MIN_PIXELS", "-1"])


def test_threshold_is_value_over_255_at_least_thresh(tmp_path):
    _save(tmp_path / "x.png", np.tile(np.array([0, 127, 128, 255]), (4, 1)))
    (foreground,) = _provider(tmp_path)([_image(4, 4)], names=["x.jpg"])
    assert foreground.dtype == torch.bool
    assert foreground.tolist() == [[False, False, True, True]] * 4  # 127/255 < 0.5 <= 128/255
    (foreground,) = _provider(tmp_path, thresh=1.0)([_image(4, 4)], names=["x.jpg"])
    assert foreground[:, 3].all() and foreground.sum() == 4


def test_a_map_of_another_size_is_resized_to_the_image_by_nearest(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(10, 15))
    _save(tmp_path / "x.png", small)
    (foreground,) = _provider(tmp_path)([_image(20, 45)], names=["x.png"])
    expected = np.kron(small >= 128, np.ones((2, 3), dtype=bool))  # x2 rows, x3 columns
    assert foreground.shape == (20, 45)
    assert np.array_equal(foreground.numpy(), expected)


def test_maps_with_at_most_min_pixels_are_empty_counted_at_the_image_size(tmp_path):
    on = np.zeros((30, 30))
    on[:20, :20] = 255  # 400 pixels
    _save(tmp_path / "exactly.png", on)
    on[20, 0] = 255  # 401
    _save(tmp_path / "above.png", on)
    provider = _provider(tmp_path, min_pixels=400)
    exactly, above = provider([_image(30, 30)] * 2, names=["exactly.png", "above.png"])
    assert not exactly.any()
    assert above.sum() == 401
    # A 10 x 10 map of 100 salient pixels covers 400 pixels of a 20 x 20 image: empty too.
    _save(tmp_path / "small.png", np.full((10, 10), 255))
    (small,) = provider([_image(20, 20)], names=["small.png"])
    assert not small.any()


def test_nested_names_keep_their_folders_and_absolute_names_their_base_name(tmp_path):
    _save(tmp_path / "a/b/img.png", np.full((2, 2), 255))
    _save(tmp_path / "c/b/img.png", np.zeros((2, 2)))
    _save(tmp_path / "img_sal.png", np.full((2, 2), 255))
    provider = _provider(tmp_path)
    first, second = provider([_image(2, 2)] * 2, names=["a/b/img.jpg", "c/b/img.jpg"])
    assert first.all() and not second.any()
    assert provider.map_path("a/b/img.v2.jpg") == tmp_path / "a/b/img.v2.png"
    absolute = _provider(tmp_path, suffix="_sal.png")
    assert absolute.map_path("/elsewhere/photos/img.jpg") == tmp_path / "img_sal.png"
    (whole,) = absolute([_image(2, 2)], names=["/elsewhere/photos/img.jpg"])
    assert whole.all()


def test_without_names_it_says_what_it_needs(tmp_path):
    with pytest.raises(ValueError, match="file name of every image"):
        _provider(tmp_path)([_image(2, 2)])


def test_missing_or_unreadable_maps_are_skipped_and_named_or_fail(tmp_path, caplog):
    (tmp_path / "broken.png").write_text("not a png")
    provider = _provider(tmp_path, policy="skip")
    with caplog.at_level(logging.WARNING, logger="uis_d2.foreground"):
        missing, broken = provider([_image(3, 4)] * 2, names=["sub/gone.jpg", "broken.jpg"])
    assert missing.shape == (3, 4) and not missing.any() and not broken.any()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert str(tmp_path / "sub/gone.png") in messages[0] and "image sub/gone.jpg" in messages[0]
    assert str(tmp_path / "broken.png") in messages[1] and "image broken.jpg" in messages[1]
    with pytest.raises(BadImageError, match=r"sub/gone\.png: image file not found.*sub/gone\.jpg"):
        _provider(tmp_path, policy="fail")([_image(3, 4)], names=["sub/gone.jpg"])


# --- through tools/generate_proposals.py -------------------------------------------------------


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Two flat rectangles on a dark background, and their union (the map a saliency network
    would give)."""
    pixels = np.full((64, 80, 3), 20, dtype=np.uint8)
    pixels[8:32, 8:40] = (200, 40, 40)
    pixels[36:60, 44:76] = (40, 200, 90)
    return pixels, (pixels != 20).any(axis=2)


@pytest.fixture(scope="module")
def nested_dataset(tmp_path_factory) -> tuple[str, Path]:
    """Images a/x.png, b/x.png (same base name) and c/y.png; maps for a/x (the objects) and
    c/y (all background), none for b/x."""
    root = tmp_path_factory.mktemp("nested")
    pixels, union = _scene()
    names = ["a/x.png", "b/x.png", "c/y.png"]
    for name in names:
        _save(root / "images" / name, pixels)
    _save(root / "maps/a/x.png", union * 255)
    _save(root / "maps/c/y.png", np.zeros_like(union))
    images = [
        {"id": i, "file_name": name, "height": 64, "width": 80}
        for i, name in enumerate(names, start=1)
    ]
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    (root / "images.json").write_text(json.dumps(coco))
    dataset = f"uis_test_external_maps_{root.name}"
    register_coco_instances(dataset, {}, str(root / "images.json"), str(root / "images"))
    return dataset, root


def _generate(dataset: str, root: Path, output: Path, *opts: str) -> None:
    argv = ["--config-file", str(REPO / "configs/proposals/synthetic.yaml")]
    argv += ["--dataset", dataset, "--output", str(output), "MODEL.DEVICE", "cpu"]
    argv += ["PROPOSALS.NUM_WORKERS", "0", "PROPOSALS.SALIENCY.PROVIDERS", "['ExternalMaps']"]
    argv += ["PROPOSALS.FOREGROUND.EXTERNAL.DIR", str(root / "maps"), *opts]
    load_script("tools/generate_proposals.py").main(argv)


def test_proposal_runs_find_maps_by_nested_name_and_list_missing_ones(
    nested_dataset, tmp_path, capsys
):
    dataset, root = nested_dataset
    output = tmp_path / "pseudo.json"
    _generate(dataset, root, output)
    data = json.loads(output.read_text())
    by_name = {image["file_name"]: image["id"] for image in data["images"]}
    annotated = {annotation["image_id"] for annotation in data["annotations"]}
    # Only a/x has a salient region; b/x (no map) and c/y (empty map) keep no proposal.
    assert annotated == {by_name["a/x.png"]}
    assert data["info"]["skipped"] == []  # the images themselves were fine
    assert data["info"]["generator"]["foreground"]["provider"] == "ExternalMaps"
    summary = capsys.readouterr().out
    assert "foreground warnings: 1" in summary
    assert f"{root / 'maps/b/x.png'} of image b/x.png" in summary


def test_proposal_runs_stop_at_a_missing_map_under_fail(nested_dataset, tmp_path):
    dataset, root = nested_dataset
    output = tmp_path / "pseudo.json"
    with pytest.raises(BadImageError, match=r"maps/b/x\.png: image file not found"):
        _generate(dataset, root, output, "INPUT.BAD_IMAGE_POLICY", "fail")
    assert not output.exists()
