"""Fixtures shared by the training tests."""

import pytest
from training_cases import make_synthetic_root


@pytest.fixture(scope="module")
def training_datasets(tmp_path_factory):
    """A tiny synthetic dataset root (training_cases.py), and $DETECTRON2_DATASETS pointing at
    it, for a whole test module: the set is built once per module."""
    root = make_synthetic_root(tmp_path_factory.mktemp("datasets"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(root))
        yield root
