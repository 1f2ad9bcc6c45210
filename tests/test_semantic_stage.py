"""The semantic stage: OHEM, painting rules, map folders, DeepLab training, COMUS's rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.projects.deeplab.loss import DeepLabCE

from scripts import load_script
from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.data.image_folder import folder_image_id
from uis_d2.engine import Trainer
from uis_d2.semantic import rounds as rounds_module
from uis_d2.semantic.data import (
    ScaleRotateTransform,
    SemanticTrainMapper,
    semantic_augmentations,
)
from uis_d2.semantic.head import HardPixelCrossEntropy, hard_pixel_cross_entropy
from uis_d2.semantic.painting import paint_confident, paint_initial
from uis_d2.semantic.pseudo_maps import (
    LABELS_INFO_FILE,
    label_map_path,
    register_semantic_pseudo_labels,
    write_label_map,
)
from uis_d2.semantic.rounds import (
    LABELS_DIR,
    predicted_labels,
    prepare_semantic_config,
    relabel_crf_params,
    round_labels_name,
    run_semantic_rounds,
    validate_semantic_config,
)
from uis_d2.semantic.writers import write_confident_maps, write_initial_maps
from uis_d2.utils.masks import mask_to_rle

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs/semantic/Base-DeepLabV3.yaml"
NUM_CATEGORIES = 6  # the synthetic data's
IGNORE = 255


# ---- OHEM ---------------------------------------------------------------------------------


def _pixel_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy computed by hand: -log softmax at the label."""
    log_p = logits.log_softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    flat = labels.reshape(-1)
    return -log_p[torch.arange(flat.numel()), flat.clamp(max=logits.shape[1] - 1)]


def test_ohem_keeps_exactly_the_top_share_of_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 5) * 3  # 20 pixels
    labels = torch.randint(0, 3, (2, 2, 5))
    labels[0, 0, :3] = IGNORE  # 3 ignored pixels
    losses = _pixel_losses(logits, labels)
    valid = losses[labels.reshape(-1) != IGNORE]
    # 20% of all 20 pixels = 4 (ignored pixels count in the share, never in the kept set)
    expected = valid.sort(descending=True).values[:4].mean()
    got = hard_pixel_cross_entropy(logits, labels, 0.2, IGNORE)
    torch.testing.assert_close(got, expected)
    # detectron2's DeepLabCE takes its 20% over all pixels, ignored zeros included: with most
    # pixels ignored it averages zeros, which is why the head swaps it out.
    labels[1] = IGNORE
    labels[0, 1, :] = IGNORE  # 2 valid pixels left, share 0.5 of 20 = 10 > 2
    valid = _pixel_losses(logits, labels)[labels.reshape(-1) != IGNORE]
    assert valid.numel() == 2
    got = hard_pixel_cross_entropy(logits, labels, 0.5, IGNORE)
    torch.testing.assert_close(got, valid.mean())
    d2 = DeepLabCE(ignore_label=IGNORE, top_k_percent_pixels=0.5)(logits, labels)
    torch.testing.assert_close(d2, valid.sum() / 10)
    # share 1.0 = plain cross-entropy over the valid pixels
    torch.testing.assert_close(
        hard_pixel_cross_entropy(logits, labels, 1.0, IGNORE),
        F.cross_entropy(logits, labels, ignore_index=IGNORE),
    )


def test_ohem_on_a_fully_ignored_batch_is_zero_with_a_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = HardPixelCrossEntropy(0.2, IGNORE)(logits, torch.full((1, 4, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="OHEM_SHARE"):
        HardPixelCrossEntropy(0.0, IGNORE)


# ---- painting ------------------------------------------------------------------------------


def _box(y0: int, y1: int, x0: int, x1: int, shape=(6, 8)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_confident_painting_keeps_scores_above_tau_with_one_plus_class():
    a, b, c = _box(0, 2, 0, 2), _box(0, 2, 4, 6), _box(4, 6, 0, 2)
    labels = paint_confident(np.stack([a, b, c]), [0.95, 0.91, 0.5], [2, 0, 1])
    assert labels.dtype == np.uint8
    assert (labels[a] == 3).all() and (labels[b] == 1).all()
    assert (labels[c] == 0).all() and (labels[~(a | b)] == 0).all()


def test_confident_painting_falls_back_to_the_top_prediction():
    a, b = _box(0, 2, 0, 2), _box(3, 5, 3, 5)
    labels = paint_confident(np.stack([a, b]), [0.3, 0.6], [4, 5])
    assert (labels[b] == 6).all() and (labels[~b] == 0).all()
    assert not paint_confident(np.zeros((0, 6, 8), bool), [], []).any()


def test_confident_painting_goes_by_score_and_drops_a_mask_touching_painted_pixels():
    big = _box(0, 4, 0, 4)
    overlapping = _box(3, 6, 3, 8)  # shares pixel (3, 3) with big
    adjacent = _box(0, 4, 4, 6)  # next to big, no shared pixel
    # Given in increasing score: big (0.99) is painted first, then adjacent (0.97); overlapping
    # (0.98) touches big and is dropped whole, its free pixels included.
    labels = paint_confident(np.stack([adjacent, overlapping, big]), [0.97, 0.98, 0.99], [1, 2, 0])
    assert (labels[big] == 1).all()
    assert (labels[adjacent] == 2).all()
    assert (labels[overlapping & ~big & ~adjacent] == 0).all()


def test_painting_rejects_classes_that_do_not_fit_uint8_maps():
    with pytest.raises(ValueError, match="pseudo-classes"):
        paint_confident(_box(0, 1, 0, 1)[None], [1.0], [254])
    with pytest.raises(ValueError, match="pseudo-classes"):
        paint_initial(_box(0, 1, 0, 1)[None], [-1])


def test_comus_initial_map_paints_one_plus_cluster_on_the_mask():
    mask = _box(1, 4, 2, 6)
    labels = paint_initial(mask[None], [3])
    assert (labels[mask] == 4).all() and (labels[~mask] == 0).all()
    # Several masks: the most confident is on top.
    other = _box(0, 3, 0, 4)
    labels = paint_initial(np.stack([mask, other]), [0, 1], scores=[0.9, 0.4])
    assert (labels[mask] == 1).all() and (labels[other & ~mask] == 2).all()


# ---- map folders ---------------------------------------------------------------------------


def _write_images(folder: Path, names: list[str], shape=(6, 8)) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)


def test_initial_maps_of_a_clustered_json_mirror_names_skip_dropped_and_resume(tmp_path):
    """The clustered format of tools/cluster_pseudo_classes.py: category_id = cluster + 1 over
    categories cluster_0..cluster_{K-1}; dropped images are gone from ``images``."""
    a, b = _box(0, 2, 0, 3), _box(2, 5, 4, 8)
    clustered = {
        "info": {"image_root": str(tmp_path / "images")},
        "images": [
            {"id": 1, "file_name": "sub/one.jpg", "height": 6, "width": 8},
            {"id": 2, "file_name": "two.jpg", "height": 6, "width": 8},
            {"id": 3, "file_name": "no_masks.jpg", "height": 6, "width": 8},
        ],
        "categories": [{"id": c + 1, "name": f"cluster_{c}"} for c in range(3)],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "segmentation": mask_to_rle(a),
                "score": 0.9,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 1,
                "segmentation": mask_to_rle(b),
                "score": 0.8,
            },
        ],
    }
    json_file = tmp_path / "clustered.json"
    json_file.write_text(json.dumps(clustered))
    out = tmp_path / "maps"
    summary = write_initial_maps(json_file, out)
    one = np.array(Image.open(out / "sub/one.png"))
    assert one.dtype == np.uint8 and (one[a] == 3).all() and (one[~a] == 0).all()
    assert (np.array(Image.open(out / "two.png"))[b] == 1).all()
    assert not (out / "no_masks.png").exists()
    assert summary["written"] == 2 and summary["without_map"] == 1 and summary["num_classes"] == 3
    assert json.loads((out / LABELS_INFO_FILE).read_text())["written"] == 2

    # A rerun keeps what is there (resume); --overwrite repaints.
    write_label_map(out / "two.png", np.full((6, 8), 7, np.uint8))
    assert write_initial_maps(json_file, out)["kept_existing"] == 2
    assert (np.array(Image.open(out / "two.png")) == 7).all()
    write_initial_maps(json_file, out, overwrite=True)
    assert (np.array(Image.open(out / "two.png"))[b] == 1).all()


def test_confident_maps_from_a_results_json_on_an_image_folder(tmp_path):
    images = tmp_path / "images"
    _write_images(images, ["x.png", "y.png"])
    spec = f"folder:{images}"
    a, b = _box(0, 3, 0, 3), _box(2, 5, 2, 6)
    x_id = folder_image_id("x.png")
    results = [  # categories 11, 12 = classes 0, 1 by ascending id
        {"image_id": x_id, "category_id": 12, "segmentation": mask_to_rle(a), "score": 0.95},
        {"image_id": x_id, "category_id": 11, "segmentation": mask_to_rle(b), "score": 0.93},
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "classes.json").write_text(
        json.dumps({"categories": [{"id": 12, "name": "b"}, {"id": 11, "name": "a"}]})
    )
    tool = load_script("tools/make_semantic_pseudo_labels.py")
    argv = ["--predictions", str(tmp_path / "results.json"), "--dataset", spec]
    argv += ["--categories", str(tmp_path / "classes.json"), "--output", str(tmp_path / "maps")]
    assert tool.main(argv) == 0
    x = np.array(Image.open(tmp_path / "maps/x.png"))
    assert (x[a] == 2).all() and (x[~a] == 0).all()  # b touches a: dropped
    assert not np.array(Image.open(tmp_path / "maps/y.png")).any()  # no prediction: background

    # Without --categories the ids are the classes: 12 is painted 13. Nothing reaches 0.99,
    # so only the top prediction is kept.
    summary = write_confident_maps(
        tmp_path / "results.json", spec, tmp_path / "maps_raw", score_thresh=0.99
    )
    assert summary["without_prediction"] == 1
    raw = np.array(Image.open(tmp_path / "maps_raw/x.png"))
    assert (raw[a] == 13).all() and (raw[~a] == 0).all()
    # Predictions of images the dataset does not have: an error, no maps.
    (tmp_path / "other.json").write_text(json.dumps([{**results[0], "image_id": 5}]))
    argv = ["--predictions", str(tmp_path / "other.json"), "--dataset", spec]
    assert tool.main([*argv, "--output", str(tmp_path / "other_maps")]) == 2
    assert not (tmp_path / "other_maps").exists()


def test_registered_maps_load_like_detectron2s_mapper_and_bad_images_follow_the_policy(tmp_path):
    images = tmp_path / "images"
    _write_images(images, ["a/p.png", "q.png", "r.png"], shape=(40, 60))
    maps = tmp_path / "maps"
    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 20:50] = 3
    write_label_map(label_map_path(maps, "a/p.png"), labels)
    write_label_map(label_map_path(maps, "q.png"), labels)
    name = register_semantic_pseudo_labels("test_semantic_maps", f"folder:{images}", maps)
    records = DatasetCatalog.get(name)
    assert [Path(r["file_name"]).name for r in records] == ["p.png", "q.png"]  # r: no map
    cfg = load_config(BASE_CONFIG, ["SEMANTIC.INPUT_SIZE", "32"])
    for augmentation in ("resized_crop", "scale_rotate"):
        cfg.SEMANTIC.AUGMENTATION = augmentation
        reference = DatasetMapper(
            True, augmentations=semantic_augmentations(cfg, True), image_format="RGB"
        )
        np.random.seed(3)
        expected = reference(records[0])
        np.random.seed(3)
        item = SemanticTrainMapper(cfg)(records[0])
        assert item["image"].shape == (3, 32, 32) and item["sem_seg"].shape == (32, 32)
        assert torch.equal(item["image"], expected["image"])
        assert torch.equal(item["sem_seg"], expected["sem_seg"])
        assert set(item["sem_seg"].unique().tolist()) <= {0, 3}
    broken = dict(records[1], file_name=str(tmp_path / "broken.png"))
    Path(broken["file_name"]).write_bytes(b"\x89PNG truncated")
    assert SemanticTrainMapper(cfg)(broken) is None  # skip: the loader draws another image
    cfg.INPUT.BAD_IMAGE_POLICY = "fail"
    with pytest.raises(ValueError, match="broken.png"):
        SemanticTrainMapper(cfg)(broken)


def test_scale_rotate_warps_about_the_centre_and_fills_background():
    labels = np.full((20, 20), 5, np.uint8)
    warped = ScaleRotateTransform(20, 20, angle=0.0, scale=0.5).apply_segmentation(labels)
    assert warped[10, 10] == 5 and warped[0, 0] == 0 and warped[19, 19] == 0
    turned = ScaleRotateTransform(20, 20, angle=90.0, scale=1.0)
    np.testing.assert_allclose(turned.apply_coords(np.array([[10.0, 10.0]])), [[10.0, 10.0]])


# ---- training ------------------------------------------------------------------------------


def _synthetic_maps(root: Path, out: Path) -> Path:
    """Initial maps of the synthetic training images: their ground truth json read as a
    clustered file (category = pseudo-class), painted by the tool."""
    tool = load_script("tools/make_semantic_pseudo_labels.py")
    argv = ["--clustered", str(root / "synthetic/annotations/train.json"), "--output", str(out)]
    assert tool.main(argv) == 0
    return out


def _tiny_cfg(output_dir: Path, maps: Path, *opts: str):
    """The R-50 DeepLab layout at 1/16 of its width on 64-px inputs: a step takes < 1 s."""
    cfg = load_config(BASE_CONFIG, list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CATEGORIES + 1
    cfg.SEMANTIC.INPUT_SIZE = 64
    cfg.SEMANTIC.PSEUDO_LABELS = [["test_synthetic_maps", "synthetic_train", str(maps)]]
    cfg.DATASETS.TRAIN = ("test_synthetic_maps",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.OPTIMIZER = "Adam"
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SEED = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.mark.parametrize("loss_type", ["hard_pixel_mining", "cross_entropy"])
def test_deeplab_trains_three_cpu_iterations_with_finite_logged_losses(
    tmp_path, training_datasets, loss_type
):
    maps = _synthetic_maps(training_datasets, tmp_path / "maps")
    out = tmp_path / "out"
    cfg = _tiny_cfg(out, maps, "MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type)
    cfg.DATASETS.TEST = ("synthetic_val_sem",)
    trainer = Trainer(prepare_semantic_config(cfg))
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    head = trainer.model.sem_seg_head
    assert isinstance(head.loss, HardPixelCrossEntropy) == (loss_type == "hard_pixel_mining")
    trainer.resume_or_load(resume=False)
    trainer.train()
    # One loss term: detectron2 logs it as total_loss (loss_sem_seg only beside others).
    losses = {m["iteration"]: m["total_loss"] for m in _metrics(out) if "total_loss" in m}
    assert losses and all(math.isfinite(v) and v > 0 for v in losses.values())
    assert max(losses) == 2  # iterations 0, 1, 2
    # The final evaluation ran on the semantic split with the pseudo-class metrics.
    summary = json.loads((out / "inference/synthetic_val_sem/semantic_metrics.json").read_text())
    assert "hungarian" in json.dumps(summary)


def test_dilated_backbone_has_output_stride_8_and_loads_torchvision_names():
    cfg = load_config(BASE_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"])
    model = build_model(cfg)
    assert model.backbone.output_shape()["res5"].stride == 8
    names = set(model.backbone.state_dict())
    # tools/convert_checkpoint.py maps torchvision's conv1 / layer1.0.conv1 onto these.
    assert {"stem.conv1.weight", "res2.0.conv1.weight", "res5.2.conv3.weight"} <= names
    assert model.backbone.res4[0].conv2.dilation == (2, 2)
    assert model.backbone.res5[0].conv2.dilation == (4, 4)


def test_relabelling_with_the_crf_takes_the_refined_argmax_of_an_rgb_image():
    """Scores that favour class 1 everywhere but weakly, on an image whose right half is red:
    the CRF (strong pairwise terms) follows the colour edge, the plain argmax does not; a BGR
    input gives the same labels as its RGB twin."""
    cfg = load_config(BASE_CONFIG, ["SEMANTIC.ROUNDS", "2", "SEMANTIC.RELABEL_DATASET", "x"])
    assert relabel_crf_params(cfg) is None
    cfg.SEMANTIC.RELABEL_CRF.ENABLED = True
    crf = relabel_crf_params(cfg)
    assert crf.iters == 10 and crf.bilateral_sxy == 67.0 and crf.gaussian_compat == 3.0
    rgb = torch.zeros(3, 24, 24, dtype=torch.uint8)
    rgb[0, :, 12:] = 220
    scores = torch.zeros(2, 24, 24)
    scores[1] = 0.1
    scores[0, :, :12] = 0.3  # the left half leans to class 0, not enough to win
    scores[1, :, :12] = 0.0
    scores[0, :, 12:] = 0.0
    scores[0, 3, 3] = -5.0  # one noisy pixel on the left
    plain = predicted_labels(scores, rgb, "RGB", None)
    assert plain[3, 3] == 1
    refined = predicted_labels(scores, rgb, "RGB", crf)
    assert (refined[:, :12] == 0).all() and (refined[:, 12:] == 1).all()
    assert torch.equal(predicted_labels(scores, rgb.flip(0), "BGR", crf), refined)


def test_semantic_config_errors_name_the_key(tmp_path):
    cfg = _tiny_cfg(tmp_path, tmp_path)
    with pytest.raises(ConfigError, match="SEMANTIC.INPUT_SIZE"):
        validate_semantic_config(load_config(BASE_CONFIG, ["SEMANTIC.INPUT_SIZE", "100"]))
    with pytest.raises(ConfigError, match="SEMANTIC.RELABEL_CRF.ENABLED"):
        validate_semantic_config(load_config(BASE_CONFIG, ["SEMANTIC.RELABEL_CRF.ENABLED", "True"]))
    cfg.SEMANTIC.ROUNDS = 2
    with pytest.raises(ConfigError, match="SEMANTIC.RELABEL_DATASET"):
        validate_semantic_config(cfg)
    cfg.SEMANTIC.RELABEL_DATASET = "synthetic_train"
    cfg.SEMANTIC.ROUND_EPOCHS = [1]
    with pytest.raises(ConfigError, match="SEMANTIC.ROUND_EPOCHS"):
        validate_semantic_config(cfg)
    with pytest.raises(ConfigError, match="SOLVER.OPTIMIZER"):
        validate_semantic_config(load_config(BASE_CONFIG, ["SOLVER.OPTIMIZER", "LBFGS"]))


# ---- rounds --------------------------------------------------------------------------------


def test_two_rounds_relabel_and_restart_from_the_initial_weights(
    tmp_path, monkeypatch, training_datasets
):
    maps = _synthetic_maps(training_datasets, tmp_path / "maps")
    out = tmp_path / "out"
    cfg = _tiny_cfg(out, maps)
    # Known initial weights: a checkpoint file every round must start from.
    init = tmp_path / "init.pth"
    torch.manual_seed(1)
    torch.save({"model": build_model(cfg).state_dict()}, init)
    cfg.MODEL.WEIGHTS = str(init)
    cfg.SEMANTIC.ROUNDS = 2
    cfg.SEMANTIC.RELABEL_DATASET = "synthetic_train"
    cfg.SEMANTIC.ROUND_EPOCHS = [1, 1]  # 3 images at batch 2: 2 iterations per round
    starts = []
    resume_or_load = Trainer.resume_or_load

    def recording(self, resume=True):
        resume_or_load(self, resume=resume)
        starts.append({k: v.clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(Trainer, "resume_or_load", recording)
    run_semantic_rounds(cfg)

    assert len(starts) == 2
    initial = torch.load(init, weights_only=True)["model"]
    round1 = torch.load(out / "round1/model_final.pth", weights_only=True)["model"]
    key = "sem_seg_head.predictor.weight"
    for start in starts:  # both rounds start from MODEL.WEIGHTS ...
        torch.testing.assert_close(start[key], initial[key])
    assert not torch.equal(round1[key], initial[key])  # ... which round 1 moved away from
    for r in (1, 2):
        iterations = [m["iteration"] for m in _metrics(out / f"round{r}") if "total_loss" in m]
        assert max(iterations) == 1  # ROUND_EPOCHS: ceil(1 x 3 / 2) = 2 iterations

    # Round 1 labelled every training image: one map each at the image's size, ids 0..K.
    labels = out / "round1" / LABELS_DIR
    records = DatasetCatalog.get("synthetic_train")
    for record in records:
        path = labels / (Path(record["file_name"]).stem + ".png")
        label = np.array(Image.open(path))
        assert label.shape == (record["height"], record["width"])
        assert label.max() <= NUM_CATEGORIES
    assert json.loads((labels / LABELS_INFO_FILE).read_text())["written"] == len(records)
    assert len(DatasetCatalog.get(round_labels_name(1))) == len(records)
    assert round_labels_name(1) in (out / "round2/config.yaml").read_text()  # round 2's data

    # Resume: nothing is trained or labelled again.
    outputs = [out / "round1/model_final.pth", labels / LABELS_INFO_FILE]
    outputs.append(out / "round2/model_final.pth")
    stamps = [p.stat().st_mtime_ns for p in outputs]
    monkeypatch.setattr(rounds_module, "predict_label_maps", _fail)
    run_semantic_rounds(cfg, resume=True)
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    assert len(starts) == 2


def _fail(*args, **kwargs):
    raise AssertionError("a finished labelling pass ran again")
