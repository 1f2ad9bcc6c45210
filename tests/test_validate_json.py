"""tools/validate_json.py: summary, every problem, exit code 0/1."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle

TOOL = Path(__file__).resolve().parents[1] / "tools" / "validate_json.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("validate_json_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pseudo_labels(num_annotations: int) -> dict:
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": mask_to_rle(mask),
            "bbox": mask_to_box_xywh(mask),
            "area": float(mask.sum()),
            "score": 0.9,
        }
        for i in range(num_annotations)
    ]
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 10}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": annotations,
    }


def _write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_clean_file_exits_zero(tool, tmp_path, capsys):
    assert tool.main([_write(tmp_path, _pseudo_labels(2))]) == 0
    out = capsys.readouterr().out
    assert "(pseudo): 1 images, 2 annotations" in out and out.strip().endswith("OK")


def test_every_problem_is_printed_and_exit_code_is_one(tool, tmp_path, capsys):
    data = _pseudo_labels(3)
    for ann in data["annotations"]:
        ann["score"] = 3.0
    assert tool.main([_write(tmp_path, data), "--max-problems", "2"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert "annotation #0 (id=1): field 'score'" in out and "(id=2): field 'score'" in out
    assert "... and 1 more" in out and out.strip().endswith("FAILED")


def test_images_and_kind_options(tool, tmp_path, capsys):
    path = _write(tmp_path, _pseudo_labels(1))
    images = tmp_path / "images"
    images.mkdir()
    assert tool.main([path, "--images", str(images), "--kind", "gt"]) == 1
    out = capsys.readouterr().out
    assert "(gt)" in out and "image #0 (id=1): field 'file_name': image file not found" in out
    (images / "a.png").write_bytes(b"png")
    assert tool.main([path, "--images", str(images)]) == 0


def test_missing_file_exits_one_with_message(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path / "nope.json")]) == 1
    assert "nope.json" in capsys.readouterr().err


def test_bad_option_is_rejected(tool, tmp_path):
    with pytest.raises(SystemExit):
        tool.main([_write(tmp_path, _pseudo_labels(1)), "--max-problems", "0"])
