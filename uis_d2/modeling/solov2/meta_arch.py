"""SOLOv2 (Wang et al. 2020, with AdelaiDet's defaults) as a detectron2 meta-architecture
("SOLOv2"), trainable with FreeSOLO's weak losses (Wang et al. 2022).

Built like detectron2's ``GeneralizedRCNN``: ``__init__`` takes the built backbone and heads and
plain parameters; ``from_config`` is the only place that reads cfg. Backbone: whatever
MODEL.BACKBONE.NAME builds; the reference setting is detectron2's ``build_resnet_fpn_backbone``
whose extra P6 comes from a stride-2 max-pool of P5 (LastLevelMaxPool) instead of a conv: P6 is
only resized to P5's size here anyway. Its freezing is detectron2's MODEL.BACKBONE.FREEZE_AT
(5 = the whole ResNet, the paper's frozen backbone); MODEL.FREEZE.FPN also freezes the FPN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList, Instances
from torch import nn

from uis_d2.layers.color import rgb_to_lab
from uis_d2.modeling.freeze import freeze_fpn
from uis_d2.modeling.solov2.heads import InstanceHead, MaskFeatureHead
from uis_d2.modeling.solov2.inference import InferenceParams, decode_image, grid_peaks
from uis_d2.modeling.solov2.losses import LossWeights, solov2_losses
from uis_d2.modeling.solov2.targets import build_targets

INPUT_FORMATS = ("RGB", "BGR")


@dataclass
class HeadOutputs:
    """What the heads predict for a batch; per level for the grid outputs."""

    cate_logits: list[torch.Tensor]  # (B, C, S, S)
    kernels: list[torch.Tensor]  # (B, E, S, S)
    embeddings: list[torch.Tensor] | None  # (B, D, S, S); None without an embedding head
    mask_features: torch.Tensor  # (B, E, H/4, W/4)


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, K, S, S) maps -> (B, cells, K) in the targets' flat cell order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def apply_dynamic_kernels(
    kernels: torch.Tensor, mask_features: torch.Tensor, image_index: torch.Tensor
) -> torch.Tensor:
    """Mask logits (P, Hm, Wm): each 1x1 kernel (P, E) convolved with its image's (E, Hm, Wm)
    features, one matmul per image (gathering features per kernel would copy them P times)."""
    batch, _, height, width = mask_features.shape
    order = torch.argsort(image_index, stable=True)
    counts = torch.bincount(image_index, minlength=batch).tolist()
    chunks = torch.split(kernels[order], counts)
    logits = torch.cat([k @ mask_features[b].flatten(1) for b, k in enumerate(chunks)], dim=0).view(
        -1, height, width
    )
    return logits[torch.argsort(order)]


@META_ARCH_REGISTRY.register()
class SOLOv2(nn.Module):
    """SOLOv2 with an optional FreeSOLO semantic-embedding head."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        instance_head: InstanceHead,
        mask_head: MaskFeatureHead,
        instance_in_features: Sequence[str],
        mask_in_features: Sequence[str],
        instance_strides: Sequence[int],
        grids: Sequence[int],
        scale_ranges: Sequence[Sequence[float]],
        sigma: float,
        num_classes: int,
        loss_weights: LossWeights,
        inference_params: InferenceParams,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str,
    ):
        """
        Args:
            instance_strides: stride of each instance level (cells of a level predict
                instances whose masks are at least that many mask-feature pixels);
            grids: S of each instance level; scale_ranges: inclusive (low, high) on sqrt(box
                area) per level; sigma: the centre region's fraction of the half box;
            input_format: "RGB" or "BGR", the channel order of the input images.
        """
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"INPUT.FORMAT = {input_format!r}: SOLOv2 needs 'RGB' or 'BGR'")
        self.backbone = backbone
        self.instance_head = instance_head
        self.mask_head = mask_head
        self.instance_in_features = list(instance_in_features)
        self.mask_in_features = list(mask_in_features)
        self.strides = list(instance_strides)
        self.grids = list(grids)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.num_classes = num_classes
        self.loss_weights = loss_weights
        self.inference_params = inference_params
        self.input_format = input_format
        self.mask_stride = backbone.output_shape()[self.mask_in_features[0]].stride
        self.size_divisibility = max(32, backbone.size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        s = cfg.MODEL.SOLOV2
        backbone = build_backbone(cfg)
        if cfg.MODEL.FREEZE.FPN:
            freeze_fpn(backbone, f"MODEL.BACKBONE.NAME = {cfg.MODEL.BACKBONE.NAME!r}")
        shapes = backbone.output_shape()
        for key in ("INSTANCE_IN_FEATURES", "MASK_IN_FEATURES"):
            missing = [f for f in s[key] if f not in shapes]
            if missing:
                raise ValueError(
                    f"MODEL.SOLOV2.{key} names {missing}, which the backbone "
                    f"{cfg.MODEL.BACKBONE.NAME!r} does not output (it has {sorted(shapes)})"
                )
        for key, feature_key in (
            ("INSTANCE_IN_CHANNELS", "INSTANCE_IN_FEATURES"),
            ("MASK_IN_CHANNELS", "MASK_IN_FEATURES"),
        ):
            channels = {shapes[f].channels for f in s[feature_key]}
            if channels != {s[key]}:
                raise ValueError(
                    f"MODEL.SOLOV2.{key} = {s[key]} but the backbone's {feature_key} have "
                    f"{sorted(channels)} channels (MODEL.FPN.OUT_CHANNELS)"
                )
        return {
            "backbone": backbone,
            "instance_head": InstanceHead(
                in_channels=s.INSTANCE_IN_CHANNELS,
                channels=s.INSTANCE_CHANNELS,
                num_convs=s.NUM_INSTANCE_CONVS,
                num_classes=s.NUM_CLASSES,
                num_kernels=s.NUM_KERNELS,
                embedding_dim=s.EMBED_DIM,
                prior_prob=s.PRIOR_PROB,
                norm=s.NORM,
                use_coord_conv=s.USE_COORD_CONV,
            ),
            "mask_head": MaskFeatureHead(
                in_channels=s.MASK_IN_CHANNELS,
                channels=s.MASK_CHANNELS,
                num_levels=len(s.MASK_IN_FEATURES),
                num_masks=s.NUM_MASKS,
                norm=s.NORM,
                use_coord_conv=s.USE_COORD_CONV,
            ),
            "instance_in_features": s.INSTANCE_IN_FEATURES,
            "mask_in_features": s.MASK_IN_FEATURES,
            "instance_strides": s.FPN_INSTANCE_STRIDES,
            "grids": s.NUM_GRIDS,
            "scale_ranges": s.FPN_SCALE_RANGES,
            "sigma": s.SIGMA,
            "num_classes": s.NUM_CLASSES,
            "loss_weights": LossWeights.from_config(cfg),
            "inference_params": InferenceParams.from_config(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Training: dict of loss terms. Inference: [{"instances": Instances}] per image."""
        images = self.preprocess_image(batched_inputs)
        heads = self.predict_heads(images)
        if self.training:
            return self.losses(batched_inputs, images, heads)
        return self.inference(batched_inputs, images, heads)

    def predict_heads(self, images: ImageList) -> HeadOutputs:
        features = self.backbone(images.tensor)
        return HeadOutputs(
            *self.instance_head(self.instance_features(features), self.grids),
            mask_features=self.mask_head([features[f] for f in self.mask_in_features]),
        )

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.size_divisibility)

    def instance_features(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """p2 halved (stride 8: its fine grid needs no stride-4 detail) and p6 brought to p5's
        size, giving the instance strides [8, 8, 16, 32, 32]."""
        feats = [features[f] for f in self.instance_in_features]
        feats[0] = F.interpolate(feats[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        feats[-1] = F.interpolate(
            feats[-1], size=feats[-2].shape[-2:], mode="bilinear", align_corners=False
        )
        return feats

    def lab_images(
        self, batched_inputs: list[dict[str, Any]], size: tuple[int, int]
    ) -> torch.Tensor:
        """(B, 3, Hm, Wm) CIELab images avg-pooled to the mask-feature stride (pairwise loss)."""
        raw = [x["image"].to(self.device).float() for x in batched_inputs]
        padded = ImageList.from_tensors(raw, self.size_divisibility).tensor / 255.0
        if self.input_format == "BGR":
            padded = padded.flip(1)
        pooled = F.avg_pool2d(padded, self.mask_stride, self.mask_stride)
        return rgb_to_lab(pooled[..., : size[0], : size[1]])

    def image_pixels(self, images: ImageList, size: tuple[int, int]) -> torch.Tensor:
        """(B, Hm, Wm) bool: the mask-feature pixels that hold image rather than padding (the
        pairwise term never pairs a pixel with the padding)."""
        valid = torch.zeros((len(images), *size), dtype=torch.bool, device=self.device)
        for i, (height, width) in enumerate(images.image_sizes):
            valid[i, : -(-height // self.mask_stride), : -(-width // self.mask_stride)] = True
        return valid

    def losses(
        self, batched_inputs: list[dict[str, Any]], images: ImageList, heads: HeadOutputs
    ) -> dict[str, torch.Tensor]:
        missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
        if missing:
            raise ValueError(f"training inputs {missing} have no 'instances' (ground truth)")
        instances = [x["instances"].to(self.device) for x in batched_inputs]
        # The losses sum over up to ~10^5 mask pixels per instance, which overflows float16:
        # under AMP they run in float32 on float32 copies of the head outputs.
        with torch.autocast(self.device.type, enabled=False):
            targets = build_targets(
                instances,
                tuple(images.tensor.shape[-2:]),
                self.grids,
                self.scale_ranges,
                self.sigma,
                self.num_classes,
                self.mask_stride,
            )
            flat_kernels = flatten_levels(heads.kernels).float()
            mask_features = heads.mask_features.float()
            pos_kernels = flat_kernels[targets.pos_image, targets.pos_cell]
            mask_logits = apply_dynamic_kernels(pos_kernels, mask_features, targets.pos_image)
            pred_embeddings = None
            if heads.embeddings is not None:
                flat_embeddings = flatten_levels(heads.embeddings).float()
                pred_embeddings = flat_embeddings[targets.pos_image, targets.pos_cell]
            weak = self.loss_weights.mode == "weak"
            size = tuple(mask_features.shape[-2:])
            return solov2_losses(
                self.loss_weights,
                flatten_levels(heads.cate_logits).float(),
                mask_logits,
                pred_embeddings,
                targets,
                self.lab_images(batched_inputs, size) if weak else None,
                unused_preds=(flat_kernels, mask_features, *(heads.embeddings or [])),
                valid=self.image_pixels(images, size) if weak else None,
            )

    def inference(
        self, batched_inputs: list[dict[str, Any]], images: ImageList, heads: HeadOutputs
    ) -> list[dict[str, Instances]]:
        # float32: maskness sums over whole masks would overflow float16 under AMP.
        scores = flatten_levels([grid_peaks(torch.sigmoid(c.float())) for c in heads.cate_logits])
        flat_kernels = flatten_levels(heads.kernels).float()
        flat_embeddings = None
        if heads.embeddings is not None:
            flat_embeddings = flatten_levels(heads.embeddings).float()
        mask_features = heads.mask_features.float()
        strides = torch.cat(
            [
                torch.full((grid * grid,), stride, device=self.device)
                for grid, stride in zip(self.grids, self.strides, strict=True)
            ]
        )
        results = []
        for i, inputs in enumerate(batched_inputs):
            image_size = images.image_sizes[i]
            output_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            instances = decode_image(
                scores[i],
                flat_kernels[i],
                strides,
                mask_features[i],
                image_size,
                output_size,
                self.inference_params,
                self.mask_stride,
                None if flat_embeddings is None else flat_embeddings[i],
            )
            results.append({"instances": instances})
        return results
