"""PseudoMaskDatasetMapper: output format, filtering, copy-paste, bad images, worker processes."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import build_detection_train_loader

from uis_d2.config import get_cfg
from uis_d2.data.image_io import BadImageError
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.utils.masks import mask_to_rle, masks_to_boxes_xyxy

EMBEDDING_DIM = 4


def _annotation(mask, score, embedding):
    return {
        "segmentation": mask_to_rle(mask),
        "bbox": [0, 0, 1, 1],
        "bbox_mode": 1,
        "category_id": 0,
        "iscrowd": 0,
        "score": score,
        "emb": embedding,
    }


def _write_image(path, h, w, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _record(tmp_path, index, h=32, w=48):
    """One image with a large mask, a low-score mask and a tiny mask."""
    path = tmp_path / f"img{index}.png"
    _write_image(path, h, w, index)
    big = np.zeros((h, w), bool)
    big[4:20, 6:30] = True
    other = np.zeros((h, w), bool)
    other[22:30, 30:46] = True
    tiny = np.zeros((h, w), bool)
    tiny[0, 0:3] = True
    embedding = [float(index), 1.0, 2.0, 3.0]
    return {
        "file_name": str(path),
        "image_id": index,
        "height": h,
        "width": w,
        "annotations": [
            _annotation(big, 0.9, embedding),
            _annotation(other, 0.2, embedding),
            _annotation(tiny, 0.95, embedding),
        ],
    }


def _cfg(copy_paste_prob=0.0):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.PSEUDO_MASKS.MIN_SCORE = 0.5
    cfg.INPUT.PSEUDO_MASKS.MIN_AREA = 5
    cfg.INPUT.COPY_PASTE.ENABLED = copy_paste_prob > 0
    cfg.INPUT.COPY_PASTE.PROB = copy_paste_prob
    cfg.MODEL.SOLOV2.EMBED_DIM = EMBEDDING_DIM
    return cfg


def _assert_boxes_match_masks(instances):
    masks = instances.gt_masks.tensor
    assert masks.dtype == torch.bool
    torch.testing.assert_close(instances.gt_boxes.tensor, masks_to_boxes_xyxy(masks))
    assert masks.flatten(1).any(dim=1).all()


def test_training_output_format_and_filtering(tmp_path):
    record = _record(tmp_path, 0)
    mapper = PseudoMaskDatasetMapper(_cfg(), is_train=True)
    out = mapper(record)

    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 96)
    assert (out["height"], out["width"]) == (32, 48)
    instances = out["instances"]
    # Only the large mask survives: one is under MIN_SCORE, the other under MIN_AREA.
    assert len(instances) == 1
    assert instances.image_size == (64, 96)
    assert instances.gt_classes.tolist() == [0]
    assert instances.gt_scores.tolist() == pytest.approx([0.9])
    assert (
        instances.gt_embeddings.shape == (1, EMBEDDING_DIM)
        and instances.gt_embeddings.dtype == torch.float32
    )
    # The mask is resized with the image (x2): rows 4..20 -> 8..40, cols 6..30 -> 12..60.
    assert instances.gt_boxes.tensor.tolist() == [[12.0, 8.0, 60.0, 40.0]]
    _assert_boxes_match_masks(instances)
    # The caller's dict is not modified (detectron2 may hand the same dict out again).
    assert len(record["annotations"]) == 3


def test_bgr_and_rgb_read_the_same_pixels_in_opposite_order(tmp_path):
    record = _record(tmp_path, 0)
    rgb_cfg, bgr_cfg = _cfg(), _cfg()
    rgb_cfg.INPUT.FORMAT = "RGB"
    bgr_cfg.INPUT.FORMAT = "BGR"
    rgb = PseudoMaskDatasetMapper(rgb_cfg, is_train=False)(record)["image"]
    bgr = PseudoMaskDatasetMapper(bgr_cfg, is_train=False)(record)["image"]
    torch.testing.assert_close(rgb, bgr.flip(0))


def test_inference_output_has_no_instances(tmp_path):
    out = PseudoMaskDatasetMapper(_cfg(), is_train=False)(_record(tmp_path, 0))
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, 64, 96)


def test_copy_paste_keeps_scores_embeddings_and_boxes_aligned(tmp_path):
    records = [_record(tmp_path, i) for i in range(3)]
    mapper = PseudoMaskDatasetMapper(_cfg(copy_paste_prob=1.0), True, copy_paste_sources=records)
    np.random.seed(0)
    pasted_any = False
    for _ in range(6):
        instances = mapper(records[0])["instances"]
        n = len(instances)
        assert instances.gt_scores.shape == (n,) and instances.gt_embeddings.shape == (
            n,
            EMBEDDING_DIM,
        )
        _assert_boxes_match_masks(instances)
        pasted_any |= n > 1 or instances.gt_embeddings[:, 0].ne(0).any().item()
    assert pasted_any, "copy-paste with PROB 1 never pasted anything"


def test_bad_training_image_is_skipped_or_fails_per_policy(tmp_path, caplog):
    record = _record(tmp_path, 0)
    (tmp_path / "img0.png").write_bytes(b"")
    cfg = _cfg()
    with caplog.at_level(logging.WARNING):
        assert PseudoMaskDatasetMapper(cfg, is_train=True)(record) is None
    assert "img0.png" in caplog.text

    cfg.INPUT.BAD_IMAGE_POLICY = "fail"
    with pytest.raises(BadImageError, match="img0.png"):
        PseudoMaskDatasetMapper(cfg, is_train=True)(record)
    # Inference never drops an image silently.
    with pytest.raises(BadImageError):
        PseudoMaskDatasetMapper(_cfg(), is_train=False)(record)


def test_rle_size_mismatch_names_the_file(tmp_path):
    record = _record(tmp_path, 0)
    record["height"], record["width"] = 32, 48
    record["annotations"][0]["segmentation"] = mask_to_rle(np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="img0.png"):
        PseudoMaskDatasetMapper(_cfg(), is_train=True)(record)


def test_train_loader_with_two_workers(tmp_path):
    records = [_record(tmp_path, i) for i in range(4)]
    cfg = _cfg(copy_paste_prob=0.5)
    mapper = PseudoMaskDatasetMapper(cfg, is_train=True, copy_paste_sources=records)
    loader = build_detection_train_loader(
        records, mapper=mapper, total_batch_size=2, aspect_ratio_grouping=False, num_workers=2
    )
    seen = set()
    for step, batch in enumerate(loader):
        assert len(batch) == 2
        for item in batch:
            assert item["image"].shape == (3, 64, 96)
            _assert_boxes_match_masks(item["instances"])
            seen.add(item["image_id"])
        if step == 3:
            break
    assert len(seen) >= 2
