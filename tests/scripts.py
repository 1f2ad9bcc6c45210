"""The repository's command-line scripts as modules, so tests run them in-process (a subprocess
would pay a full torch import each time)."""

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """Import ``REPO/relative_path`` (e.g. "tools/train_net.py") as a fresh module."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
