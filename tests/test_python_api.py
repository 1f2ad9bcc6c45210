"""Use from Python (uis_d2/api.py): pseudo-masks of an image array; detectron2's DefaultPredictor
and Visualizer on a trained SOLOv2 run and on the R-CNN configs."""

from pathlib import Path

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import DatasetCatalog
from training_cases import EMBED_DIM, tiny_training_cfg

from scripts import REPO, load_script
from uis_d2.api import draw_instances, find_trained_model, load_generator, load_predictor
from uis_d2.config import load_config
from uis_d2.data.image_io import read_image
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.data.synthetic import render_scene
from uis_d2.proposals.base import build_pseudo_mask_generator
from uis_d2.proposals.refine import build_mask_refiner
from uis_d2.proposals.writer import to_numpy

PROPOSAL_CONFIG = REPO / "configs/proposals/synthetic.yaml"
SMALL_TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """An RGB image as a user holds one (PIL order), 200-320 px a side."""
    rgb, _ = render_scene(np.random.default_rng(0))
    return rgb


@pytest.fixture(scope="module")
def trained_run(training_datasets, tmp_path_factory) -> Path:
    """OUTPUT_DIR of tools/train_net.py after 2 iterations of the tiny SOLOv2: config.yaml and
    round1/{config.yaml, model_final.pth}, as a user's run leaves them."""
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = tiny_training_cfg(out, max_iter=2)
    cfg.DATASETS.TEST = ()  # no evaluation: the predictor is under test
    config_file = out.parent / "config.yaml"
    config_file.write_text(cfg.dump())
    train_net = load_script("tools/train_net.py")
    train_net.main(
        train_net.default_argument_parser().parse_args(["--config-file", str(config_file)])
    )
    return out


@pytest.mark.parametrize("refine", [False, True])
def test_generator_on_an_image_array_gives_what_the_generator_gives_on_its_tensor(scene, refine):
    # MIN_IOU 0: the refiner keeps every mask (at its default it drops most of these coarse ones).
    opts = ["PROPOSALS.REFINE.ENABLED", str(refine), "PROPOSALS.REFINE.MIN_IOU", "0.0"]
    proposals = load_generator(PROPOSAL_CONFIG, opts, device="cpu")(scene)

    cfg = load_config(PROPOSAL_CONFIG, opts)
    tensor = torch.from_numpy(np.ascontiguousarray(scene.transpose(2, 0, 1)))
    expected = build_pseudo_mask_generator(cfg)([tensor])[0]
    if refine:  # what tools/generate_proposals.py writes: the refined proposals
        expected = build_mask_refiner(cfg)(tensor, expected)
    assert len(proposals.scores) > 0
    assert proposals.masks.dtype == bool and proposals.masks.shape[1:] == scene.shape[:2]
    np.testing.assert_array_equal(proposals.masks, to_numpy(expected.masks))
    np.testing.assert_array_equal(proposals.scores, expected.scores)
    np.testing.assert_array_equal(proposals.embeddings, expected.embeddings)


def test_generator_reads_bgr_arrays_when_told_and_names_a_wrong_array(scene):
    generator = load_generator(PROPOSAL_CONFIG, device="cpu")
    rgb = generator(scene)
    bgr = generator(np.ascontiguousarray(scene[:, :, ::-1]), fmt="BGR")  # cv2.imread's order
    np.testing.assert_array_equal(bgr.masks, rgb.masks)
    np.testing.assert_array_equal(bgr.scores, rgb.scores)
    with pytest.raises(ValueError, match=r"HxWx3 uint8 image, got shape \(20, 30\)"):
        generator(np.zeros((20, 30), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        generator(scene.astype(np.float32))
    with pytest.raises(ValueError, match="'RGB' or 'BGR'"):
        generator(scene, fmt="rgb")


def test_predictor_of_a_trained_run_gives_instances_that_visualizer_draws(trained_run, scene):
    predictor = load_predictor(trained_run)
    weights = trained_run / "round1/model_final.pth"
    assert predictor.cfg.MODEL.WEIGHTS == str(weights)
    # The run's saved, prepared config: the embedding head is sized as in training.
    assert predictor.cfg.MODEL.SOLOV2.EMBED_DIM == EMBED_DIM
    saved = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    for name, value in predictor.model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)

    instances = predictor(np.ascontiguousarray(scene[:, :, ::-1]))["instances"]
    assert len(instances) > 0
    assert instances.pred_masks.shape[1:] == scene.shape[:2]
    scores = instances.scores
    assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()

    drawn = draw_instances(scene, instances)
    assert drawn.shape == scene.shape and drawn.dtype == np.uint8
    changed = (drawn != scene).any(axis=2)
    masks = instances.pred_masks.numpy()
    assert all(changed[mask].mean() > 0.5 for mask in masks if mask.any())
    # Nothing above the threshold: the image comes back as it was.
    np.testing.assert_array_equal(draw_instances(scene, instances, score_thresh=1.01), scene)


@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_predictor_takes_bgr_and_feeds_the_model_what_evaluation_feeds_it(
    trained_run, input_format
):
    predictor = load_predictor(trained_run, opts=["INPUT.FORMAT", input_format])
    record = DatasetCatalog.get("synthetic_val")[0]
    # Evaluation's input: the file read in INPUT.FORMAT order, resized for test.
    mapped = PseudoMaskDatasetMapper(predictor.cfg, is_train=False)(record)
    with torch.no_grad():
        expected = predictor.model([mapped])[0]["instances"]

    bgr = read_image(record["file_name"], "BGR")
    got = predictor(bgr)["instances"]
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_masks, expected.pred_masks)
    # The order matters: an RGB array passed as it is gives other predictions.
    swapped = predictor(np.ascontiguousarray(bgr[:, :, ::-1]))["instances"]
    assert not torch.equal(swapped.scores, expected.scores)


def test_a_config_from_a_gpu_machine_loads_with_weights_on_the_cpu(trained_run, tmp_path, scene):
    cfg = load_config(trained_run / "round1/config.yaml")
    cfg.MODEL.DEVICE = "cuda"
    cfg.SOLVER.AMP.ENABLED = True
    cfg.DATASETS.TEST = (f"pseudo:{tmp_path / 'not_on_this_machine.json'}",)
    config_file = tmp_path / "gpu_run.yaml"
    config_file.write_text(cfg.dump())
    weights = trained_run / "round1/model_final.pth"

    predictor = load_predictor(config_file, weights=weights, device="cpu")
    reference = load_predictor(trained_run)
    bgr = np.ascontiguousarray(scene[:, :, ::-1])
    torch.testing.assert_close(
        predictor(bgr)["instances"].scores, reference(bgr)["instances"].scores
    )


def test_find_trained_model_takes_the_newest_finished_round(tmp_path):
    run = tmp_path / "run"
    for folder in ("round1", "round2", "round3"):
        (run / folder).mkdir(parents=True)
        (run / folder / "config.yaml").write_text("")
    (run / "config.yaml").write_text("")
    for folder in ("round1", "round2"):  # round3 was interrupted
        (run / folder / "model_final.pth").write_bytes(b"")
    assert find_trained_model(run) == (run / "round2/config.yaml", run / "round2/model_final.pth")
    round1 = run / "round1"
    assert find_trained_model(round1) == (round1 / "config.yaml", round1 / "model_final.pth")
    with pytest.raises(FileNotFoundError, match=f"{run / 'round3'}: no model_final.pth"):
        find_trained_model(run / "round3")
    with pytest.raises(FileNotFoundError, match="no model_final.pth"):
        load_predictor(run / "round3")


@pytest.mark.parametrize("config", ["mask_rcnn_R18_cpu.yaml", "cascade_mask_rcnn_R18_cpu.yaml"])
def test_predictor_and_visualizer_on_the_rcnn_configs(config, scene, tmp_path):
    config_file = REPO / "configs/synthetic" / config
    # Untrained heads score ~0.5 for every box: keep them all (up to 10).
    opts = [
        *SMALL_TEST_SIZE,
        *("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10"),
    ]
    predictor = load_predictor(config_file, opts=opts)
    bgr = np.ascontiguousarray(scene[:, :, ::-1])
    instances = predictor(bgr)["instances"]
    assert len(instances) > 0
    assert instances.pred_masks.shape[1:] == scene.shape[:2]
    scores = instances.scores
    assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()
    assert predictor.metadata.thing_classes == ["object"]
    drawn = draw_instances(scene, instances)
    assert drawn.shape == scene.shape and (drawn != scene).any()

    # Its weights saved as a training run saves them load back through ``weights``.
    weights = tmp_path / "model_final.pth"
    torch.save({"model": predictor.model.state_dict()}, weights)
    reloaded = load_predictor(config_file, weights=weights, opts=opts)
    torch.testing.assert_close(reloaded(bgr)["instances"].scores, instances.scores)
