"""Self-training: a round's predictions become a valid pseudo-label json; reruns resume."""

import json

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.structures import Instances
from training_cases import EMBED_DIM, make_synthetic_root, tiny_training_cfg

from uis_d2.data.pseudo_labels import embedding_store_path
from uis_d2.data.validation import check_coco_json
from uis_d2.engine import run_self_training
from uis_d2.engine.self_training import PSEUDO_LABELS_FILE, predictions_to_annotations
from uis_d2.utils.masks import mask_to_box_xywh, rle_to_mask


@pytest.fixture
def dataset_root(tmp_path, monkeypatch):
    root = make_synthetic_root(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return root


def _has_embedding_head(model_file):
    state = torch.load(model_file, map_location="cpu", weights_only=True)["model"]
    return any("embedding_pred" in name for name in state)


def test_two_rounds_write_pseudo_labels_and_resume_skips_finished_rounds(tmp_path, dataset_root):
    out = tmp_path / "out"
    cfg = tiny_training_cfg(out, max_iter=1)
    cfg.SELF_TRAINING.ROUNDS = 2
    run_self_training(cfg, resume=False)

    pseudo = out / "round1" / PSEUDO_LABELS_FILE
    data = json.loads(pseudo.read_text())
    check_coco_json(pseudo, images_dir=data["info"]["image_root"], kind="pseudo")
    # Every training image is listed (predictions are made on all of them) ...
    assert sorted(img["file_name"] for img in data["images"]) == sorted(
        p.name for p in (dataset_root / "synthetic/train").glob("*.png")
    )
    # The predicted embeddings are in the float16 store beside the labels, a row per mask.
    store = np.load(embedding_store_path(pseudo))
    assert store.dtype == np.float16 and store.shape == (len(data["annotations"]), EMBED_DIM)
    assert np.isfinite(store).all() and np.abs(store).sum(axis=1).min() > 0
    per_image = {}
    for annotation in data["annotations"]:
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
        mask = rle_to_mask(annotation["segmentation"])
        # ... with xywh boxes and areas that match the masks, and the predicted embeddings.
        assert annotation["bbox"] == mask_to_box_xywh(mask)
        assert annotation["area"] == int(mask.sum()) > 0
        assert annotation["category_id"] == 1 and annotation["iscrowd"] == 0
        assert annotation["score"] >= cfg.SELF_TRAINING.SCORE_THRESH
        assert annotation["emb_row"] == annotation["id"] - 1 and "emb" not in annotation
    assert per_image and max(per_image.values()) <= cfg.SELF_TRAINING.MAX_PER_IMAGE
    scores = [a["score"] for a in data["annotations"] if a["image_id"] == 1]
    assert scores == sorted(scores, reverse=True)

    # Round 1 learned embeddings from the proposals; round 2 learns them from round 1's
    # predicted embeddings: its semantic loss is trained, not silently zero.
    assert _has_embedding_head(out / "round1/model_final.pth")
    assert _has_embedding_head(out / "round2/model_final.pth")
    round2_metrics = [json.loads(line) for line in (out / "round2/metrics.json").open()]
    assert round2_metrics and all(m["loss_sem"] > 0 for m in round2_metrics if "loss_sem" in m)
    assert any("loss_sem" in m for m in round2_metrics)
    assert (out / "round2/inference/synthetic_val/class_agnostic_metrics.json").is_file()

    outputs = [out / "round1/model_final.pth", pseudo, out / "round2/model_final.pth"]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    run_self_training(cfg, resume=True)
    assert [p.stat().st_mtime_ns for p in outputs] == stamps


def test_score_threshold_and_top_k_select_predictions():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    for i in range(4):
        masks[i, i : i + 2, 1:5] = True
    instances = Instances((8, 8))
    instances.pred_masks = masks
    instances.scores = torch.tensor([0.2, 0.9, 0.5, 0.4])
    instances.pred_embeddings = torch.arange(8, dtype=torch.float32).view(4, 2)
    annotations, embeddings = predictions_to_annotations(
        instances, score_thresh=0.3, max_per_image=2
    )
    assert [a["score"] for a in annotations] == pytest.approx([0.9, 0.5])
    assert embeddings.dtype == np.float16 and embeddings.tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert annotations[0]["bbox"] == [1.0, 1.0, 4.0, 2.0]
    np.testing.assert_array_equal(rle_to_mask(annotations[1]["segmentation"]), masks[2].numpy())


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_labelling_pass_honours_the_bad_image_policy(tmp_path, dataset_root, policy):
    """An unreadable training image is left out of the next round's labels (skip) or stops the
    run naming it (fail); it is never replaced by another image's prediction."""
    from detectron2.modeling import build_model

    from uis_d2.data.image_io import BadImageError
    from uis_d2.engine.self_training import write_pseudo_labels

    images = sorted((dataset_root / "synthetic/train").glob("*.png"))
    images[1].write_bytes(images[1].read_bytes()[:40])  # truncated PNG
    cfg = tiny_training_cfg(tmp_path / "out", max_iter=1)
    cfg.INPUT.BAD_IMAGE_POLICY = policy
    model = build_model(cfg)
    output = tmp_path / "labels.json"
    if policy == "fail":
        with pytest.raises(BadImageError, match=images[1].name):
            write_pseudo_labels(cfg, model, list(cfg.DATASETS.TRAIN), output, {})
        return
    write_pseudo_labels(cfg, model, list(cfg.DATASETS.TRAIN), output, {})
    listed = sorted(img["file_name"] for img in json.loads(output.read_text())["images"])
    assert listed == sorted(p.name for p in images if p != images[1])
