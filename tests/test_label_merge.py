"""CutLER's next-round labels on constructed predictions (uis_d2.data.label_merge), and the
self-training keys that choose them."""

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog

from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.data.label_merge import PreviousLabels, uncovered
from uis_d2.data.pseudo_labels import encode_masks, pop_embeddings
from uis_d2.engine.self_training import round_score_thresh
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle

H, W = 20, 40


def _mask(x0: int, x1: int) -> np.ndarray:
    """Rows 0-9, columns x0..x1-1."""
    mask = np.zeros((H, W), dtype=bool)
    mask[:10, x0:x1] = True
    return mask


# One prediction covers columns 0-9. IoU with it: 0.6 / exactly 0.5 / 0.4 / 0 / (crowd).
PREDICTED = [_mask(0, 10)]
PREVIOUS = [_mask(0, 6), _mask(0, 5), _mask(0, 4), _mask(20, 30), _mask(30, 40)]


def _previous_annotation(mask: np.ndarray, score: float, emb=None, crowd: int = 0) -> dict:
    annotation = {"segmentation": mask_to_rle(mask), "score": score, "iscrowd": crowd}
    if emb is not None:
        annotation["emb"] = emb
    return annotation


def _predictions(masks, embeddings=None) -> list[dict]:
    scores = np.linspace(0.9, 0.8, len(masks))
    return encode_masks(torch.from_numpy(np.stack(masks)), scores, embeddings)


def _register(name: str, annotations: list[dict]) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    record = {"file_name": "a.png", "height": H, "width": W, "annotations": annotations}
    DatasetCatalog.register(name, lambda: [record])


def _record(annotations, embeddings) -> dict:
    return {
        "file_name": "a.png",
        "height": H,
        "width": W,
        "annotations": annotations,
        "embeddings": embeddings,
    }


def test_uncovered_keeps_masks_below_the_iou_with_every_prediction():
    previous = [mask_to_rle(m) for m in PREVIOUS]
    predicted = [mask_to_rle(m) for m in PREDICTED]
    assert uncovered(previous, predicted, 0.5) == [2, 3, 4]  # 0.5 itself is covered
    assert uncovered(previous, [], 0.5) == [0, 1, 2, 3, 4]  # no prediction covers anything
    assert uncovered([], predicted, 0.5) == []


def test_merge_appends_uncovered_previous_masks_with_their_scores_and_embeddings():
    embeddings = [[float(i), 1.0] for i in range(len(PREVIOUS))]
    _register(
        "merge_case",
        [
            _previous_annotation(m, 0.1 * (i + 1), embeddings[i], crowd=int(i == 4))
            for i, m in enumerate(PREVIOUS)
        ],
    )
    predicted = _predictions(PREDICTED, np.array([[7.0, 7.0]]))
    predicted_rows = pop_embeddings(predicted)
    merged = PreviousLabels(["merge_case"], 0.5).merge(_record(predicted, predicted_rows), 2)

    annotations = merged["annotations"]
    # The prediction first, then previous masks 2 and 3 (4 is a crowd region: never a label).
    assert annotations[0] == predicted[0]
    assert [a["score"] for a in annotations[1:]] == pytest.approx([0.3, 0.4])
    for annotation, mask in zip(annotations[1:], [PREVIOUS[2], PREVIOUS[3]], strict=True):
        assert annotation["segmentation"] == mask_to_rle(mask)
        assert annotation["bbox"] == mask_to_box_xywh(mask)
        assert annotation["area"] == int(mask.sum())
    assert merged["embeddings"].dtype == np.float16
    assert merged["embeddings"].tolist() == [[7.0, 7.0], [2.0, 1.0], [3.0, 1.0]]


def test_embeddings_follow_the_model():
    _register("merge_embeddings", [_previous_annotation(PREVIOUS[3], 1.0, [1.0, 2.0])])
    previous = PreviousLabels(["merge_embeddings"], 0.5)
    predicted = _predictions(PREDICTED)
    # A model without embedding head (R-CNN): the merged labels carry none.
    assert previous.merge(_record(predicted, None), None)["embeddings"] is None
    # An image without predictions of a model with one: the added masks' rows alone.
    merged = previous.merge(_record([], None), 2)
    assert len(merged["annotations"]) == 1 and merged["embeddings"].tolist() == [[1.0, 2.0]]
    # Rows of another width cannot join the predicted ones: the image keeps none, counted.
    assert previous.merge(_record([], None), 3)["embeddings"] is None
    assert previous.num_without_embeddings == 1 and previous.num_added == 3


def test_images_the_previous_labels_do_not_list_are_left_as_predicted():
    _register("merge_other_image", [])
    record = _record(_predictions(PREDICTED), None)
    assert PreviousLabels(["merge_other_image"], 0.5).merge(record, None) == record


def test_per_round_thresholds_and_their_checks():
    cfg = load_config(
        None, ["SELF_TRAINING.ROUNDS", "3", "SELF_TRAINING.SCORE_THRESHS", "[0.7, 0.65]"]
    )
    assert [round_score_thresh(cfg, r) for r in (1, 2)] == [0.7, 0.65]
    cfg = load_config(None, ["SELF_TRAINING.SCORE_THRESH", "0.3"])
    assert round_score_thresh(cfg, 1) == 0.3
    with pytest.raises(ConfigError, match=r"SELF_TRAINING.SCORE_THRESHS.*ROUNDS - 1 = 2"):
        load_config(None, ["SELF_TRAINING.ROUNDS", "3", "SELF_TRAINING.SCORE_THRESHS", "[0.7]"])
    with pytest.raises(ConfigError, match=r"SELF_TRAINING.MERGE.*one of \['none', 'cutler'\]"):
        load_config(None, ["SELF_TRAINING.MERGE", "'union'"])
    with pytest.raises(ConfigError, match=r"MODEL.ROI_HEADS.DROPLOSS.IOU_THRESH.*\[0, 1\]"):
        load_config(None, ["MODEL.ROI_HEADS.DROPLOSS.IOU_THRESH", "1.5"])
    with pytest.raises(ConfigError, match=r"MODEL.SOLOV2.EMBED_DIM.*EMBEDDINGS True"):
        load_config(None, ["MODEL.SOLOV2.EMBED_DIM", "8", "INPUT.PSEUDO_MASKS.EMBEDDINGS", "False"])
