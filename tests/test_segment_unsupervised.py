"""tools/segment_unsupervised.py end to end with the weight-free PatchStats tokens: outputs on
the tiny synthetic set, and the expected gains (SEED_SYSTEMS.md 5.3 d) on 80 synthetic scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2)
from scripts import load_script
from uis_d2.data.synthetic import generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/proposals/synthetic.yaml")
REPORT = "segment_unsupervised"


@pytest.fixture(autouse=True)
def single_thread():
    """Small matrix products spend their time in thread hand-off on busy shared cores (10x
    slower measured with a second process running): one thread is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(out: Path, *extra: str, fit: str = "synthetic_train_sem") -> int:
    tool = load_script("tools/segment_unsupervised.py")
    argv = ["--config-file", CONFIG, "--fit-dataset", fit, "--dataset", "synthetic_val_sem"]
    return tool.main([*argv, "--out", str(out), *extra, "MODEL.DEVICE", "cpu"])


def test_tool_writes_its_report_table_and_grid(training_datasets, tmp_path):
    settings = ["--size", "64", "--k-cbfe", "16", "--k-cd", "8", "--markov-time", "1"]
    assert _run(tmp_path, *settings, "--weight-threshold", "0.05", "--grid", "2") == 0
    report = json.loads((tmp_path / f"{REPORT}.json").read_text())
    assert report["token_grid"] == [8, 8]
    assert report["num_images"] == {"fit": 3, "eval": 2}
    assert report["uses_labels"] is False
    assert report["cbfe"]["rule"] == "background_share"
    assert report["community"]["detector"] in ("infomap", "louvain")
    assert report["community"]["label_tuned_reference_defaults"] == []
    assert set(report["semantic"]) == {"cd", "kmeans", "cbfe_kmeans"}
    assert report["semantic"]["kmeans"]["num_ids"] == 7  # background + 6 shapes
    assert report["semantic"]["cd"]["num_ids"] == report["community"]["communities"] + 1
    assert set(report["foreground"]) == {"hint", "cbfe"}
    for name in ("cd", "kmeans", "cbfe_kmeans"):
        assert (tmp_path / name / "semantic_metrics.json").is_file()
    assert (tmp_path / f"{REPORT}_grid.png").stat().st_size > 0
    assert "cbfe" in (tmp_path / f"{REPORT}.txt").read_text()


def test_tool_oracle_reads_instance_ground_truth_and_says_so(training_datasets, tmp_path):
    settings = ["--size", "64", "--k-cbfe", "16", "--threshold-rule", "oracle", "--grid", "0"]
    cd = ["--k-cd", "8", "--markov-time", "1", "--weight-threshold", "0.05"]
    assert _run(tmp_path, *settings, *cd, fit="synthetic_train") == 0
    report = json.loads((tmp_path / f"{REPORT}.json").read_text())
    assert report["uses_labels"] is True
    threshold = report["cbfe"]["threshold"]
    assert threshold == pytest.approx(round(threshold / 0.05) * 0.05)


def test_tool_reports_the_label_tuned_k_cd_that_does_not_fit(training_datasets, tmp_path, capsys):
    # The reference's k_cd = 149 needs more foreground tokens than 5 tiny images have.
    assert _run(tmp_path, "--size", "64", "--k-cbfe", "16", "--grid", "0") == 1
    assert "k_cd = 149" in capsys.readouterr().err


def test_cbfe_and_cd_beat_their_baselines_on_synthetic_scenes(tmp_path, monkeypatch):
    """Patch-statistics tokens of 40 + 40 scenes: CBFE's foreground beats the raw distinctness
    hint it is fitted to (at the hint's own resolution); CD's merged overclustering (K = 30)
    beats plain k-means with K = 7. Measured with seeds 0-2 and one k-means restart: Jaccard
    64-65% vs 57%, mIoU 35-42% vs 21-25% (with 20 + 20 scenes CBFE only matches the hint:
    the clusters' vote needs images)."""
    generate_synthetic_dataset(tmp_path / "data/synthetic", 40, 40, seed=0)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    settings = ["--size", "192", "--k-cbfe", "150", "--k-cd", "30", "--markov-time", "1"]
    extra = ["--weight-threshold", "0.05", "--restarts", "1", "--grid", "0"]
    assert _run(tmp_path / "out", *settings, *extra) == 0
    report = json.loads((tmp_path / "out" / f"{REPORT}.json").read_text())
    foreground, semantic = report["foreground"], report["semantic"]
    assert foreground["cbfe"]["jaccard"] > foreground["hint"]["jaccard"] + 0.02
    assert semantic["cd"]["mIoU"] > semantic["kmeans"]["mIoU"] + 5
