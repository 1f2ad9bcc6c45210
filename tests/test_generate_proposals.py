"""tools/generate_proposals.py and uis_d2.proposals.runner: output validity, resumption after
SIGKILL, multi-process equality, bad images and visualisations, with a fake colour generator."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.config import configurable
from detectron2.data.datasets import register_coco_instances

from scripts import load_script, sigkill_when
from uis_d2.config import load_config
from uis_d2.data.image_io import BadImageError
from uis_d2.data.pseudo_labels import embedding_store_path
from uis_d2.proposals.base import PSEUDO_MASK_GENERATOR_REGISTRY, ProposalGenerator, Proposals
from uis_d2.proposals.runner import generate_on_this_rank, prepare_job
from uis_d2.proposals.shards import ShardMismatchError, shard_dir_for
from uis_d2.proposals.visualize import save_proposal_grid
from uis_d2.utils.launch import launch
from uis_d2.utils.masks import mask_to_box_xywh, rle_to_mask

TOOL = Path(__file__).resolve().parents[1] / "tools" / "generate_proposals.py"
# Image ids in file order (deliberately unsorted); id 4 is a file that is not an image.
IMAGE_IDS = [5, 1, 4, 2, 6, 3]
BAD_IMAGE_ID = 4
GOOD_IDS = sorted(set(IMAGE_IDS) - {BAD_IMAGE_ID})
SOURCE_DATE_EPOCH = "1700000000"
DATE_CREATED = "2023-11-14T22:13:20+00:00"


class ColourThresholdGenerator(ProposalGenerator):
    """Masks: for each colour channel, the pixels where it is the largest and above 128.

    Trivially checkable from the image file; emb = mean colour inside the mask.
    """

    images_seen = 0  # per process, to check what a resumed run recomputes
    # Simulated interruption: after this many batches, "raise" or "hang" (to be SIGKILLed).
    stop_after_batches: int | None = None
    stop_by = "raise"

    @configurable
    def __init__(self) -> None:
        self.batches = 0

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {}

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        self.batches += 1
        if self.stop_after_batches is not None and self.batches > self.stop_after_batches:
            if self.stop_by == "hang":
                time.sleep(600)
            raise RuntimeError("simulated crash")
        type(self).images_seen += len(images)
        return [_colour_proposals(image.cpu().numpy()) for image in images]

    def describe(self) -> dict:
        return {"generator": "ColourThresholdGenerator", "checkpoint_sha256": None}

    def to(self, device: torch.device) -> ColourThresholdGenerator:
        return self


def _colour_proposals(image: np.ndarray) -> Proposals:
    channel = image.argmax(axis=0)
    masks = np.stack([(channel == c) & (image.max(axis=0) > 128) for c in range(3)])
    embeddings = np.stack(
        [image[:, m].mean(axis=1) / 255 if m.any() else np.zeros(3) for m in masks]
    )
    return Proposals(
        masks=masks,
        scores=np.array([0.9, 0.8, 0.7], dtype=np.float32),
        embeddings=embeddings.astype(np.float32),
        extras={"k": np.array([2, 3, 4]), "saliency_overlap": masks.mean(axis=(1, 2))},
        debug={"labels": {2: channel}, "saliency": image.mean(axis=0) / 255},
    )


if ColourThresholdGenerator.__name__ not in PSEUDO_MASK_GENERATOR_REGISTRY:
    PSEUDO_MASK_GENERATOR_REGISTRY.register(ColourThresholdGenerator)

CONFIG_YAML = """
VERSION: 2
MODEL:
  DEVICE: cpu  # also on GPU machines: the forked processes below must not touch CUDA
PROPOSALS:
  GENERATOR: ColourThresholdGenerator
  BATCH_SIZE: 2
  NUM_WORKERS: 0
"""


@pytest.fixture(scope="module")
def image_set(tmp_path_factory) -> tuple[str, Path]:
    """A registered COCO-style set of small PNGs of coloured rectangles plus one broken file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    images = []
    for i, image_id in enumerate(IMAGE_IDS):
        h, w = (24, 32) if i % 2 else (32, 24)
        name = f"img_{image_id}.png"
        if image_id == BAD_IMAGE_ID:
            (root / name).write_bytes(b"this is not a png")
        else:
            pixels = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
            for _ in range(3):
                y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
                pixels[y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
            Image.fromarray(pixels).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    json_file = root / "images.json"
    json_file.write_text(json.dumps(coco))
    (root / "config.yaml").write_text(CONFIG_YAML)
    name = f"uis_test_proposals_{root.name}"
    register_coco_instances(name, {}, str(json_file), str(root))
    return name, root


@pytest.fixture(autouse=True)
def reproducible_date(monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)


def _config(image_set: tuple[str, Path], opts=()):
    return load_config(image_set[1] / "config.yaml", list(opts))


def _generate(image_set: tuple[str, Path], output: Path, opts=(), num_vis: int = 0):
    job = prepare_job(image_set[0], output, num_vis=num_vis)
    return generate_on_this_rank(_config(image_set, opts), job)


def _interrupt_after_one_batch(image_set: tuple[str, Path], output: Path, monkeypatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(ColourThresholdGenerator, "stop_after_batches", 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            _generate(image_set, output)
    assert not output.exists()


def _load_tool():
    return load_script("tools/generate_proposals.py")


@pytest.fixture(scope="module")
def reference(image_set, tmp_path_factory) -> Path:
    """An uninterrupted single-process run through the command line, drawing the first two ids."""
    output = tmp_path_factory.mktemp("reference") / "pseudo.json"
    dataset, root = image_set
    argv = ["--config-file", str(root / "config.yaml"), "--dataset", dataset]
    argv += ["--output", str(output), "--vis", "2", "PROPOSALS.SEED", "0"]
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        _load_tool().main(argv)
    return output


def test_output_is_valid_coco_with_provenance(reference, image_set):
    data = json.loads(reference.read_text())
    assert list(data) == ["info", "images", "categories", "annotations"]
    assert data["categories"] == [{"id": 1, "name": "object"}]
    assert [im["id"] for im in data["images"]] == GOOD_IDS
    info = data["info"]
    assert info["skipped"] == [
        {
            "image_id": BAD_IMAGE_ID,
            "file_name": f"img_{BAD_IMAGE_ID}.png",
            "reason": info["skipped"][0]["reason"],
        }
    ]
    assert "not an image" in info["skipped"][0]["reason"]
    assert info["generator"] == ColourThresholdGenerator().describe()
    assert "GENERATOR: ColourThresholdGenerator" in info["config"]
    assert info["date_created"] == DATE_CREATED
    assert info["uis_d2_version"] == uis_d2.__version__
    assert info["image_root"] == str(image_set[1])
    assert not shard_dir_for(reference).exists()

    annotations = data["annotations"]
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    # Embeddings live in the float16 store beside the json, a row per annotation, in id order.
    store = np.load(embedding_store_path(reference))
    assert store.dtype == np.float16 and store.shape == (len(annotations), 3)
    assert info["embedding_store"] == {
        "file": "pseudo.emb.npy",
        "rows": len(annotations),
        "dim": 3,
        "dtype": "float16",
    }
    assert [a["image_id"] for a in annotations] == sorted(a["image_id"] for a in annotations)
    for image in data["images"]:
        assert image["file_name"] == f"img_{image['id']}.png"  # relative to image_root
        pixels = np.asarray(Image.open(image_set[1] / image["file_name"])).transpose(2, 0, 1)
        assert (image["height"], image["width"]) == pixels.shape[1:]
        expected = [m for m in _colour_proposals(pixels).masks if m.any()]
        mine = [a for a in annotations if a["image_id"] == image["id"]]
        assert len(mine) == len(expected)
        for annotation, expected_mask in zip(mine, expected):
            mask = rle_to_mask(annotation["segmentation"])
            assert np.array_equal(mask, expected_mask)
            assert annotation["bbox"] == mask_to_box_xywh(mask)
            assert annotation["area"] == int(mask.sum())
            assert annotation["category_id"] == 1 and annotation["iscrowd"] == 0
            assert "emb" not in annotation and annotation["emb_row"] == annotation["id"] - 1
            mean_colour = pixels[:, expected_mask].mean(axis=1) / 255
            # float16 keeps 11 significant bits: a relative error below 2^-11 (after the
            # shard lines' rounding to 4 decimals).
            np.testing.assert_allclose(
                store[annotation["emb_row"]], mean_colour, rtol=2**-11, atol=1e-4
            )
            assert annotation["k"] in (2, 3, 4) and 0 < annotation["saliency_overlap"] <= 1


def test_vis_writes_a_grid_for_the_first_ids(reference):
    vis_dir = reference.with_name("pseudo_vis")
    assert sorted(p.name for p in vis_dir.iterdir()) == ["1.png", "2.png"]
    with Image.open(vis_dir / "1.png") as grid:
        assert grid.width > 200 and grid.height > 100


def test_vis_tolerates_missing_and_odd_debug_entries(tmp_path):
    image = np.zeros((16, 20, 3), dtype=np.uint8)
    masks = np.zeros((1, 16, 20), dtype=bool)
    for debug in (
        {},
        {"note": "text", "scalar": 3.0, "stack": np.zeros((2, 4, 5), dtype=np.int64)},
    ):
        proposals = Proposals(masks, np.ones(1), np.ones((1, 2)), debug=debug)
        path = tmp_path / f"{len(debug)}.png"
        save_proposal_grid(path, image, proposals, title="test")
        with Image.open(path) as grid:
            assert grid.format == "PNG"


def _generate_until_hung(image_set: tuple[str, Path], output: Path) -> None:
    """Runs in a forked child: one batch reaches the shard, then the generator hangs."""
    ColourThresholdGenerator.stop_after_batches = 1
    ColourThresholdGenerator.stop_by = "hang"
    _generate(image_set, output)


def test_resume_after_sigkill_gives_identical_bytes(reference, image_set, tmp_path):
    output = tmp_path / "pseudo.json"
    shard = shard_dir_for(output) / "rank0.jsonl"
    # A forked child is a real process to SIGKILL, without re-importing torch and detectron2.
    child = multiprocessing.get_context("fork").Process(
        target=_generate_until_hung, args=(image_set, output)
    )
    sigkill_when(
        child,
        lambda: shard.exists() and shard.read_bytes().endswith(b"\n"),
        timeout=60,
        what="the first batch reaching the shard",
    )
    assert not output.exists()
    assert len(shard.read_bytes().splitlines()) == 2  # exactly the first batch
    with open(shard, "ab") as f:  # a torn line, as if the kill had hit mid-write
        f.write(b'{"image_id":3,"file_name":"img_3.pn')

    ColourThresholdGenerator.images_seen = 0
    summary = _generate(image_set, output)
    assert summary.resumed == 2
    assert ColourThresholdGenerator.images_seen == len(GOOD_IDS) - 2
    assert output.read_bytes() == reference.read_bytes()
    store = embedding_store_path(output)
    assert store.read_bytes() == embedding_store_path(reference).read_bytes()


def test_two_processes_resuming_one_process_shards_match_uninterrupted(
    reference, image_set, tmp_path, monkeypatch
):
    output = tmp_path / "pseudo.json"
    _interrupt_after_one_batch(image_set, output, monkeypatch)
    args = (_config(image_set), prepare_job(image_set[0], output))
    assert pickle.loads(pickle.dumps(args)) == args  # what the default "spawn" start needs
    launch(generate_on_this_rank, 2, args=args, backend="gloo", start_method="fork")
    assert output.read_bytes() == reference.read_bytes()
    store = embedding_store_path(output)
    assert store.read_bytes() == embedding_store_path(reference).read_bytes()


def test_resume_with_a_different_config_is_refused(image_set, tmp_path, monkeypatch):
    output = tmp_path / "pseudo.json"
    _interrupt_after_one_batch(image_set, output, monkeypatch)
    with pytest.raises(ShardMismatchError, match=r"PROPOSALS\.NMS_THRESH: 0\.8"):
        _generate(image_set, output, opts=["PROPOSALS.NMS_THRESH", "0.5"])


def test_bad_image_policy_fail_names_the_file(image_set, tmp_path):
    with pytest.raises(BadImageError, match=f"img_{BAD_IMAGE_ID}.png"):
        _generate(image_set, tmp_path / "pseudo.json", opts=["INPUT.BAD_IMAGE_POLICY", "fail"])


def test_limit_takes_the_first_image_ids(image_set, tmp_path):
    job = prepare_job(image_set[0], tmp_path / "out.json", limit=3)
    assert [r.image_id for r in job.records] == [1, 2, 3]
    assert [r.file_name for r in job.records] == ["img_1.png", "img_2.png", "img_3.png"]
