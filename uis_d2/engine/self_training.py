"""FreeSOLO self-training: train, predict on the training images, retrain on the predictions.

Round r trains in OUTPUT_DIR/round{r}/ from the same initial weights (MODEL.WEIGHTS); round r > 1
learns from round r-1's confident predictions (score >= SELF_TRAINING.SCORE_THRESH, or the
round's entry of SCORE_THRESHS), written as OUTPUT_DIR/round{r-1}/pseudo_labels.json (format:
data/pseudo_labels.py). ``SELF_TRAINING.MERGE: cutler`` adds the round's own training masks that
no kept prediction covers (data/label_merge.py), and DropLoss is off in rounds r > 1 (both
CutLER). With ``resume``, finished rounds (final model, plus pseudo-labels when a later round
needs them) are skipped and a partly trained round continues from its last checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import get_detection_dataset_dicts
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.structures import Instances
from detectron2.utils import comm
from torch import nn

from uis_d2.data.datasets import register_pseudo_labels
from uis_d2.data.label_merge import PreviousLabels
from uis_d2.data.pseudo_labels import (
    EmbeddingStoreWriter,
    annotation_record,
    encode_masks,
    file_header,
    pop_embeddings,
    read_info,
)
from uis_d2.engine.checkpointer import ResilientCheckpointer
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.engine.trainer import Trainer
from uis_d2.engine.unreadable import SkipUnreadable, build_inference_loader
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

PSEUDO_LABELS_FILE = "pseudo_labels.json"
FINAL_MODEL_FILE = "model_final.pth"


def round_dir(output_dir: str | Path, round_index: int) -> Path:
    return Path(output_dir) / f"round{round_index}"


def pseudo_dataset_name(round_index: int) -> str:
    """Registered name of round ``round_index``'s predictions (the next round's training set)."""
    return f"uis_self_training_round{round_index}"


def predictions_to_annotations(
    instances: Instances, score_thresh: float, max_per_image: int
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Confident predictions of one image as pseudo-label annotations (without ids), best first,
    and their embeddings as float16 rows for the store (None without an embedding head).

    The embeddings are what the model predicts (``pred_embeddings``), so a later round trains
    its embedding head on them.
    """
    scores = instances.scores.cpu().numpy()
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= score_thresh][:max_per_image]
    index = torch.from_numpy(order).to(instances.scores.device)
    embeddings = None
    if instances.has("pred_embeddings"):
        embeddings = instances.pred_embeddings[index].float().cpu().numpy()
    # Encoded where the model left them: only run starts, not whole masks, reach the host.
    annotations = encode_masks(instances.pred_masks[index], scores[order], embeddings)
    return annotations, pop_embeddings(annotations)


class PseudoLabelWriter(DatasetEvaluator):
    """Collects a model's confident predictions and writes them as a pseudo-label json and its
    embedding store (data/pseudo_labels.py); ``previous`` (CutLER's merge) adds the masks of
    the round's training set that no kept prediction covers.

    A ``DatasetEvaluator`` so that detectron2's ``inference_on_dataset`` supplies the loop,
    the progress log and the gathering across processes.
    """

    def __init__(
        self,
        output_json: str | Path,
        score_thresh: float,
        max_per_image: int,
        info: dict[str, Any],
        previous: PreviousLabels | None = None,
    ):
        self._output_json = Path(output_json)
        self._score_thresh = score_thresh
        self._max_per_image = max_per_image
        self._info = info
        self._previous = previous
        self._records: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._records = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for item, output in zip(inputs, outputs, strict=True):
            if item is None:  # unreadable image, skipped by the mapper (INPUT.BAD_IMAGE_POLICY)
                continue
            annotations, embeddings = predictions_to_annotations(
                output["instances"], self._score_thresh, self._max_per_image
            )
            self._records.append(
                {
                    "file_name": item["file_name"],
                    "height": item["height"],
                    "width": item["width"],
                    "annotations": annotations,
                    "embeddings": embeddings,
                }
            )

    def evaluate(self) -> dict[str, Any]:
        comm.synchronize()
        records = list(itertools.chain(*comm.gather(self._records, dst=0)))
        if comm.is_main_process():
            if self._previous is not None:
                records = self._merged(records)
            store = EmbeddingStoreWriter(self._output_json)
            coco = _to_coco(records, self._info, store)
            # The store first: a json in place means its pseudo-labels are complete.
            coco["info"]["embedding_store"] = store.finish()
            atomic_write_json(self._output_json, coco)
            logger.info(
                f"Wrote {len(coco['annotations'])} pseudo-masks on {len(coco['images'])} "
                f"images to {self._output_json}"
            )
        comm.synchronize()
        return {}

    def _merged(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        width = next(
            (r["embeddings"].shape[1] for r in records if r["embeddings"] is not None), None
        )
        merged = [self._previous.merge(record, width) for record in records]
        logger.info(
            f"Added {self._previous.num_added} masks of {self._previous.dataset_names} that no "
            f"kept prediction covers (IoU < {self._previous.iou_thresh})"
        )
        if self._previous.num_without_embeddings:
            logger.warning(
                f"{self._previous.num_without_embeddings} images keep no embeddings: their added "
                f"masks carry none of the predicted width {width}"
            )
        return merged


def _to_coco(
    records: list[dict[str, Any]], info: dict[str, Any], store: EmbeddingStoreWriter
) -> dict[str, Any]:
    """COCO json with file names relative to the images' common folder (kept in ``info``);
    embeddings go to ``store`` in the file's annotation order."""
    records = sorted(records, key=lambda r: r["file_name"])
    image_root = os.path.commonpath([os.path.dirname(r["file_name"]) for r in records] or ["."])
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": os.path.relpath(record["file_name"], image_root),
                "height": record["height"],
                "width": record["width"],
            }
        )
        if record["embeddings"] is not None:
            store.add(record["annotations"], record["embeddings"])
        for fields in record["annotations"]:
            annotations.append(annotation_record(len(annotations) + 1, image_id, fields))
    return {**file_header({**info, "image_root": image_root}, images), "annotations": annotations}


def round_score_thresh(cfg: CfgNode, round_index: int) -> float:
    """Score a prediction of round ``round_index`` needs to label round ``round_index + 1``."""
    thresholds = cfg.SELF_TRAINING.SCORE_THRESHS
    return thresholds[round_index - 1] if thresholds else cfg.SELF_TRAINING.SCORE_THRESH


def write_pseudo_labels(
    cfg: CfgNode,
    model: nn.Module,
    dataset_names: list[str],
    output_json: str | Path,
    info: dict,
    *,
    round_index: int = 1,
    merge_from: list[str] | None = None,
) -> None:
    """Predict on every image of ``dataset_names`` (with or without pseudo-masks) and write the
    confident predictions of round ``round_index`` to ``output_json``; under
    ``SELF_TRAINING.MERGE: cutler`` with the uncovered masks of ``merge_from`` (the round's
    training sets; default ``dataset_names``, as in round 1)."""
    dicts = get_detection_dataset_dicts(dataset_names, filter_empty=False)
    loader = build_inference_loader(cfg, dicts)
    score_thresh = round_score_thresh(cfg, round_index)
    merge = cfg.SELF_TRAINING.MERGE
    previous = None
    if merge == "cutler":
        previous = PreviousLabels(merge_from or dataset_names, cfg.SELF_TRAINING.MERGE_IOU_THRESH)
    writer = PseudoLabelWriter(
        output_json,
        score_thresh,
        cfg.SELF_TRAINING.MAX_PER_IMAGE,
        {
            **info,
            "description": "uis_d2 self-training pseudo-labels",
            "score_thresh": score_thresh,
            "max_per_image": cfg.SELF_TRAINING.MAX_PER_IMAGE,
            "merge": merge,
            "source_datasets": list(dataset_names),
        },
        previous,
    )
    inference_on_dataset(SkipUnreadable(model), loader, writer)


def load_trained_model(cfg: CfgNode, weights: str | Path) -> nn.Module:
    """The model of a prepared ``cfg`` (engine/run_config.py) with ``weights`` loaded."""
    model = Trainer.build_model(cfg)
    ResilientCheckpointer(model).load(str(weights))
    return model


def run_self_training(cfg: CfgNode, resume: bool = False) -> Any:
    """Train SELF_TRAINING.ROUNDS rounds; returns the last round's ``Trainer.train()`` value
    (None when that round was already finished)."""
    rounds = cfg.SELF_TRAINING.ROUNDS
    train_datasets = list(cfg.DATASETS.TRAIN)
    result = None
    for r in range(1, rounds + 1):
        out = round_dir(cfg.OUTPUT_DIR, r)
        round_cfg = cfg.clone()
        round_cfg.defrost()
        round_cfg.OUTPUT_DIR = str(out)
        round_cfg.DATASETS.TRAIN = tuple(train_datasets)
        if r > 1:  # CutLER: DropLoss in the first round only (DropLoss ROI heads)
            round_cfg.MODEL.ROI_HEADS.DROPLOSS.ENABLED = False
        round_cfg = prepare_run_config(round_cfg)
        if comm.is_main_process():  # the exact settings of this round, for --eval-only later
            atomic_write_bytes(out / "config.yaml", round_cfg.dump().encode("utf-8"))
        final_model = out / FINAL_MODEL_FILE
        pseudo_json = out / PSEUDO_LABELS_FILE
        needs_labels = r < rounds

        if resume and final_model.is_file():
            logger.info(f"Self-training round {r}/{rounds}: already trained ({final_model})")
        else:
            logger.info(f"Self-training round {r}/{rounds}: training on {train_datasets}")
            trainer = Trainer(round_cfg)
            trainer.resume_or_load(resume=resume)
            result = trainer.train()
            del trainer  # frees the optimiser state and loader workers before inference
        if not needs_labels:
            break
        if not (resume and pseudo_json.is_file()):
            comm.synchronize()  # the main process has written the final model
            model = load_trained_model(round_cfg, final_model)
            info = {"round": r, "model": str(final_model)}
            write_pseudo_labels(
                round_cfg,
                model,
                list(cfg.DATASETS.TRAIN),
                pseudo_json,
                info,
                round_index=r,
                merge_from=train_datasets,
            )
        image_root = read_info(pseudo_json)["image_root"]
        register_pseudo_labels(pseudo_dataset_name(r), str(pseudo_json), image_root)
        train_datasets = [pseudo_dataset_name(r)]
    return result
