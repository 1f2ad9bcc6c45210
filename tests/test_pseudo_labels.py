"""The pseudo-label format's one home: encoding, the embedding store, compact per-rank records."""

import json
import pickle
import re

import cv2
import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat before detectron2)

# isort: split
from uis_d2.config import get_cfg
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.data.pseudo_labels import (
    EmbeddingStoreWriter,
    annotation_record,
    annotation_score,
    embedding_dim,
    embedding_store_path,
    encode_masks,
    file_header,
    load_compact_dataset,
    read_info,
)
from uis_d2.data.validation import check_coco_json, validate_coco_json
from uis_d2.utils.masks import mask_to_rle, rle_to_mask

# float16 keeps 11 significant bits: stored embeddings match to a relative 2^-11.
FLOAT16_RTOL = 2**-11


def _masks() -> torch.Tensor:
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[2, 4:6, 0:2] = True  # masks[1] stays empty
    return masks


def test_encode_masks_drops_empty_masks_and_keeps_columns_aligned():
    scores = np.array([0.9, 0.5, 0.1234567891], dtype=np.float32)
    embeddings = np.array([[1.0, 2.0], [3.0, 4.0], [0.123456789, -1.0]])
    extras = {"k": np.array([2, 3, 4], dtype=np.int32)}
    annotations = encode_masks(_masks(), scores, embeddings, extras)
    assert [a["k"] for a in annotations] == [2, 4]
    assert [a["area"] for a in annotations] == [8, 4]
    assert annotations[1]["bbox"] == [0.0, 4.0, 2.0, 2.0]
    np.testing.assert_array_equal(rle_to_mask(annotations[1]["segmentation"]), _masks()[2].numpy())
    # Rounded to keep COCO-scale files small: scores to 6 decimals, embeddings to 4.
    assert annotations[1]["score"] == pytest.approx(0.123457, abs=1e-9)
    assert annotations[1]["emb"] == [0.1235, -1.0]
    assert list(annotations[0]) == ["segmentation", "bbox", "area", "score", "emb", "k"]


def test_non_finite_numbers_become_null():
    annotations = encode_masks(_masks()[:1], np.array([0.5]), np.array([[np.nan, np.inf]]))
    assert annotations[0]["emb"] == [None, None]
    json.dumps(annotations, allow_nan=False)  # strict json


def _write_labels(path, images, embeddings_per_image, store: bool) -> dict:
    """A pseudo-label file of (id, mask stack) images, embeddings in a store or inline."""
    writer = EmbeddingStoreWriter(path) if store else None
    header_images, annotations = [], []
    for (image_id, masks), embeddings in zip(images, embeddings_per_image, strict=True):
        height, width = masks.shape[1:]
        header_images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width}
        )
        fields = encode_masks(masks, np.linspace(0.9, 0.5, len(masks)), embeddings)
        if writer is not None:
            writer.move_embeddings(fields)
        for field in fields:
            annotations.append(annotation_record(len(annotations) + 1, image_id, field))
    info = {"embedding_store": writer.finish()} if writer is not None else {}
    coco = {**file_header(info, header_images), "annotations": annotations}
    path.write_text(json.dumps(coco))
    return coco


def _random_images(count: int, seed: int = 0, size=(24, 32)) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    images, embeddings = [], []
    for image_id in range(1, count + 1):
        masks = torch.zeros((3, *size), dtype=torch.bool)
        for mask in masks:
            y, x = rng.integers(0, size[0] - 6), rng.integers(0, size[1] - 6)
            mask[y : y + rng.integers(3, 6), x : x + rng.integers(3, 6)] = True
        images.append((image_id * 10, masks))
        embeddings.append(rng.standard_normal((3, 5)))
    return images, embeddings


def test_store_rows_follow_the_annotations_and_round_trip_in_float16(tmp_path):
    images, embeddings = _random_images(4)
    coco = _write_labels(tmp_path / "labels.json", images, embeddings, store=True)
    store = np.load(embedding_store_path(tmp_path / "labels.json"))
    assert store.dtype == np.float16 and store.shape == (12, 5)
    assert [a["emb_row"] for a in coco["annotations"]] == list(range(12))
    expected = np.concatenate(embeddings).round(4)  # the json stage's 4 decimals
    np.testing.assert_allclose(store, expected, rtol=FLOAT16_RTOL, atol=1e-4)
    assert read_info(tmp_path / "labels.json")["embedding_store"] == {
        "file": "labels.emb.npy",
        "rows": 12,
        "dim": 5,
        "dtype": "float16",
    }
    assert embedding_dim(tmp_path / "labels.json") == 5


def test_inline_and_store_files_load_and_map_to_the_same_training_inputs(tmp_path):
    images, embeddings = _random_images(3)
    (tmp_path / "store").mkdir()
    (tmp_path / "inline").mkdir()
    _write_labels(tmp_path / "store/labels.json", images, embeddings, store=True)
    _write_labels(tmp_path / "inline/labels.json", images, embeddings, store=False)
    for image_id, masks in images:
        pixels = np.full((*masks.shape[1:], 3), 40 + image_id, dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"{image_id}.png"), pixels)
    from_store = load_compact_dataset(tmp_path / "store/labels.json", tmp_path)
    inline = load_compact_dataset(tmp_path / "inline/labels.json", tmp_path)
    assert [d["file_name"] for d in from_store] == [d["file_name"] for d in inline]
    assert "embedding_store" in from_store[0] and "embedding_store" not in inline[0]

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (24,), 32
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.SOLOV2.EMBED_DIM = 5
    cfg.INPUT.PSEUDO_MASKS.MIN_AREA = 1
    mapper = PseudoMaskDatasetMapper(cfg, is_train=True)
    for a, b in zip(from_store, inline, strict=True):
        mapped_a, mapped_b = mapper(a)["instances"], mapper(b)["instances"]
        assert torch.equal(mapped_a.gt_masks.tensor, mapped_b.gt_masks.tensor)
        assert torch.equal(mapped_a.gt_scores, mapped_b.gt_scores)
        # Both are float16 values: the store's rows, and inline lists packed as float16.
        assert torch.equal(mapped_a.gt_embeddings, mapped_b.gt_embeddings)
        assert mapped_a.gt_embeddings.shape == (3, 5)


def test_packed_annotations_read_and_pickle_like_a_list(tmp_path):
    images, embeddings = _random_images(1)
    _write_labels(tmp_path / "labels.json", images, embeddings, store=True)
    (record,) = load_compact_dataset(tmp_path / "labels.json", tmp_path)
    annotations = record["annotations"]
    masks = [rle_to_mask(a["segmentation"]) for a in annotations]
    np.testing.assert_array_equal(np.stack(masks), images[0][1].numpy())
    assert [a["emb_row"] for a in annotations] == [0, 1, 2]
    assert annotations[-1] == annotations[2] and len(list(annotations)) == 3
    with pytest.raises(IndexError):
        annotations[3]
    assert pickle.loads(pickle.dumps(annotations))[1] == annotations[1]


@pytest.mark.parametrize("damage", ["rows", "width", "missing"])
def test_validation_names_a_store_that_does_not_fit_its_file(tmp_path, damage):
    images, embeddings = _random_images(2)
    path = tmp_path / "labels.json"
    _write_labels(path, images, embeddings, store=True)
    store = embedding_store_path(path)
    assert check_coco_json(path, kind="pseudo").embedding_dim == 5
    rows = np.load(store)
    if damage == "rows":
        np.save(store, rows[:-1])
        expected = r"labels\.emb\.npy: holds 5 rows but 6 annotations name one"
    elif damage == "width":
        np.save(store, rows[:, :4])
        expected = r"labels\.emb\.npy: width 4, but the json's info says 5"
    else:
        store.unlink()
        expected = r"embedding store, which is missing: .*labels\.emb\.npy"
    report = validate_coco_json(path, kind="pseudo")
    assert not report.ok
    assert any(re.search(expected, problem) for problem in report.problems)


def test_problems_are_found_across_annotation_batches(tmp_path, monkeypatch):
    """Annotations are checked in batches (bounded memory): a file of many batches reports
    what it would as one batch, ids duplicated across batches included."""
    from uis_d2.data import validation

    monkeypatch.setattr(validation, "ANNOTATION_BATCH", 4)
    images, embeddings = _random_images(5)
    path = tmp_path / "labels.json"
    coco = _write_labels(path, images, embeddings, store=True)
    coco["annotations"][7]["bbox"] = [0, 0, 99, 99]  # in the second batch
    coco["annotations"][13]["id"] = 1  # a duplicate, met in the fourth batch
    path.write_text(json.dumps(coco))
    report = validate_coco_json(path, kind="pseudo")
    assert report.num_annotations == 15 and report.embedding_dim == 5
    assert any("annotation #7" in p and "'bbox'" in p for p in report.problems)
    assert any("id=1: field 'id' is duplicated" in p for p in report.problems)


def test_ground_truth_annotations_read_as_confident():
    assert annotation_score({"segmentation": {}}) == 1.0
    assert annotation_score({"score": 0.25}) == 0.25


@pytest.mark.parametrize("pad", [0, (1 << 20) - 20, (1 << 20) - 3, (1 << 20) + 5])
def test_embedding_dim_finds_the_first_inline_list_across_chunk_boundaries(tmp_path, pad):
    """The scanner reads 1 MiB chunks: a key or list cut by a chunk boundary still counts."""
    path = tmp_path / "labels.json"
    filler = "x" * pad
    path.write_text(
        json.dumps({"info": {"note": filler}, "annotations": [{"emb": [0.5] * 300, "score": 1}]})
    )
    assert embedding_dim(path) == 300
    path.write_text(json.dumps({"info": {"note": filler, "quoted": '"emb": [1]'}}))
    assert embedding_dim(path) is None  # a quoted key inside a string is no key


def test_per_rank_records_stay_compact_at_coco_mask_sizes(tmp_path):
    """What each rank keeps per image stays below the 8 KB/image target for 15 masks of 480x640
    with 768-d embeddings in the store, where the inline json made it ~108 KB."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    writer = EmbeddingStoreWriter(tmp_path / "labels.json")
    yy, xx = np.mgrid[:480, :640]
    for image_id in range(1, 61):
        images.append({"id": image_id, "file_name": "x.png", "height": 480, "width": 640})
        fields = []
        for _ in range(15):
            cy, cx, ry, rx = rng.uniform(40, 440), rng.uniform(40, 600), *rng.uniform(15, 90, 2)
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            fields.append({"segmentation": mask_to_rle(mask), "bbox": [0, 0, 1, 1], "score": 0.5})
        writer.add(fields, rng.standard_normal((15, 768)))
        annotations += [annotation_record(len(annotations) + 1, image_id, f) for f in fields]
    writer.finish()
    coco = {**file_header({}, images), "annotations": annotations}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    dataset = load_compact_dataset(tmp_path / "labels.json", tmp_path)
    assert len(dataset) == 60 and len(dataset[7]["annotations"]) == 15
    assert dataset.nbytes / len(dataset) < 8 * 1024, dataset.nbytes / len(dataset)
    # One pickled record per image, as detectron2's DatasetFromList keeps them.
    assert pickle.loads(pickle.dumps(dataset))[59]["image_id"] == 60


def test_annotations_out_of_image_order_load_to_the_same_records(tmp_path):
    """The project's files list annotations in image order (records are written at once);
    other files are read whole first, with the same result."""
    images, embeddings = _random_images(4)
    path = tmp_path / "labels.json"
    coco = _write_labels(path, images, embeddings, store=True)
    in_order = load_compact_dataset(path, tmp_path)
    coco["annotations"] = coco["annotations"][::-1]
    path.write_text(json.dumps(coco))
    shuffled = load_compact_dataset(path, tmp_path)
    assert len(shuffled) == len(in_order) == 4
    for a, b in zip(in_order, shuffled, strict=True):
        assert a["image_id"] == b["image_id"]
        rows = sorted(x["emb_row"] for x in b["annotations"])
        assert [x["emb_row"] for x in a["annotations"]] == rows


def test_images_without_masks_stay_for_labelling_and_leave_for_training(tmp_path):
    images, embeddings = _random_images(3)
    path = tmp_path / "labels.json"
    coco = _write_labels(path, images, embeddings, store=False)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 20]
    path.write_text(json.dumps(coco))
    dataset = load_compact_dataset(path, tmp_path)
    assert [d["image_id"] for d in dataset] == [10, 20, 30]
    assert [d["image_id"] for d in dataset.with_annotations()] == [10, 30]
    assert len(dataset[1]["annotations"]) == 0
