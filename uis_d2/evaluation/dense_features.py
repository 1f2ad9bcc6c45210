"""Leopart's evaluation of dense features (SEED_SYSTEMS.md 3.7): overclustering and linear probe.

Both protocols read the final-norm patch tokens of every image resized to a fixed square
(``uis_d2.features.dense_dataset``) and score at ``eval_size`` x ``eval_size`` (Leopart: 100),
ground truth resized by nearest neighbour, 255 ignored.

- **Overclustering** (unsupervised): the tokens of the whole evaluated set standardised per
  dimension, PCA to ``pca_dim`` (50), k-means with K clusters (the project's torch k-means,
  ``pseudo_classes.clustering.kmeans``: greedy k-means++, Lloyd steps, restarts; Leopart uses
  faiss with 100 iterations and 5 redos), token maps upsampled by nearest neighbour and scored by
  ``UnsupervisedSemSegEvaluator``: many-to-one by precision for K > C, Hungarian for K <= C
  (C = classes with the background). Several seeds, mean and sample standard deviation.
- **Linear probe** (supervised: the standard transfer protocol, it trains on ground truth): a
  1x1 convolution on the frozen tokens, logits bilinearly upsampled to the evaluation size
  (equal to upsampling the tokens first, as Leopart does: interpolation is linear and its
  weights sum to 1), cross-entropy with 255 ignored, SGD with a x0.1 step. Scored with the
  identity mapping (its outputs are classes already; a Hungarian matching could only hide
  its confusions). Unlike Leopart's reference, no crop/flip augmentation: the tokens are
  computed once and cached, never by re-running the model per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from uis_d2.evaluation.cluster_matching import accumulate_confusion, semantic_scores
from uis_d2.evaluation.semantic import UnsupervisedSemSegEvaluator
from uis_d2.pseudo_classes.clustering import kmeans
from uis_d2.utils.files import atomic_output

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255


def overclustering_matching(k: int, num_classes: int) -> str:
    """Leopart: many-to-one by precision when there are more clusters than classes, else
    one-to-one (Hungarian)."""
    return "precision" if k > num_classes else "hungarian"


def cached_kmeans(
    points: torch.Tensor, k: int, seed: int, restarts: int, iters: int, cache: Path | None = None
) -> np.ndarray:
    """k-means labels (M,) of ``points`` (M, d), read from / written to the .npy ``cache``, so
    that a killed run keeps every finished clustering."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    labels = kmeans(points.numpy(), k, restarts, seed, iters).astype(np.int32)
    if cache is not None:
        with atomic_output(cache) as f:
            np.save(f, labels)
    return labels


def score_label_maps(
    dataset: str,
    file_names: Sequence[str],
    label_maps: np.ndarray,
    gt_maps: np.ndarray,
    num_ids: int,
    matching: str,
    eval_size: int,
    allow_train_split: bool = False,
    output_dir: Path | None = None,
) -> dict[str, float]:
    """The semantic evaluator's scalars (mIoU, pACC, discovered, IoU per class; percent) of id
    maps (N, h, w) with ids 0..``num_ids`` - 1 against ground-truth maps (N, H, W);
    ``output_dir`` also keeps its json (with the mapping) and confusion PNG."""
    evaluator = UnsupervisedSemSegEvaluator(
        dataset,
        num_clusters=num_ids - 1,  # the evaluator counts ids 0..K
        matchings=(matching,),
        eval_size=eval_size,
        output_dir=output_dir,
        distributed=False,
        allow_train_split=allow_train_split,
    )
    for source, pred, gt in zip(file_names, label_maps, gt_maps):
        evaluator.add_image(pred, gt, source)
    return evaluator.evaluate()[f"sem_seg_{matching}"]


def seed_summary(runs: Sequence[Mapping[str, float]], keys: Sequence[str] = ("mIoU", "pACC")):
    """Per key: mean and sample standard deviation over the seeds' runs (std 0 for one run)."""
    summary = {}
    for key in keys:
        values = np.asarray([run[key] for run in runs], dtype=np.float64)
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


@dataclass(frozen=True)
class ProbeSettings:
    """Leopart's linear-probe optimisation (ref ``experiments/linear_probing``)."""

    epochs: int = 25
    lr_drop_epoch: int = 20  # the learning rate is multiplied by 0.1 from this epoch on
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "lr_drop_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"linear probe {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"linear probe lr must be > 0, got {self.lr}")


def probe_logits(head: nn.Conv2d, tokens: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, size, size) class logits of (B, D, h, w) tokens."""
    logits = head(tokens)
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def train_linear_probe(
    tokens: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    settings: ProbeSettings,
    device: torch.device | str = "cpu",
) -> tuple[nn.Conv2d, list[float]]:
    """A 1x1 conv trained on frozen tokens (N, D, h, w) against class maps (N, S, S) (255
    ignored), seeded (initialisation and batch order); returns it and the mean loss per epoch.
    Tokens stay where they are (CPU memory); only batches go to ``device``."""
    if len(tokens) != len(targets):
        raise ValueError(f"{len(tokens)} token maps for {len(targets)} ground-truth maps")
    size = int(targets.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head = nn.Conv2d(tokens.shape[1], num_classes, kernel_size=1)
    head.to(device).train()
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [settings.lr_drop_epoch], 0.1)
    order = torch.Generator().manual_seed(settings.seed)
    losses = []
    for _ in tqdm(range(settings.epochs), desc="linear probe", unit="epoch"):
        total, pixels = 0.0, 0
        for batch in torch.randperm(len(tokens), generator=order).split(settings.batch_size):
            target = targets[batch].to(device, torch.long)
            valid = int((target != IGNORE_LABEL).sum())
            if valid == 0:  # cross-entropy over no pixel is NaN
                continue
            logits = probe_logits(head, tokens[batch].to(device), size)
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, pixels = total + loss.item() * valid, pixels + valid
        schedule.step()
        losses.append(total / max(pixels, 1))
    return head.eval(), losses


@torch.inference_mode()
def probe_predictions(
    head: nn.Conv2d, tokens: torch.Tensor, size: int, batch_size: int = 60
) -> np.ndarray:
    """(N, size, size) uint8 predicted classes of (N, D, h, w) tokens."""
    device = head.weight.device
    maps = [
        probe_logits(head, batch.to(device), size).argmax(1).to("cpu", torch.uint8)
        for batch in tokens.split(batch_size)
    ]
    return torch.cat(maps).numpy()


def identity_scores(pred: np.ndarray, gt: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU and pixel accuracy (percent) and IoU per class of class maps ``pred`` against
    ``gt`` (same shape; 255 ignored), each prediction taken as the class it names."""
    num_classes = len(class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    accumulate_confusion(confusion, pred, gt, IGNORE_LABEL)
    scores = semantic_scores(confusion, np.arange(num_classes))
    return {
        "mIoU": 100 * scores.miou,
        "pACC": 100 * scores.pixel_accuracy,
        # None: a class neither present nor predicted, left out of the mean.
        "per_class_iou": {
            name: 100 * float(iou) if defined else None
            for name, iou, defined in zip(class_names, scores.per_class_iou, scores.defined)
        },
        "confusion": confusion.tolist(),  # rows: predicted classes, columns: ground truth
    }


__all__ = [
    "IGNORE_LABEL",
    "ProbeSettings",
    "cached_kmeans",
    "identity_scores",
    "overclustering_matching",
    "probe_logits",
    "probe_predictions",
    "score_label_maps",
    "seed_summary",
    "train_linear_probe",
]
