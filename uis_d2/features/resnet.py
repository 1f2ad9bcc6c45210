"""A torchvision ResNet's res4 (layer3, stride 16) or res5 (layer4, stride 32) feature map."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from uis_d2.features.base import FEATURE_EXTRACTOR_REGISTRY, FeatureExtractor
from uis_d2.features.checkpoints import load_checkpoint

_STAGE_STRIDE = {"res4": 16, "res5": 32}


@FEATURE_EXTRACTOR_REGISTRY.register()
class ResNetDense(FeatureExtractor):
    """DenseCL-style dense map (FreeSOLO's Free Mask reads res5)."""

    def __init__(self, node, short_side: int = 480, max_side: int = 800) -> None:
        super().__init__(node, short_side, max_side)
        stage = str(node.RESNET_STAGE)
        if stage not in _STAGE_STRIDE:
            raise ValueError(f"RESNET_STAGE = {stage!r} is invalid: must be res4 or res5")
        if not hasattr(torchvision.models, self.arch):
            raise ValueError(f"ARCH = {self.arch!r} is not a torchvision ResNet")
        trunk = getattr(torchvision.models, self.arch)(weights=None)
        trunk.fc = nn.Identity()  # only the trunk is used; checkpoints' fc is reported unused
        if stage == "res4":
            trunk.layer4 = nn.Identity()
        self.trunk = trunk
        self.stage = stage
        self.stride = _STAGE_STRIDE[stage]
        if self.checkpoint:
            self.checkpoint_sha256 = load_checkpoint(trunk, self.checkpoint, node.CHECKPOINT_FORMAT)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(images))))
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))
