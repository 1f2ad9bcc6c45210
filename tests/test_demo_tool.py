"""tools/demo.py writes one overlay PNG per readable input and names what it could not read."""

import cv2
import numpy as np
import pytest

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from scripts import REPO, load_script
from uis_d2.data.image_io import BadImageError

OPTS = [
    "MODEL.SOLOV2.SCORE_THR", "0.0", "MODEL.SOLOV2.UPDATE_THR", "0.0",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "DATASETS.TRAIN", "()",
]  # fmt: skip


def test_demo_draws_predictions_and_counts_unreadable_inputs(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "overlays"
    demo = load_script("tools/demo.py")
    config = str(REPO / "configs/synthetic/solov2_freesolo_cpu.yaml")
    argv = ["--config-file", config, "--input", str(images), "--output", str(out)]
    code = demo.main([*argv, "--confidence-threshold", "0", "--opts", *OPTS])
    assert code == 0  # the unreadable input is skipped (INPUT.BAD_IMAGE_POLICY skip) and named
    assert "broken.png" in capsys.readouterr().out
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 2 and not any("broken" in n for n in written)
    for name, source in zip(written, ("a.png", "b.png"), strict=True):
        overlay = cv2.imread(str(out / name))
        original = cv2.imread(str(images / source))
        assert overlay.shape == original.shape
        assert (overlay != original).any()  # predictions were drawn
    with pytest.raises(BadImageError, match="broken.png"):
        demo.main([*argv, "--output", str(tmp_path / "again"), "--opts", *OPTS,
                   "INPUT.BAD_IMAGE_POLICY", "fail"])  # fmt: skip


def test_demo_names_a_missing_input(tmp_path, capsys):
    demo = load_script("tools/demo.py")
    config = str(REPO / "configs/synthetic/solov2_freesolo_cpu.yaml")
    missing = tmp_path / "nope.png"
    code = demo.main(["--config-file", config, "--input", str(missing), "--output", str(tmp_path)])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
