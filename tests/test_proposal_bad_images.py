"""tools/generate_proposals.py with the real SpectralProposalGenerator on every kind of odd or
broken file an image folder holds: each is handled at its decoded size or skipped by name."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data.datasets import register_coco_instances

from scripts import load_script
from uis_d2.data.image_io import BadImageError
from uis_d2.data.pseudo_labels import embedding_store_path
from uis_d2.features.patch_stats import PatchStats

REPO = Path(__file__).resolve().parents[1]
MAX_SIDE = 256
EXIF_ORIENTATION = 0x0112
OBJECT = [{"id": 1, "name": "object"}]
# file name -> (height, width) of the decoded image; None: must be skipped.
EXPECTED = {
    "cmyk.jpg": (40, 48),
    "constant.png": (40, 48),
    "deep16.png": (40, 48),
    "empty.png": None,
    "gray.png": (40, 48),
    "large.png": (2000, 3000),
    "not_an_image.jpg": None,
    "palette.png": (40, 48),
    "rgba.png": (40, 48),
    "rotated.jpg": (48, 40),  # EXIF orientation 6: stored 40x48, shown rotated by 90 degrees
    "tiny.png": (4, 4),  # smaller than one 8-pixel patch
    "truncated.jpg": None,
    "truncated.png": None,
}


def _scene(height: int, width: int) -> np.ndarray:
    """Two flat rectangles on a dark background: something to segment, cheap to compress."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (200, 40, 40)
    pixels[height // 2 :, width // 2 :] = (40, 200, 90)
    return pixels


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _write_files(root: Path) -> None:
    scene = _scene(40, 48)
    (root / "empty.png").write_bytes(b"")
    (root / "not_an_image.jpg").write_text("this is text, not a JPEG")
    png, jpeg = _encoded(scene, "PNG"), _encoded(scene, "JPEG")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    Image.fromarray(scene[..., 0]).save(root / "gray.png")
    alpha = np.full((40, 48, 1), 200, dtype=np.uint8)
    Image.fromarray(np.concatenate([scene, alpha], axis=2)).save(root / "rgba.png")
    Image.fromarray(scene[..., 1].astype(np.uint16) * 257).save(root / "deep16.png")
    Image.fromarray(scene).convert("P").save(root / "palette.png")
    Image.fromarray(scene).convert("CMYK").save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(scene).save(root / "rotated.jpg", exif=exif)
    Image.fromarray(_scene(4, 4)).save(root / "tiny.png")
    Image.fromarray(_scene(2000, 3000)).save(root / "large.png")
    Image.fromarray(np.full((40, 48, 3), 77, dtype=np.uint8)).save(root / "constant.png")


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("odd_images")
    _write_files(root)
    images = [
        {"id": i, "file_name": name, "height": 1, "width": 1}  # sizes are not trusted
        for i, name in enumerate(sorted(EXPECTED), start=1)
    ]
    json_file = root / "images.json"
    json_file.write_text(json.dumps({"images": images, "annotations": [], "categories": OBJECT}))
    name = f"uis_test_odd_images_{root.name}"
    register_coco_instances(name, {}, str(json_file), str(root))
    return name


def _generate(dataset: str, output: Path, *opts: str) -> None:
    module = load_script("tools/generate_proposals.py")
    config = str(REPO / "configs/proposals/synthetic.yaml")
    argv = ["--config-file", config, "--dataset", dataset, "--output", str(output)]
    argv += ["MODEL.DEVICE", "cpu", "PROPOSALS.NUM_WORKERS", "0", *opts]
    module.main(argv)


def test_every_file_is_handled_at_its_size_or_skipped_by_name(
    odd_images, tmp_path, monkeypatch, capsys
):
    input_sides = []
    original_extract = PatchStats.extract

    def recording_extract(self, images):
        input_sides.append(max(images.shape[-2:]))
        return original_extract(self, images)

    monkeypatch.setattr(PatchStats, "extract", recording_extract)
    output = tmp_path / "pseudo.json"
    _generate(odd_images, output, "PROPOSALS.MAX_SIDE", str(MAX_SIDE))

    data = json.loads(output.read_text())
    sizes = {image["file_name"]: (image["height"], image["width"]) for image in data["images"]}
    assert sizes == {name: size for name, size in EXPECTED.items() if size is not None}
    skipped = {entry["file_name"]: entry["reason"] for entry in data["info"]["skipped"]}
    assert set(skipped) == {name for name, size in EXPECTED.items() if size is None}
    assert all(skipped.values())

    by_id = {image["id"]: image for image in data["images"]}
    store = np.load(embedding_store_path(output))
    for annotation in data["annotations"]:
        image = by_id[annotation["image_id"]]
        assert annotation["segmentation"]["size"] == [image["height"], image["width"]]
        assert np.isfinite(store[annotation["emb_row"]]).all() and 0 <= annotation["score"] <= 1
    annotated = {by_id[a["image_id"]]["file_name"] for a in data["annotations"]}
    # Images with content get proposals (the large one too, from its capped feature grid).
    assert {"large.png", "rotated.jpg", "cmyk.jpg", "gray.png"} <= annotated
    # The 3000x2000 image reached the extractor at most MAX_SIDE pixels long.
    assert input_sides and max(input_sides) <= MAX_SIDE

    summary = capsys.readouterr().out
    assert f"{len(sizes)} written, {len(skipped)} skipped (of {len(EXPECTED)})" in summary
    for name in skipped:
        assert f"skipped {name}: " in summary


def test_fail_policy_stops_at_the_first_bad_file_naming_it(odd_images, tmp_path):
    output = tmp_path / "pseudo.json"
    with pytest.raises(BadImageError, match=r"empty\.png: empty file.*BAD_IMAGE_POLICY"):
        _generate(odd_images, output, "INPUT.BAD_IMAGE_POLICY", "fail", "PROPOSALS.MAX_SIDE", "64")
    assert not output.exists()
