"""The whole demo pipeline on a few synthetic images: every step runs, and the report's numbers
are the ones the evaluation files hold (read back, and recomputed from the predictions)."""

import json
import re
import shutil

import pytest

import uis_d2  # noqa: F401
from scripts import load_script
from uis_d2.evaluation.coco_agnostic import evaluate_agnostic
from uis_d2.report.page import TABLE_KEYS

run_demo = load_script("tools/run_demo.py")

TINY_TRAINING = [
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MIN_SIZE_TEST", "128",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("DETECTRON2_DATASETS", str(root))
    mp.setenv("OMP_NUM_THREADS", "1")
    args = ["--output", str(out), "--num-train", "6", "--num-val", "3", "--num-overlays", "2"]
    metrics = run_demo.main([*args, "--train-opts", *TINY_TRAINING])
    yield out, root, metrics, args
    mp.undo()


def _table_rows(html: str) -> dict[str, list[float]]:
    table = re.search(r"<table id='metrics'>(.*?)</table>", html, re.S).group(1)
    rows = re.findall(r"<tr><th scope='row'>(.*?)</th>(.*?)</tr>", table)
    return {name: [float(v) for v in re.findall(r"<td>([-\d.na]+)</td>", cells)] for name, cells
            in rows}  # fmt: skip


def test_demo_writes_report_metrics_and_pictures(demo):
    out, _, metrics, _ = demo
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) == {"proposals", "trained", "run"}
    assert set(written["trained"]["segm"]) >= set(TABLE_KEYS)
    assert written == json.loads(json.dumps(metrics))
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert (out / "curves/losses_round1.png").stat().st_size > 0
    assert (out / "analysis/recall_by_count.png").stat().st_size > 0


def test_metrics_name_the_command_commit_and_timings_of_the_run(demo):
    out, _, metrics, args = demo
    run = metrics["run"]
    assert run["command"].startswith("python tools/run_demo.py " + " ".join(args))
    assert run["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", run["commit"])
    assert run["skipped_steps"] == []  # the fixture ran from scratch
    steps = {"synthetic data", "proposals for synthetic_train", "training + evaluation"}
    assert steps <= set(run["seconds"])
    timed = sum(v for k, v in run["seconds"].items() if k != "total")
    assert 0 < timed <= run["seconds"]["total"]


def test_report_numbers_are_read_back_from_the_evaluation_files(demo):
    out, _, _, _ = demo
    rows = _table_rows((out / "index.html").read_text())
    trained = run_demo.evaluation_dir(out / "train", 1) / "class_agnostic_metrics.json"
    for name, file in (("proposals", out / "metrics_proposals.json"), ("trained", trained)):
        segm = json.loads(file.read_text())["segm"]
        assert rows[name] == pytest.approx([round(segm[k], 2) for k in TABLE_KEYS], abs=0.006)


def test_trained_metrics_equal_a_fresh_evaluation_of_the_predictions(demo):
    out, root, metrics, _ = demo
    predictions = run_demo.predictions_path(out / "train", 1)
    fresh = evaluate_agnostic(root / "synthetic/annotations/val.json", predictions)
    assert fresh["segm"] == pytest.approx(metrics["trained"]["segm"], nan_ok=True)


def test_rerun_skips_finished_steps_and_keeps_results(demo, capsys):
    out, _, metrics, args = demo
    again = run_demo.main([*args, "--train-opts", *TINY_TRAINING])
    printed = capsys.readouterr().out
    assert printed.count("already done") >= 5
    assert len(again["run"]["skipped_steps"]) == printed.count("already done")
    methods = {name: m for name, m in again.items() if name != "run"}
    assert json.dumps(methods) == json.dumps({n: m for n, m in metrics.items() if n != "run"})


def test_generators_and_detectors_are_compared_side_by_side(demo, tmp_path, monkeypatch):
    """The grid run resumes from a copy of the default run: only the new pipelines run, and
    the report shows every generator's proposals and every trained pair."""
    out, root, metrics, args = demo
    grid_out = tmp_path / "grid"
    shutil.copytree(out, grid_out)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    grid_args = ["--output", str(grid_out), *args[2:]]
    grid_args += ["--generators", "spectral", "maskcut", "--detectors", "solov2", "mask_rcnn"]
    grid = run_demo.main([*grid_args, "--train-opts", *TINY_TRAINING])
    expected = {"proposals", "proposals_maskcut", "trained", "trained_spectral_mask_rcnn"}
    expected |= {"trained_maskcut_solov2", "trained_maskcut_mask_rcnn"}
    assert set(grid) - {"run"} == expected
    assert grid["trained"] == metrics["trained"]  # resumed, not retrained
    assert "training + evaluation" in grid["run"]["skipped_steps"]
    rows = _table_rows((grid_out / "index.html").read_text())
    assert set(rows) == expected
    config = (grid_out / "train_maskcut_mask_rcnn/round1/config.yaml").read_text()
    assert "synthetic_train_pseudo_maskcut" in config and "GeneralizedRCNN" in config
    pseudo = json.loads((root / "synthetic/pseudo/train_maskcut.json").read_text())
    assert "MaskCutGenerator" in json.dumps(pseudo["info"])
    assert (grid_out / "curves/losses_maskcut_mask_rcnn_round1.png").stat().st_size > 0


def test_saliency_ablation_puts_each_filter_side_by_side(demo, tmp_path, monkeypatch):
    """No saliency, the default provider, and combinations of a provider with itself (which
    must equal each other): val proposals only, nothing trained."""
    out, root, _, args = demo
    ablation_out = tmp_path / "ablation"
    shutil.copytree(out, ablation_out)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    specs = [
        "none",
        "SpectralBorder",
        "SpectralBorder+SpectralBorder",
        "SpectralBorder,SpectralBorder",
    ]
    result = run_demo.main(
        ["--output", str(ablation_out), *args[2:], "--detectors", "--saliency", *specs]
    )
    names = [run_demo.SaliencyVariant(spec, ablation_out).name for spec in specs]
    assert set(result) - {"run"} == {"proposals", *names}
    (analysis,) = ablation_out.glob("analysis_*/recall_by_count.json")
    assert all(name in analysis.read_text() for name in names)
    annotations = {
        name: json.loads((ablation_out / name / "val.json").read_text())["annotations"]
        for name in names
    }
    masks = {
        name: [a["segmentation"]["counts"] for a in anns] for name, anns in annotations.items()
    }
    assert len(masks["saliency_none"]) >= len(
        masks["saliency_SpectralBorder"]
    )  # a filter only drops
    assert (
        masks["saliency_SpectralBorder_and_SpectralBorder"]
        == masks["saliency_SpectralBorder_or_SpectralBorder"]
    )
