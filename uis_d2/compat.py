"""Runtime fixes that let detectron2 v0.6 (the PyPI sources) run on current numpy and Pillow
without its C++ extension.

Each fix is applied only where the thing it provides is missing, so an upstream detectron2 built
with its extension (and newer libraries) is left exactly as it is. ``apply()`` must run before any
``detectron2`` submodule is imported; ``import uis_d2`` does that.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import numpy as np
from PIL import Image

# numpy >= 1.24 removed these aliases; detectron2 v0.6 still uses them.
_NUMPY_ALIASES = {"bool": bool, "int": int, "float": float}
# Pillow >= 10 removed these resampling names; v0.6 uses Image.LINEAR as a default argument.
_PIL_ALIASES = {"LINEAR": "BILINEAR", "CUBIC": "BICUBIC", "ANTIALIAS": "LANCZOS"}

MISSING_EXTENSION_MESSAGE = (
    "detectron2 was installed without its compiled extension (detectron2._C), so '{name}' is "
    "unavailable: deformable convolution, rotated-box ops and the fast C++ COCO evaluator need it. "
    "uis_d2 does not use them; if you need them, build detectron2 from its git repository "
    "(see README, 'Install routes')."
)


class MissingExtensionError(RuntimeError):
    """Raised when code calls an op of detectron2's absent C++ extension."""


class _MissingExtension(types.ModuleType):
    """Stand-in for ``detectron2._C``: importable, but every op raises a clear error."""

    # detectron2's collect_env_info (logged by default_setup) asks for these: report no build.
    @staticmethod
    def get_compiler_version() -> str:
        return "none (detectron2._C placeholder, see uis_d2.compat)"

    get_cuda_version = get_compiler_version

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def _unavailable(*args, **kwargs):
            raise MissingExtensionError(MISSING_EXTENSION_MESSAGE.format(name=name))

        return _unavailable


def _patch_numpy() -> list[str]:
    applied = []
    for name, value in _NUMPY_ALIASES.items():
        if not hasattr(np, name):
            setattr(np, name, value)
            applied.append(f"numpy.{name}")
    return applied


def _patch_pillow() -> list[str]:
    applied = []
    for old, new in _PIL_ALIASES.items():
        if not hasattr(Image, old) and hasattr(Image, new):
            setattr(Image, old, getattr(Image, new))
            applied.append(f"PIL.Image.{old}")
    return applied


def _patch_missing_extension() -> list[str]:
    if "detectron2._C" in sys.modules:
        return []
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "detectron2 is not installed: run `make setup` (see README, 'Install routes')."
        )
    if importlib.util.find_spec("detectron2._C") is not None:
        return []
    sys.modules["detectron2._C"] = _MissingExtension("detectron2._C")
    return ["detectron2._C (placeholder)"]


def has_compiled_extension() -> bool:
    """True when detectron2's real C++ extension is loaded."""
    return not isinstance(sys.modules.get("detectron2._C"), _MissingExtension)


APPLIED: list[str] = []


def apply() -> list[str]:
    """Apply every missing fix once; returns what was patched (for logs and tests)."""
    # detectron2 scripts a few helpers with torch.jit, which torch >= 2.10 deprecates loudly.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    if not APPLIED:
        APPLIED.extend(_patch_numpy() + _patch_pillow() + _patch_missing_extension())
    return list(APPLIED)
