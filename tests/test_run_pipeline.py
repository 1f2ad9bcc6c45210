"""tools/run_pipeline.py: the whole method on a plain folder of images, resumed after a kill,
then evaluated against ground truth; and its checks of bad input before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import REPO, load_script

PIPELINE = REPO / "tools/run_pipeline.py"
FAST_TRAINING = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "0"]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> tuple[Path, Path]:
    """Four synthetic scenes as plain files with a text file and a broken "photo" among them,
    and the scenes' ground-truth json (file names relative to the folder)."""
    root = tmp_path_factory.mktemp("pipeline")
    command = [sys.executable, REPO / "tools/make_synthetic.py", "--output", root / "syn"]
    command += ["--num-train", "4", "--num-val", "1", "--seed", "5"]
    subprocess.run(list(map(str, command)), check=True, capture_output=True)
    images = root / "syn/train"
    (images / "notes.txt").write_text("not an image")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return images, root / "syn/annotations/train.json"


def _command(images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(PIPELINE), "--images", str(images), "--output", str(out),
        "--weight-free", "--gpus", "0", "--num-overlays", "2", *extra,
        "--train-opts", *FAST_TRAINING,
    ]  # fmt: skip


def test_a_killed_run_resumes_and_ground_truth_adds_the_metrics(photo_folder, tmp_path):
    images, gt = photo_folder
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(_command(images, out), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "train").exists():  # proposals are done once training starts
        assert first.poll() is None, "the run ended before training started"
        assert time.monotonic() < deadline, "training did not start within 300 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the tool and the step it runs
    first.wait()
    assert not (out / "predictions.json").exists()

    resumed = subprocess.run(_command(images, out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "== proposals: already done" in resumed.stdout
    predictions = json.loads((out / "predictions.json").read_text())
    names = sorted(img["file_name"] for img in predictions["images"])
    assert names == [f"{i:06d}.png" for i in range(4)]
    assert predictions["info"]["skipped"] == ["broken.jpg"]
    assert (out / "index.html").is_file() and len(list((out / "overlays/grids").glob("*.png"))) == 2
    assert list((out / "curves").glob("*.png"))

    with_gt = subprocess.run(
        _command(images, out, "--gt", str(gt)), env=env, capture_output=True, text=True
    )
    assert with_gt.returncode == 0, with_gt.stdout[-3000:] + with_gt.stderr[-3000:]
    for step in ("proposals", "training", "predictions"):
        assert f"== {step}: already done" in with_gt.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"proposals", "trained", "run"}
    assert 0 < metrics["proposals"]["segm"]["AR100"] <= 100  # the ids lined up with the gt's
    assert (out / "evaluation/analysis/recall_by_count.json").is_file()


def _main(*argv: str) -> int:
    return load_script("tools/run_pipeline.py").main(list(argv))


def test_bad_input_stops_before_any_work_naming_the_problem(photo_folder, tmp_path, capsys):
    images, gt = photo_folder
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts/a.txt").write_text("x")
    wrong_gt = tmp_path / "wrong.json"
    wrong_gt.write_text(json.dumps({"images": [{"id": 1, "file_name": "elsewhere/x.jpg"}]}))
    cases = [
        (["--images", str(empty), "--weight-free"], str(empty)),
        (["--images", str(tmp_path / "texts"), "--weight-free"], "texts"),
        (["--images", str(images), "--weight-free", "--gt", str(wrong_gt)], "elsewhere/x.jpg"),
        # The paper's configs without their checkpoints on this machine:
        (["--images", str(images)], "PROPOSALS.EXTRACTOR.CHECKPOINT = checkpoints/mae_"),
        (["--images", str(images)], "MODEL.WEIGHTS = checkpoints/densecl_r101"),
    ]
    for argv, named in cases:
        assert _main(*argv, "--output", str(out)) == 2
        assert named in capsys.readouterr().err
    assert not out.exists()
