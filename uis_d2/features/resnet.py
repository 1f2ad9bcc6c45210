"""A torchvision ResNet's res4 (layer3, stride 16) or res5 (layer4, stride 32) feature map."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from detectron2.config import configurable
from torch import nn

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, FeatureExtractor
from uis_d2.features.checkpoints import load_checkpoint

STAGE_STRIDES = {"res4": 16, "res5": 32}
RESNET_STAGES = tuple(STAGE_STRIDES)  # the values of an extractor node's RESNET_STAGE


@FEATURE_EXTRACTOR_REGISTRY.register()
class ResNetDense(FeatureExtractor):
    """DenseCL-style dense map (FreeSOLO's Free Mask reads res5)."""

    @configurable
    def __init__(self, *, stage: str, **kwargs) -> None:
        """``stage``: one of ``RESNET_STAGES``; ``arch``: a torchvision ResNet constructor name;
        ``kwargs``: FeatureExtractor's."""
        super().__init__(**kwargs)
        stage = str(stage)
        if stage not in STAGE_STRIDES:
            raise ValueError(
                f"RESNET_STAGE = {stage!r} is invalid: must be {' or '.join(RESNET_STAGES)}"
            )
        if not hasattr(torchvision.models, self.arch):
            raise ValueError(f"ARCH = {self.arch!r} is not a torchvision ResNet")
        trunk = getattr(torchvision.models, self.arch)(weights=None)
        trunk.fc = nn.Identity()  # only the trunk is used; checkpoints' fc is reported unused
        if stage == "res4":
            trunk.layer4 = nn.Identity()
        self.trunk = trunk
        self.stage = stage
        self.stride = STAGE_STRIDES[stage]
        if self.checkpoint:
            self.checkpoint_sha256 = load_checkpoint(trunk, self.checkpoint, self.checkpoint_format)

    @classmethod
    def from_config(cls, cfg, short_side: int = 480, max_side: int = 800) -> dict[str, Any]:
        return {**super().from_config(cfg, short_side, max_side), "stage": cfg.RESNET_STAGE}

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(images))))
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))
