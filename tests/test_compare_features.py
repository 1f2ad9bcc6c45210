"""tools/compare_features.py on the embedded data: weight-free features against a tiny random
ViT, the same numbers as evaluating each proposals file on its own, reuse on a second run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from training_cases import make_synthetic_root

from scripts import REPO, load_script
from uis_d2.evaluation.proposal_report import LABELS
from uis_d2.evaluation.recall_by_count import ALL_LABEL, recall_by_instance_count

CONFIGS = [
    str(REPO / "configs/proposals/synthetic.yaml"),
    str(REPO / "configs/proposals/synthetic_tiny_vit.yaml"),
]
NAMES = ["patch_stats", "tiny_vit"]
OVERRIDES = ["PROPOSALS.NUM_WORKERS", "0"]  # for every config


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Four validation scenes (the first two alone give both feature sets zero recall), and
    $DETECTRON2_DATASETS pointing at them."""
    root = make_synthetic_root(tmp_path_factory.mktemp("datasets"), num_train=1, num_val=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETECTRON2_DATASETS", str(root))
        yield root


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/compare_features.py")


def _run(tool, out: Path, *extra: str) -> int:
    argv = ["--configs", *CONFIGS, "--names", *NAMES, "--dataset", "synthetic_val"]
    return tool.main([*argv, "--out", str(out), *extra, *OVERRIDES])


def test_two_configs_side_by_side_then_reused(datasets, tmp_path, tool, capsys):
    out = tmp_path / "compare"
    assert _run(tool, out) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "AR100" in printed and "tiny_vit" in printed
    assert "[1/2] patch_stats: proposals with" in printed  # progress, config by config

    files = {name: out / "proposals" / f"{name}.json" for name in NAMES}
    gt = datasets / "synthetic/annotations/val.json"
    evaluate_json = load_script("tools/evaluate_json.py")
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [row["name"] for row in rows] == NAMES
    assert list(rows[0])[:3] == ["name", "file", "num_proposals"]
    for row in rows:
        path = files[row["name"]]
        info = json.loads(path.read_text())["info"]
        assert "NUM_WORKERS: 0" in info["config"]  # the override reached every config
        metrics = tmp_path / f"{row['name']}_metrics.json"
        argv = ["--gt", str(gt), "--pred", str(path), "--iou-types", "segm", "--json-out"]
        assert evaluate_json.main([*argv, str(metrics)]) == 0
        for key, value in json.loads(metrics.read_text())["segm"].items():
            assert float(row[f"segm_{key}"]) == pytest.approx(value, abs=1e-4, nan_ok=True), key
        recall = recall_by_instance_count(str(gt), str(path))
        assert recall.average_recall[ALL_LABEL] > 0  # something to compare
        for label in LABELS:
            expected = recall.average_recall[label]
            assert float(row[f"AR_{label}"]) == pytest.approx(expected, abs=1e-4, nan_ok=True)
            assert int(row[f"instances_{label}"]) == recall.num_instances[label]
    report = json.loads((out / "comparison.json").read_text())
    assert report["configs"] == dict(zip(NAMES, CONFIGS)) and report["overrides"] == OVERRIDES
    assert set(report["proposals"]) == set(NAMES)
    with Image.open(out / "comparison.png") as image:
        assert image.format == "PNG" and image.width > 600

    made = {name: path.stat().st_mtime_ns for name, path in files.items()}
    table = (out / "comparison.csv").read_text()
    assert _run(tool, out) == 0
    assert capsys.readouterr().out.count("is finished, reused") == len(NAMES)
    assert {name: path.stat().st_mtime_ns for name, path in files.items()} == made
    assert (out / "comparison.csv").read_text() == table

    alone = tmp_path / "alone"  # the random ViT's weights do not depend on what ran before
    argv = ["--configs", CONFIGS[1], "--names", NAMES[1], "--dataset", "synthetic_val"]
    assert tool.main([*argv, "--out", str(alone), *OVERRIDES]) == 0
    in_pair, by_itself = (
        json.loads(path.read_text())["annotations"]
        for path in (files["tiny_vit"], alone / "proposals/tiny_vit.json")
    )
    assert in_pair and in_pair == by_itself

    assert _run(tool, out, "--limit", "1") == 1  # other settings: an error, nothing overwritten
    assert "patch_stats.json holds proposals made with another image count" in (
        capsys.readouterr().err
    )
    assert {name: path.stat().st_mtime_ns for name, path in files.items()} == made


def test_limit_evaluates_the_first_images_against_their_ground_truth(datasets, tmp_path, tool):
    assert _run(tool, tmp_path / "compare", "--limit", "2") == 0
    report = json.loads((tmp_path / "compare/comparison.json").read_text())
    gt = json.loads((datasets / "synthetic/annotations/val.json").read_text())
    first = sorted(image["id"] for image in gt["images"])[:2]
    instances = [a for a in gt["annotations"] if a["image_id"] in first and not a["iscrowd"]]
    assert report["num_images"] == 2 and report["num_instances"][ALL_LABEL] == len(instances)


def test_missing_checkpoint_stops_before_any_generation(
    datasets, tmp_path, tool, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the config's relative checkpoints/ path: absent here
    coco_mae = str(REPO / "configs/proposals/coco_mae.yaml")
    argv = ["--configs", CONFIGS[0], coco_mae, "--dataset", "synthetic_val", "--out", "out"]
    assert tool.main(argv) == 1
    assert "checkpoints/mae_pretrain_vit_base.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
