"""Inference over a dataset in which some images cannot be read.

Under ``INPUT.BAD_IMAGE_POLICY: skip`` the mapper returns None for such an image. detectron2's
MapDataset would then substitute another image, so inference maps the dicts itself and keeps
the None, and the model wrapper gives it a None output: the image gets no predictions (its
ground truth still counts, as misses) and every other image is predicted exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from torch import nn

from uis_d2.data.mapper import PseudoMaskDatasetMapper


class MapKeepingUnreadable(torch.utils.data.Dataset):
    """Like detectron2's MapDataset, except that a skipped image stays a None entry."""

    def __init__(self, dicts: Sequence[dict[str, Any]], mapper: PseudoMaskDatasetMapper):
        self._dicts = dicts
        self._mapper = mapper

    def __len__(self) -> int:
        return len(self._dicts)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return self._mapper(self._dicts[index])


class SkipUnreadable(nn.Module):
    """Runs the model on the readable images of a batch; None inputs get None outputs, so
    inputs and outputs stay aligned for the evaluators."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
        readable = [x for x in inputs if x is not None]
        outputs = iter(self.model(readable) if readable else [])
        return [None if x is None else next(outputs) for x in inputs]


def build_inference_loader(cfg: CfgNode, dicts: Sequence[dict[str, Any]]):
    """Test-time loader whose unreadable images (skip policy) come through as None."""
    mapper = PseudoMaskDatasetMapper(cfg, is_train=False, skip_bad_at_inference=True)
    return build_detection_test_loader(
        MapKeepingUnreadable(dicts, mapper), mapper=None, num_workers=cfg.DATALOADER.NUM_WORKERS
    )
