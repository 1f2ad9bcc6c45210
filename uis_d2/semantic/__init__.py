"""The semantic stage: DeepLab-v3 (detectron2's ``SemanticSegmentor``) on semantic pseudo-label
maps, MaskDistill's and COMUS's. Importing registers ``PseudoLabelDeepLabV3Head``.

``head.py`` (OHEM head), ``data.py`` (augmentations, loaders), ``pseudo_maps.py`` (map folders
as datasets), ``painting.py`` (instances to maps), ``rounds.py`` (COMUS's training rounds).
"""

from uis_d2.semantic.head import PseudoLabelDeepLabV3Head

__all__ = ["PseudoLabelDeepLabV3Head"]
