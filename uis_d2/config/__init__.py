"""Config keys, loading and validation."""

from uis_d2.config.defaults import add_uis_config
from uis_d2.config.loading import get_cfg, load_config, validate_uis_config

__all__ = ["add_uis_config", "get_cfg", "load_config", "validate_uis_config"]
