"""Use from Python: pseudo-masks of an image array, and a trained model's instances.

    from uis_d2.api import draw_instances, load_generator, load_predictor
    from uis_d2.data.image_io import read_image

    generator = load_generator("configs/proposals/synthetic.yaml")
    proposals = generator(read_image("photo.jpg"))  # RGB; .masks (N, H, W), .scores (N,)

    predictor = load_predictor("output/synthetic/solov2_freesolo_cpu")  # a training run's folder
    bgr = read_image("photo.jpg", "BGR")  # detectron2's DefaultPredictor takes BGR
    instances = predictor(bgr)["instances"]
    overlay = draw_instances(bgr[:, :, ::-1], instances, score_thresh=0.3)  # RGB in, RGB out

Both are thin: the generator is the one tools/generate_proposals.py builds (with the
``PROPOSALS.REFINE`` step it applies), the predictor is detectron2's own ``DefaultPredictor`` on
the cfg a training run saved, prepared as tools/train_net.py prepares it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

from uis_d2.config import load_config
from uis_d2.data.datasets import CLASS_AGNOSTIC_META
from uis_d2.engine import check_runtime
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.engine.self_training import FINAL_MODEL_FILE, round_dir
from uis_d2.proposals.base import ProposalGenerator, Proposals, build_pseudo_mask_generator
from uis_d2.proposals.refine import MaskRefiner, build_mask_refiner
from uis_d2.proposals.runner import uses_cuda
from uis_d2.proposals.writer import to_numpy

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"  # what detectron2's default_setup and each round save


class PseudoMaskGenerator:
    """A proposal config's generator (and refiner) applied to one image array at a time.

    Gives what tools/generate_proposals.py writes for the same image, without a dataset, a
    json or processes: for notebooks and for pipelines that hold images in memory.
    """

    def __init__(
        self,
        generator: ProposalGenerator,
        refiner: MaskRefiner | None,
        device: torch.device,
    ) -> None:
        self.generator = generator.to(device)
        self.refiner = refiner
        self.device = device

    def __call__(self, image: np.ndarray, fmt: str = "RGB", name: str | None = None) -> Proposals:
        """Proposals of ``image``, an HxWx3 uint8 array in ``fmt`` order ("RGB": PIL and
        ``read_image``'s default; "BGR": ``cv2.imread``). Masks come back as an (N, H, W) bool
        numpy array at the image's size, whatever the device. ``name`` is the image's file name
        for generators that read per-image files (``ExternalMaps`` saliency maps)."""
        if fmt not in ("RGB", "BGR"):
            raise ValueError(f"fmt must be 'RGB' or 'BGR', got {fmt!r}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an HxWx3 uint8 image, got shape {image.shape} and dtype {image.dtype} "
                "(uis_d2.data.image_io.read_image decodes any image file to that)"
            )
        rgb = image if fmt == "RGB" else image[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).to(self.device)
        proposals = self.generator([tensor], names=None if name is None else [name])[0]
        if self.refiner is not None:
            proposals = self.refiner(tensor, proposals)
        return dataclasses.replace(proposals, masks=to_numpy(proposals.masks).astype(bool))


def load_generator(
    config_file: str | Path,
    opts: Sequence[str] = (),
    device: str | torch.device | None = None,
) -> PseudoMaskGenerator:
    """The generator of a proposal config (``configs/proposals/*.yaml``) with ``KEY VALUE``
    overrides, on ``device`` (default: as the tool picks it, the GPU when ``MODEL.DEVICE`` is
    cuda and one is available)."""
    cfg = load_config(config_file, opts)
    if device is None:
        device = "cuda" if uses_cuda(cfg) else "cpu"
    # The refiner first: a missing optional package fails before the feature extractors load.
    refiner = build_mask_refiner(cfg)
    return PseudoMaskGenerator(build_pseudo_mask_generator(cfg), refiner, torch.device(device))


def find_trained_model(run_dir: str | Path) -> tuple[Path, Path]:
    """(config.yaml, model_final.pth) of the newest finished round of a training run.

    ``run_dir`` is a run's OUTPUT_DIR (tools/train_net.py writes round{r}/ per self-training
    round, each with its own config.yaml) or one round's folder.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir]
    while round_dir(run_dir, len(candidates)).is_dir():
        candidates.append(round_dir(run_dir, len(candidates)))
    for folder in reversed(candidates):
        if (folder / CONFIG_FILE).is_file() and (folder / FINAL_MODEL_FILE).is_file():
            return folder / CONFIG_FILE, folder / FINAL_MODEL_FILE
    raise FileNotFoundError(
        f"{run_dir}: no {FINAL_MODEL_FILE} beside a {CONFIG_FILE} in it or in its round*/ "
        "folders (has training finished? a checkpoint of an unfinished run loads with "
        "load_predictor(CONFIG, weights=CHECKPOINT))"
    )


def load_predictor(
    run_or_config: str | Path,
    weights: str | Path | None = None,
    opts: Sequence[str] = (),
    device: str | None = None,
) -> DefaultPredictor:
    """detectron2's ``DefaultPredictor`` for a trained SOLOv2 or R-CNN model.

    ``run_or_config``: a training run's folder (its newest finished round is loaded, see
    ``find_trained_model``) or a config file (with ``weights``, or ``MODEL.WEIGHTS`` in it).
    ``weights`` replaces the run's or config's weights; ``opts`` (``KEY VALUE`` pairs) come
    after both; ``device`` sets ``MODEL.DEVICE``.

    The predictor takes a BGR HxWx3 uint8 array (``cv2.imread``, ``read_image(path, "BGR")``;
    reverse the channels of a PIL/RGB array) whatever ``INPUT.FORMAT`` is: it converts to the
    order the model was trained on, resizes as at test time, and returns
    ``{"instances": Instances}`` at the input's size (``pred_masks``, ``pred_boxes``, ``scores``
    in [0, 1], highest first). ``predictor.metadata`` is the class-agnostic metadata for
    detectron2's ``Visualizer``.
    """
    path = Path(run_or_config)
    config_file = path
    if path.is_dir():
        config_file, final_model = find_trained_model(path)
        weights = weights or final_model
        logger.info(f"loading {weights} with {config_file}")
    overrides = ["MODEL.WEIGHTS", str(weights)] if weights else []
    # Prediction needs neither AMP (it runs in float32: a run trained with AMP on a GPU must
    # load on a CPU) nor the run's test set (which need not be on this machine).
    overrides += ["SOLVER.AMP.ENABLED", "False", "DATASETS.TEST", "()", *opts]
    if device is not None:
        overrides += ["MODEL.DEVICE", device]
    cfg = load_config(config_file, overrides)
    check_runtime(cfg)
    predictor = DefaultPredictor(prepare_run_config(cfg, require_training_data=False))
    predictor.metadata = class_agnostic_metadata()
    return predictor


def class_agnostic_metadata() -> Metadata:
    """Metadata for detectron2's ``Visualizer``: one class, "object", as every dataset here."""
    return Metadata(name="uis_d2_class_agnostic", **CLASS_AGNOSTIC_META)


def draw_instances(rgb: np.ndarray, instances: Instances, score_thresh: float = 0.0) -> np.ndarray:
    """``rgb`` (HxWx3 uint8) with the masks, boxes and scores of the ``instances`` scoring at
    least ``score_thresh`` drawn over it by detectron2's ``Visualizer``; RGB, same size."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_thresh]
    visualizer = Visualizer(rgb, class_agnostic_metadata(), instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances).get_image()
