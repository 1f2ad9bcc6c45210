"""uis_d2: unsupervised, class-agnostic instance segmentation on detectron2.

Importing the package applies the detectron2 compatibility fixes first (before any detectron2
submodule loads), then registers the project's datasets, models and proposal generators.
"""

from uis_d2 import compat

compat.apply()

from uis_d2 import data, modeling, proposals  # noqa: E402,F401  (registration by import)
from uis_d2.config import add_uis_config, get_cfg, validate_uis_config  # noqa: E402

__all__ = ["add_uis_config", "get_cfg", "validate_uis_config"]
__version__ = "0.1.0"
