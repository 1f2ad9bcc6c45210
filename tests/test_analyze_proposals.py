"""tools/analyze_proposals.py: Table 1 style report from proposal files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from evaluation_cases import COUNT_EXPECTED_AR, COUNT_EXPECTED_INSTANCES, count_case
from PIL import Image

from scripts import load_script

TOOL = Path(__file__).resolve().parents[1] / "tools" / "analyze_proposals.py"


@pytest.fixture(scope="module")
def tool():
    """The tool as a module, run in-process (a subprocess costs a full torch import)."""
    return load_script("tools/analyze_proposals.py")


def test_writes_csv_json_png_for_two_proposal_sets(tmp_path, tool, capsys):
    gt, proposals = count_case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "full.json").write_text(json.dumps(proposals))
    # the second set, a pseudo-label dict, lacks the proposal that recalls dog D (image 1)
    pseudo = {"images": gt["images"], "annotations": proposals[:2] + proposals[3:]}
    (tmp_path / "fewer.json").write_text(json.dumps(pseudo))
    out = tmp_path / "report"
    code = tool.main(
        ["--gt", str(tmp_path / "gt.json"), "--out", str(out),
         "--proposals", str(tmp_path / "full.json"), str(tmp_path / "fewer.json"),
         "--names", "MAE", "DINO"]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "GT instances" in printed.out and "DINO" in printed.out

    rows = {row["name"]: row for row in csv.DictReader((out / "recall_by_count.csv").open())}
    assert list(rows) == ["MAE", "DINO"]
    for label, value in COUNT_EXPECTED_AR.items():
        assert float(rows["MAE"][f"AR_{label}"]) == pytest.approx(value, abs=1e-3), label
        assert int(rows["MAE"][f"instances_{label}"]) == COUNT_EXPECTED_INSTANCES[label]
    assert float(rows["DINO"]["AR_1"]) == pytest.approx(0.0)  # D lost, H never found
    assert float(rows["DINO"]["AR_2"]) == pytest.approx(52.5, abs=1e-3)
    assert 0 < float(rows["MAE"]["segm_AR100"]) <= 100

    report = json.loads((out / "recall_by_count.json").read_text())
    assert report["num_instances"] == COUNT_EXPECTED_INSTANCES
    assert set(report["proposals"]) == {"MAE", "DINO"}
    assert report["proposals"]["MAE"]["coco_segm"]["AR100"] == pytest.approx(
        float(rows["MAE"]["segm_AR100"]), abs=1e-3
    )
    with Image.open(out / "recall_by_count.png") as image:
        assert image.format == "PNG" and image.width > 100


def test_name_count_must_match(tmp_path, tool, capsys):
    argv = ["--gt", "g.json", "--out", str(tmp_path), "--proposals", "a.json", "b.json"]
    with pytest.raises(SystemExit) as exit_info:
        tool.main([*argv, "--names", "only_one"])
    assert exit_info.value.code == 2
    assert "--names gives 1 names for 2 files" in capsys.readouterr().err


def test_missing_proposals_file_is_named(tmp_path, tool, capsys):
    gt, _ = count_case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    argv = ["--gt", str(tmp_path / "gt.json"), "--out", str(tmp_path / "out")]
    assert tool.main([*argv, "--proposals", str(tmp_path / "nowhere.json")]) == 1
    assert "nowhere.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
