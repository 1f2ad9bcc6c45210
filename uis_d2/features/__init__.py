"""Dense feature extractors for proposal generation (registration by import)."""

from uis_d2.features import patch_stats, resnet, vit  # noqa: F401  (registration by import)
from uis_d2.features.base import (
    FEATURE_EXTRACTOR_REGISTRY,
    FeatureExtractor,
    FeatureMap,
    build_feature_extractor,
    preprocessed_size,
)
from uis_d2.features.checkpoints import (
    CHECKPOINT_FORMATS,
    ENCODER_PREFIXES,
    file_sha256,
    load_checkpoint,
)
from uis_d2.features.resnet import RESNET_STAGES

__all__ = [
    "CHECKPOINT_FORMATS",
    "ENCODER_PREFIXES",
    "FEATURE_EXTRACTOR_REGISTRY",
    "RESNET_STAGES",
    "FeatureExtractor",
    "FeatureMap",
    "build_feature_extractor",
    "file_sha256",
    "load_checkpoint",
    "preprocessed_size",
]
