"""The pseudo-label format's one home: encoding, the file's layout, reading it back."""

import json

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat before detectron2)
from uis_d2.data import pseudo_labels
from uis_d2.data.pseudo_labels import (
    CATEGORIES,
    annotation_embedding,
    annotation_record,
    annotation_score,
    embedding_dim,
    encode_masks,
    extra_annotation_keys,
    file_header,
)
from uis_d2.data.validation import check_coco_json
from uis_d2.utils.masks import rle_to_mask


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


def test_a_written_file_validates_and_reads_back(tmp_path):
    fields = encode_masks(_masks(), np.array([0.9, 0.5, 0.7]), np.ones((3, 4)))
    images = [{"id": 5, "file_name": "a.png", "height": 6, "width": 8}]
    coco = file_header({"description": "test"}, images)
    coco["annotations"] = [annotation_record(i, 5, f) for i, f in enumerate(fields, start=1)]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(coco))
    report = check_coco_json(path, kind="pseudo")
    assert report.embedding_dim == 4 and report.num_annotations == 2
    data = pseudo_labels.read_pseudo_labels(path)
    assert data["categories"] == CATEGORIES
    assert {a["category_id"] for a in data["annotations"]} == {pseudo_labels.OBJECT_CATEGORY_ID}
    assert extra_annotation_keys(path) == ["emb", "score"]
    assert embedding_dim(path) == 4


def test_ground_truth_annotations_read_as_confident_and_without_embedding():
    assert annotation_score({"segmentation": {}}) == 1.0
    assert annotation_embedding({"segmentation": {}}) is None
    assert annotation_score({"score": 0.25}) == 0.25


@pytest.mark.parametrize("pad", [0, (1 << 20) - 20, (1 << 20) - 3, (1 << 20) + 5])
def test_embedding_dim_finds_the_first_list_across_chunk_boundaries(tmp_path, pad):
    """The scanner reads 1 MiB chunks: a key or list cut by a chunk boundary still counts."""
    path = tmp_path / "labels.json"
    filler = "x" * pad
    path.write_text(
        json.dumps({"info": {"note": filler}, "annotations": [{"emb": [0.5] * 300, "score": 1}]})
    )
    assert embedding_dim(path) == 300
    path.write_text(json.dumps({"info": {"note": filler, "quoted": '"emb": [1]'}}))
    assert embedding_dim(path) is None  # a quoted key inside a string is no key


def test_read_pseudo_labels_names_a_broken_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"pseudo-label json .*labels\.json"):
        pseudo_labels.read_pseudo_labels(path)
