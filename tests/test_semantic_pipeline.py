"""tools/run_semantic_pipeline.py: both systems end to end on a tiny synthetic set, a few CPU
iterations per model, every stage evaluated on the training and held-out images, resumed
without redoing a step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from training_cases import make_synthetic_root

from scripts import REPO

PIPELINE = REPO / "tools/run_semantic_pipeline.py"
TINY_DEEPLAB = ["SOLVER.MAX_ITER", "2", "SEMANTIC.INPUT_SIZE", "64"]
TINY_DEEPLAB += ["SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"]
TINY_RCNN = ["SOLVER.MAX_ITER", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN"]
TINY_RCNN += ["96", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
TINY_RCNN += ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"]
TINY_RCNN += ["False", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "False"]


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    return make_synthetic_root(tmp_path_factory.mktemp("semantic"), num_train=8, num_val=2)


def _run(config: str, out, root, *opts: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DETECTRON2_DATASETS": str(root)}
    command = [sys.executable, str(PIPELINE), "--config-file", str(REPO / config)]
    command += ["--output", str(out), "PIPELINE.CLUSTERING.NUM_CLUSTERS", "3"]
    command += [*opts]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
    ("config", "opts", "stages"),
    [
        (
            "configs/pipelines/comus_synthetic.yaml",
            ["PIPELINE.CLUSTERING.ARGS", "['--neighbors', '4']",
             "PIPELINE.SEMANTIC.OPTS", repr(TINY_DEEPLAB)],
            ["initial pseudo-labels", "DeepLab round 1", "DeepLab round 2"],
        ),
        (
            "configs/pipelines/maskdistill_synthetic.yaml",
            ["PIPELINE.INSTANCE.OPTS", repr(TINY_RCNN),
             "PIPELINE.SEMANTIC.OPTS", repr([*TINY_DEEPLAB, "SEMANTIC.ROUNDS", "1"])],
            ["initial pseudo-labels", "instance model (confident maps)", "DeepLab round 1"],
        ),
    ],
    ids=["comus", "maskdistill"],
)  # fmt: skip
def test_each_system_runs_end_to_end_and_resumes(datasets_root, tmp_path, config, opts, stages):
    out = tmp_path / "out"
    done = _run(config, out, datasets_root, *opts)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / "semantic_metrics.json").read_text())
    assert list(summary["stages"]) == stages
    for stage, row in summary["stages"].items():  # every stage on both splits (MaskDistill T.1)
        assert 0 <= row["train mIoU"] <= 100 and 0 <= row["val mIoU"] <= 100, stage
    held_out = json.loads((out / "clustered_val.json").read_text())
    assert held_out["info"]["pseudo_classes"]["assigned_to"] == str(out / "clustered.json")
    assert {image["file_name"] for image in held_out["images"]} == {
        path.name for path in (datasets_root / "synthetic/val").iterdir()
    }
    assert summary["clustering"]["all"]["masks"] > 0  # the pseudo-class accuracy was measured
    losses = [json.loads(line) for line in (out / "semantic/round1/metrics.json").open()]
    assert all(math.isfinite(entry["total_loss"]) for entry in losses if "total_loss" in entry)
    assert (out / "semantic.html").is_file() and list((out / "maps_grid").glob("*.png"))
    again = _run(config, out, datasets_root, *opts)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout and "== proposals\n" not in again.stdout


def test_a_wrong_system_is_named(datasets_root, tmp_path):
    done = _run("configs/pipelines/comus_synthetic.yaml", tmp_path, datasets_root,
                "PIPELINE.SYSTEM", "maskcut")  # fmt: skip
    assert done.returncode == 2 and "PIPELINE.SYSTEM = 'maskcut'" in done.stderr


def test_every_pipeline_config_loads_with_the_configs_and_datasets_it_names():
    import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2)

    # isort: split
    from detectron2.data import DatasetCatalog

    from scripts import load_script
    from uis_d2.config import load_config

    tool = load_script("tools/run_semantic_pipeline.py")
    configs = sorted((REPO / "configs/pipelines").glob("*.yaml"))
    assert {c.stem for c in configs} >= {
        "comus_synthetic",
        "maskdistill_synthetic",
        "comus_voc",
        "maskdistill_voc",
        "comus_coco",
    }
    for config in configs:
        p = tool.load_pipeline(config, [])
        named = [(p.PROPOSALS.CONFIG, p.PROPOSALS.OPTS), (p.SEMANTIC.CONFIG, p.SEMANTIC.OPTS)]
        if p.CLUSTERING.CONFIG:
            named.append((p.CLUSTERING.CONFIG, []))
        if p.INSTANCE.CONFIG:
            named.append((p.INSTANCE.CONFIG, p.INSTANCE.OPTS))
        for path, opts in named:
            load_config(REPO / path, list(opts))
        datasets = [p.TRAIN_DATASET, p.SEMANTIC.RELABEL_DATASET, *p.EVAL.values()]
        for name in filter(None, datasets):
            assert name in DatasetCatalog.list(), f"{config.name}: {name} is not registered"
        semantic = load_config(REPO / p.SEMANTIC.CONFIG, list(p.SEMANTIC.OPTS))
        assert semantic.MODEL.SEM_SEG_HEAD.NUM_CLASSES == p.CLUSTERING.NUM_CLUSTERS + 1
