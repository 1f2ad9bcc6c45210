"""Leopart's dense-feature evaluation: uis_d2/evaluation/dense_features.py and
tools/evaluate_features.py."""

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import MetadataCatalog

from scripts import REPO, load_script
from uis_d2.data.semantic import resize_labels
from uis_d2.evaluation.dense_features import (
    ProbeSettings,
    cached_kmeans,
    identity_scores,
    overclustering_matching,
    probe_predictions,
    score_label_maps,
    train_linear_probe,
)
from uis_d2.features.dense_dataset import standardised_pca, token_matrix

SPLIT = "test_dense_features_sem"  # metadata only: the evaluator's add_image needs no records
CLASSES = ["background", "a", "b", "c"]
EVAL = 24
CONFIG = str(REPO / "configs/proposals/synthetic.yaml")


@pytest.fixture(scope="module", autouse=True)
def _split():
    MetadataCatalog.get(SPLIT).set(stuff_classes=CLASSES, ignore_label=255)


def _gt_grids(n: int = 6, grid=(4, 6), seed: int = 0) -> np.ndarray:
    """(n, h, w) class maps at token resolution, every class present, non-square grid (a
    transposed reshape would scramble it), a few ignored cells."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, len(CLASSES), (n, *grid))
    maps[0].flat[: len(CLASSES)] = np.arange(len(CLASSES))
    maps[1, 0, 0] = 255
    return maps.astype(np.uint8)


def _tokens(gt: np.ndarray, dim: int = 16, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """(n, dim, h, w) tokens: their class's centre (the same for every ``seed``, which draws the
    noise) plus noise; ignored cells get the background's."""
    centres = torch.randn(len(CLASSES), dim, generator=torch.Generator().manual_seed(99)) * 3
    gen = torch.Generator().manual_seed(seed)
    classes = torch.from_numpy(np.where(gt == 255, 0, gt).astype(np.int64))
    tokens = centres[classes] + noise * torch.randn(*classes.shape, dim, generator=gen)
    return tokens.permute(0, 3, 1, 2).contiguous()


def _eval_gt(gt: np.ndarray) -> np.ndarray:
    return np.stack([resize_labels(m, (EVAL, EVAL)) for m in gt])


def test_pca_matches_scikit_learn_on_standardised_tokens_and_clips(caplog):
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(300, 8, generator=gen) @ torch.randn(8, 8, generator=gen) + 5
    points[:, 3] = 2.0  # a constant dimension must not divide by zero
    projected, kept = standardised_pca(points, 3)
    x = points.double().numpy()
    standard = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    reference = PCA(3).fit(standard)
    np.testing.assert_allclose(
        np.abs(projected.double().numpy()), np.abs(reference.transform(standard)), atol=1e-3
    )
    assert kept == pytest.approx(reference.explained_variance_ratio_.sum(), abs=1e-5)
    with caplog.at_level(logging.WARNING):
        clipped, kept_all = standardised_pca(points, 50)
    assert clipped.shape == (300, 8) and kept_all == pytest.approx(1.0)
    assert "clipped to the feature dimension 8" in caplog.text


def test_clusters_equal_to_the_classes_score_100_hungarian_at_k_equal_c():
    gt = _gt_grids()
    tokens = _tokens(gt)
    points, _ = standardised_pca(token_matrix(tokens), 50)
    labels = cached_kmeans(points, len(CLASSES), seed=0, restarts=2, iters=50)
    maps = labels.reshape(len(gt), *gt.shape[1:])
    names = [f"image_{i}" for i in range(len(gt))]
    scores = score_label_maps(SPLIT, names, maps, _eval_gt(gt), len(CLASSES), "hungarian", EVAL)
    assert scores["mIoU"] == pytest.approx(100.0)
    assert overclustering_matching(len(CLASSES), len(CLASSES)) == "hungarian"


def test_overclusters_are_merged_by_precision_not_one_to_one():
    gt = _gt_grids()
    split = np.where(gt == 255, 0, gt) * 2 + (np.arange(gt.shape[2]) % 2)  # 2 ids per class
    names = [f"image_{i}" for i in range(len(gt))]
    k = 2 * len(CLASSES)
    matching = overclustering_matching(k, len(CLASSES))
    assert matching == "precision"
    precise = score_label_maps(SPLIT, names, split, _eval_gt(gt), k, matching, EVAL)
    one_to_one = score_label_maps(SPLIT, names, split, _eval_gt(gt), k, "hungarian", EVAL)
    assert precise["mIoU"] == pytest.approx(100.0) and one_to_one["mIoU"] < 70


def test_kmeans_cache_is_reused(tmp_path):
    points = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    cache = tmp_path / "k.npy"
    labels = cached_kmeans(points, 4, seed=0, restarts=1, iters=20, cache=cache)
    np.save(cache, np.zeros(40, np.int32))  # stands for a finished run: must be read back
    assert not cached_kmeans(points, 4, seed=0, restarts=1, iters=20, cache=cache).any()
    assert labels.dtype == np.int32 and len(np.unique(labels)) == 4


def test_linear_probe_separates_separable_tokens_deterministically():
    train_gt, eval_gt = _gt_grids(12, seed=1), _gt_grids(6, seed=2)
    targets = torch.from_numpy(_eval_gt(train_gt))
    targets[0] = 255  # a batch of only ignored pixels must not turn the weights into NaN
    settings = ProbeSettings(epochs=30, lr_drop_epoch=25, lr=0.5, batch_size=1)
    head, losses = train_linear_probe(_tokens(train_gt), targets, len(CLASSES), settings)
    again, _ = train_linear_probe(_tokens(train_gt), targets, len(CLASSES), settings)
    torch.testing.assert_close(head.weight, again.weight, rtol=0, atol=0)
    assert losses[-1] < 0.5 * losses[0]
    pred = probe_predictions(head, _tokens(eval_gt, seed=3), EVAL)
    scores = identity_scores(pred, _eval_gt(eval_gt), CLASSES)
    # Only the pixels where the bilinear logits cross a class border can be wrong.
    assert scores["pACC"] > 90 and scores["mIoU"] > 85


def test_identity_scores_do_not_rematch_classes():
    gt = _eval_gt(_gt_grids())
    swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, gt)).astype(np.uint8)
    scores = identity_scores(swapped, gt, CLASSES)
    assert scores["per_class_iou"]["a"] == 0 and scores["per_class_iou"]["c"] == 100


def test_tool_end_to_end_on_synthetic_data(training_datasets, tmp_path, capsys):
    tool = load_script("tools/evaluate_features.py")
    out = tmp_path / "out"
    argv = [
        "--config-file", CONFIG,
        "--dataset", "synthetic_val_sem",
        "--out", str(out),
        "--size", "64", "--eval-size", "32",
        "--clusters", "C", "20",
        "--seeds", "2",
        "--grid", "2",
        "--linear-probe", "--probe-train-dataset", "synthetic_train_sem",
        "--probe-epochs", "3", "--probe-lr-drop-epoch", "2",
        "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    assert tool.main(argv) == 0
    report = json.loads((out / "features_eval.json").read_text())
    setting = report["setting"]
    assert setting["size"] == [64, 64] and setting["eval_size"] == [32, 32]
    assert setting["clusters"] == [7, 20] and setting["extractor"]["name"] == "PatchStats"
    assert report["overclustering"]["pca_dim"] == 21  # 50 clipped to PatchStats' 21 channels
    per_k = report["overclustering"]["per_K"]
    assert [per_k[k]["matching"] for k in ("7", "20")] == ["hungarian", "precision"]
    assert all(len(r["runs"]) == 2 and 0 < r["mIoU_mean"] <= 100 for r in per_k.values())
    assert report["linear_probe"]["supervised"] and len(report["linear_probe"]["epoch_losses"]) == 3
    for name in (
        "features_eval.csv",
        "features_eval.png",
        "overclustering/K7/semantic_metrics.json",
    ):  # noqa: E501
        assert (out / name).is_file()
    printed = capsys.readouterr().out
    assert "| overclustering | 20 | precision |" in printed and "linear probe" in printed
    # A rerun reads the cached tokens and clusterings back: identical numbers.
    assert tool.main(argv) == 0
    assert json.loads((out / "features_eval.json").read_text()) == report


def test_tool_refuses_a_training_split_and_a_non_semantic_one(training_datasets, tmp_path, capsys):
    tool = load_script("tools/evaluate_features.py")
    base = ["--config-file", CONFIG, "--out", str(tmp_path)]
    assert tool.main([*base, "--dataset", "synthetic_train_sem"]) == 1
    assert "--allow-train-split" in capsys.readouterr().err
    assert tool.main([*base, "--dataset", "synthetic_val"]) == 1
    assert "not a semantic split" in capsys.readouterr().err
    assert tool.main([*base, "--dataset", "synthetic_val_sem", "--clusters", "1"]) == 1
    assert "integer >= 2 or C" in capsys.readouterr().err
