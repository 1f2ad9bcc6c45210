"""tools/evaluate_json.py as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from evaluation_cases import PARTIAL_EXPECTED, partial_case

from scripts import load_script
from uis_d2.evaluation.coco_agnostic import METRIC_KEYS

TOOL = Path(__file__).resolve().parents[1] / "tools" / "evaluate_json.py"


def load_tool():
    """The tool as a module, for in-process runs (a subprocess costs a full torch import)."""
    return load_script("tools/evaluate_json.py")


def test_writes_metrics_json(tmp_path):
    gt, predictions = partial_case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    out = tmp_path / "metrics" / "m.json"
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--gt", str(tmp_path / "gt.json"),
         "--pred", str(tmp_path / "pred.json"), "--json-out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "AR100" in proc.stdout
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"segm", "bbox"}
    for values in metrics.values():
        assert list(values) == METRIC_KEYS
        assert values["AR100"] == pytest.approx(PARTIAL_EXPECTED["AR100"])
        assert values["AP"] == pytest.approx(PARTIAL_EXPECTED["AP"])


def test_malformed_file_is_named(tmp_path, capsys):
    tool = load_tool()
    gt, _ = partial_case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "bad_pred.json").write_text('{"annotations": 3}')
    assert (
        tool.main(["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "bad_pred.json")])
        == 1
    )
    assert "bad_pred.json" in capsys.readouterr().err
    assert (
        tool.main(["--gt", str(tmp_path / "no_gt.json"), "--pred", str(tmp_path / "gt.json")]) == 1
    )
    assert "no_gt.json" in capsys.readouterr().err
