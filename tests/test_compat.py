"""The compatibility layer makes detectron2 importable and fails clearly where _C is missing."""

import subprocess
import sys

import numpy as np
import pytest

import uis_d2
from uis_d2 import compat


def test_apply_is_idempotent_and_reports_fixes():
    assert compat.apply() == compat.apply()


def test_removed_numpy_aliases_are_available():
    assert np.int is int or np.dtype(np.int) == np.dtype(int)
    assert np.float is float or np.dtype(np.float) == np.dtype(float)


def test_detectron2_modules_used_by_uis_d2_import():
    code = (
        "import uis_d2, detectron2.modeling, detectron2.data, detectron2.evaluation, "
        "detectron2.engine, detectron2.data.transforms; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


COMPILED = compat.has_compiled_extension()
on_placeholder_route = pytest.mark.skipif(COMPILED, reason="detectron2 has its compiled _C here")
on_compiled_route = pytest.mark.skipif(not COMPILED, reason="detectron2 has no compiled _C here")

SPY_ON_DETECTRON2_IMPORTS = """
import importlib.util, sys, numpy, PIL.Image

compiled = importlib.util.find_spec("detectron2._C") is not None  # imports detectron2 itself

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("detectron2.") and name != "detectron2._C":
            assert hasattr(numpy, "int") and hasattr(PIL.Image, "LINEAR"), name
            # detectron2/__init__ itself loads utils.env (no _C use) while _C is being looked up.
            if not compiled:
                assert "detectron2._C" in sys.modules or name.startswith("detectron2.utils"), name
        return None

sys.meta_path.insert(0, Spy())
import uis_d2
extension = sys.modules.get("detectron2._C")
print(compiled, getattr(extension, "__file__", None), uis_d2.compat.APPLIED)
print(sum(m.startswith("detectron2.") for m in sys.modules))
"""


def _spy_on_detectron2_imports() -> str:
    """The spy's report: route, the loaded _C's file and the fixes applied."""
    out = subprocess.run(
        [sys.executable, "-c", SPY_ON_DETECTRON2_IMPORTS], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    report, count = out.stdout.strip().splitlines()[-2:]
    assert int(count) > 10  # registration really imported detectron2 modules
    return report


@on_placeholder_route
def test_placeholder_extension_is_in_place_before_any_detectron2_submodule_loads():
    report = _spy_on_detectron2_imports()
    assert report.startswith("False None") and "detectron2._C (placeholder)" in report


@on_compiled_route
def test_compiled_extension_is_kept_and_the_aliases_still_precede_detectron2():
    report = _spy_on_detectron2_imports()
    compiled, extension_file = report.split()[:2]
    assert compiled == "True" and "placeholder" not in report
    # Registration need not load _C; where it did, it is the real shared library.
    assert extension_file == "None" or extension_file.endswith(".so")


@on_placeholder_route
def test_missing_extension_op_raises_a_clear_error():
    from detectron2 import _C

    with pytest.raises(compat.MissingExtensionError, match="deform_conv_forward"):
        _C.deform_conv_forward()
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]])
    with pytest.raises(compat.MissingExtensionError, match="without its compiled extension"):
        pairwise_iou_rotated(boxes, boxes)


@on_compiled_route
def test_compiled_extension_ops_run():
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    assert "detectron2._C (placeholder)" not in compat.apply()
    boxes = torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]])
    assert pairwise_iou_rotated(boxes, boxes).item() == pytest.approx(1.0)


def test_package_exposes_config_entry_point():
    cfg = uis_d2.get_cfg()
    assert cfg.MODEL.SOLOV2.NUM_CLASSES == 1
