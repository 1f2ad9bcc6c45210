#!/usr/bin/env python
"""MaskDistill or COMUS end to end, from one pipeline config, with one command.

    python tools/run_semantic_pipeline.py --config-file configs/pipelines/comus_synthetic.yaml \\
        --output output/comus

``PIPELINE.SYSTEM comus`` (Zadaianchuk et al. 2023): one foreground proposal per image
(``PROPOSALS.CONFIG``, e.g. ``ForegroundGenerator``) -> box-crop embeddings, spectral clustering
and the outlier filter (``CLUSTERING``) -> initial semantic maps (1 + cluster on the kept masks)
-> DeepLab rounds (``SEMANTIC.CONFIG``: round 1 on the maps, round 2 from a fresh initialisation
on round 1's argmax maps).

``PIPELINE.SYSTEM maskdistill`` (Van Gansbeke et al. 2022): the object miner's mask per image
-> whitened k-means pseudo-classes -> a class-aware instance model (``INSTANCE.CONFIG``,
``INPUT.PSEUDO_MASKS.CLASSES pseudo``) -> its predictions on the training images painted into
confident maps (score >= ``PAINTING.SCORE_THRESH``) -> DeepLab.

Every step is a call of the project's own tool, skipped when its output exists (a rerun
resumes). Ground truth is read only by the evaluation steps: the pseudo-class accuracy of the
clustering, and the Hungarian mIoU of every stage's maps (initial pseudo-labels, the instance
model's confident maps, each DeepLab round) on ``EVAL.TRAIN_DATASET`` (the training images: the
pseudo-labels exist there, so this is where the stages compare on the same images; enabled
explicitly, the evaluator refuses training splits otherwise) and on ``EVAL.VAL_DATASET``, as
MaskDistill's Table 1 measures every stage on VOC val: there the initial pseudo-labels are the
proposal step on the held-out images with each mask named by the pseudo-classes fitted on the
training masks, and the instance model's maps are its predictions on those images. Writes
OUT/semantic_metrics.json (a table of every stage) and OUT/semantic.html with the confusion
matrices and ground truth | pseudo-labels | prediction maps.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import uis_d2  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.data import MetadataCatalog
from fvcore.common.config import CfgNode as CN

from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.report.semantic import write_semantic_report
from uis_d2.report.steps import REPO, Steps, run_record
from uis_d2.utils.files import atomic_write_json

TOOLS = REPO / "tools"
SYSTEMS = ("comus", "maskdistill")


def pipeline_defaults() -> CN:
    """The keys of a pipeline config (configs/pipelines/), each a step's tool and its options."""
    p = CN()
    # "comus" or "maskdistill".
    p.SYSTEM = "comus"
    # The images the system learns from: a registered detectron2 dataset (no labels read).
    p.TRAIN_DATASET = "synthetic_train"
    # Processes (GPUs) of the proposal, training and prediction steps (--num-gpus of the tools).
    p.NUM_GPUS = 1
    p.PROPOSALS = CN()
    # The proposal config: one mask per image (ForegroundGenerator, MaskDistillGenerator).
    p.PROPOSALS.CONFIG = "configs/proposals/synthetic_comus.yaml"
    p.PROPOSALS.OPTS = []
    p.CLUSTERING = CN()
    # tools/cluster_pseudo_classes.py: "spectral" (COMUS) or "kmeans" (MaskDistill).
    p.CLUSTERING.METHOD = "spectral"
    p.CLUSTERING.NUM_CLUSTERS = 6
    # "box_crop" (both references), "masked_image" (MaskDistill's paper) or "stored".
    p.CLUSTERING.EMBEDDING = "box_crop"
    # The config whose PROPOSALS.EXTRACTOR embeds the regions ("" = PROPOSALS.CONFIG's; both
    # references embed with DINO ViT-S/8, which neither mines with).
    p.CLUSTERING.CONFIG = ""
    # Extra options of the tool, e.g. ["--filter-share", "0.2", "--crop-size", "256"].
    p.CLUSTERING.ARGS = []
    p.INSTANCE = CN()
    # maskdistill: the class-aware instance model's config (NUM_CLASSES = NUM_CLUSTERS).
    p.INSTANCE.CONFIG = ""
    p.INSTANCE.OPTS = []
    p.PAINTING = CN()
    # maskdistill: confidence a prediction needs to be painted (MaskDistill: 0.9).
    p.PAINTING.SCORE_THRESH = 0.9
    p.SEMANTIC = CN()
    # tools/train_net.py's config (its SEMANTIC.ROUNDS: COMUS 2, MaskDistill 1).
    p.SEMANTIC.CONFIG = "configs/synthetic/deeplab_semantic_cpu.yaml"
    p.SEMANTIC.OPTS = []
    # The images round r-1's model labels for round r ("" = TRAIN_DATASET; COMUS on VOC: round
    # 1 on VOC train's maps, round 2 on train_aug's).
    p.SEMANTIC.RELABEL_DATASET = ""
    p.EVAL = CN()
    # Ground truth for the evaluation steps only ("" skips them): the training images' semantic
    # split (with it, the pseudo-class accuracy against TRAIN_DATASET's own json, when it has
    # one), and a held-out semantic split.
    p.EVAL.TRAIN_DATASET = "synthetic_train_sem"
    p.EVAL.VAL_DATASET = "synthetic_val_sem"
    cfg = CN()
    cfg.PIPELINE = p
    return cfg


def load_pipeline(config_file: Path, opts: list[str]) -> CN:
    cfg = pipeline_defaults()
    try:
        cfg.merge_from_file(str(config_file))
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(f"{config_file}: {err}") from err
    if cfg.PIPELINE.SYSTEM not in SYSTEMS:
        raise ConfigError(f"PIPELINE.SYSTEM = {cfg.PIPELINE.SYSTEM!r}: must be one of {SYSTEMS}")
    if cfg.PIPELINE.SYSTEM == "maskdistill" and not cfg.PIPELINE.INSTANCE.CONFIG:
        raise ConfigError("PIPELINE.INSTANCE.CONFIG: maskdistill needs the instance model config")
    return cfg.PIPELINE


class SemanticPipeline:
    """The steps of one run, their outputs under ``out``, and the metrics gathered."""

    def __init__(self, p: CN, out: Path, steps: Steps) -> None:
        self.p, self.out, self.steps = p, out, steps
        self.stages: dict[str, dict] = {}

    def evaluate_maps(self, stage: str, maps: Path, split: str = "train") -> None:
        """Hungarian mIoU of a folder of maps on the training (``split`` "train") or held-out
        images (an image without a map counts as all background)."""
        dataset = self.p.EVAL.TRAIN_DATASET if split == "train" else self.p.EVAL.VAL_DATASET
        if not dataset:
            return
        out = self.out / ("evaluation/" + stage + ("" if split == "train" else f"_{split}"))
        command = [TOOLS / "evaluate_semantic.py", "--pred", maps]
        command += ["--dataset", dataset, "--out", out, "--missing", "background"]
        command += ["--num-clusters", self.p.CLUSTERING.NUM_CLUSTERS]
        command += ["--allow-train-split"] if split == "train" else []
        self.steps.run(f"evaluate {stage} ({split})", command, out / "semantic_metrics.json")
        self.stages.setdefault(stage, {})[split] = out / "semantic_metrics.json"

    def proposal_step(self, dataset: str, proposals: Path, name: str) -> None:
        p = self.p
        command = [TOOLS / "generate_proposals.py", "--config-file", p.PROPOSALS.CONFIG]
        command += ["--num-gpus", p.NUM_GPUS]
        command += ["--dataset", dataset, "--output", proposals, *p.PROPOSALS.OPTS]
        self.steps.run(name, command, proposals)

    def proposals_and_clusters(self) -> Path:
        p = self.p
        proposals = self.out / "proposals.json"
        self.proposal_step(p.TRAIN_DATASET, proposals, "proposals")
        clustered = self.out / "clustered.json"
        command = [TOOLS / "cluster_pseudo_classes.py", "--pseudo-labels", proposals]
        command += ["--output", clustered, "--method", p.CLUSTERING.METHOD]
        command += ["--num-clusters", p.CLUSTERING.NUM_CLUSTERS]
        command += ["--embedding", p.CLUSTERING.EMBEDDING]
        command += ["--config-file", p.CLUSTERING.CONFIG or p.PROPOSALS.CONFIG]
        command += [*p.CLUSTERING.ARGS]
        gt_json = MetadataCatalog.get(p.TRAIN_DATASET).get("json_file", None)
        if p.EVAL.TRAIN_DATASET and gt_json:  # accuracy, NMI, ARI of the pseudo-classes only
            command += ["--gt", gt_json]
        self.steps.run("pseudo-classes", command, clustered)
        return clustered

    def initial_maps(self, clustered: Path) -> Path:
        maps = self.painted_clusters(clustered, "train")
        self.held_out_initial_maps(clustered)
        return maps

    def painted_clusters(self, clustered: Path, split: str) -> Path:
        """The initial pseudo-labels (1 + pseudo-class on each clustered mask) of ``split``'s
        images, evaluated there."""
        suffix = "" if split == "train" else f"_{split}"
        maps = self.out / f"maps_initial{suffix}"
        command = [TOOLS / "make_semantic_pseudo_labels.py", "--clustered", clustered]
        command += ["--output", maps]
        title = "initial maps" + ("" if split == "train" else f" ({split})")
        self.steps.run(title, command, maps / "labels_info.json")
        self.evaluate_maps("initial pseudo-labels", maps, split)
        return maps

    def held_out_initial_maps(self, clustered: Path) -> None:
        """The papers' first row (MaskDistill Table 1: mined masks + k-means, on val): the
        proposal step on the held-out images, each mask named by the pseudo-classes fitted on
        the training masks (``--assign-to``), painted and evaluated there."""
        p = self.p
        if not p.EVAL.VAL_DATASET:
            return
        proposals = self.out / "proposals_val.json"
        self.proposal_step(p.EVAL.VAL_DATASET, proposals, "proposals (val)")
        assigned = self.out / "clustered_val.json"
        command = [TOOLS / "cluster_pseudo_classes.py", "--pseudo-labels", proposals]
        command += ["--output", assigned, "--assign-to", clustered]
        command += ["--config-file", p.CLUSTERING.CONFIG or p.PROPOSALS.CONFIG]
        self.steps.run("pseudo-classes (val)", [*command, *p.CLUSTERING.ARGS], assigned)
        self.painted_clusters(assigned, "val")

    def instance_maps(self, clustered: Path) -> Path:
        """MaskDistill's class-aware instance model and its confident maps."""
        p = self.p
        train_dir = self.out / "instance"
        command = [TOOLS / "train_net.py", "--config-file", p.INSTANCE.CONFIG]
        command += ["--num-gpus", p.NUM_GPUS]
        command += ["OUTPUT_DIR", train_dir, "INPUT.PSEUDO_MASKS.REGISTER", "[]"]
        command += ["INPUT.PSEUDO_MASKS.CLASSES", "pseudo"]  # the json's images, where it says
        command += ["DATASETS.TRAIN", repr((f"pseudo:{clustered}",)), "DATASETS.TEST", "()"]
        command += [*p.INSTANCE.OPTS]
        final = train_dir / "round1/model_final.pth"
        self.steps.run("class-aware instance model", command, final)
        maps = self.confident_maps(final, p.TRAIN_DATASET, self.out / "maps_confident", "train")
        if p.EVAL.VAL_DATASET:  # MaskDistill Table 1's second row: its predictions on val
            self.confident_maps(final, p.EVAL.VAL_DATASET, self.out / "maps_confident_val", "val")
        return maps

    def confident_maps(self, weights: Path, dataset: str, maps: Path, split: str) -> Path:
        """The instance model's predictions on ``dataset`` painted into confident maps."""
        p, train_dir = self.p, weights.parent.parent
        predictions = train_dir / f"inference/{dataset}/class_agnostic_predictions.json"
        command = [TOOLS / "train_net.py", "--config-file", weights.parent / "config.yaml"]
        command += ["--num-gpus", p.NUM_GPUS]
        command += ["--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", train_dir]
        command += ["DATASETS.TEST", repr((dataset,)), "DATASETS.TRAIN", "()"]
        suffix = "" if split == "train" else f" ({split})"
        self.steps.run("instance predictions" + suffix, command, predictions)
        command = [TOOLS / "make_semantic_pseudo_labels.py", "--predictions", predictions]
        command += ["--dataset", dataset]  # category_id: the model's classes 0..K-1
        command += ["--score-thresh", p.PAINTING.SCORE_THRESH, "--output", maps]
        self.steps.run("confident maps" + suffix, command, maps / "labels_info.json")
        self.evaluate_maps("instance model (confident maps)", maps, split)
        return maps

    def semantic_rounds(self, maps: Path) -> None:
        p = self.p
        train_dir = self.out / "semantic"
        sem_cfg = load_config(p.SEMANTIC.CONFIG, list(p.SEMANTIC.OPTS))
        rounds = sem_cfg.SEMANTIC.ROUNDS
        labels = [["pipeline_semantic_maps", p.TRAIN_DATASET, str(maps)]]
        common = ["SEMANTIC.PSEUDO_LABELS", repr(labels), "DATASETS.TRAIN"]
        relabel = p.SEMANTIC.RELABEL_DATASET or p.TRAIN_DATASET
        common += ["('pipeline_semantic_maps',)", "SEMANTIC.RELABEL_DATASET", relabel]
        command = [TOOLS / "train_net.py", "--config-file", p.SEMANTIC.CONFIG, "--resume"]
        command += ["--num-gpus", p.NUM_GPUS]
        command += ["OUTPUT_DIR", train_dir, *common, "DATASETS.TEST", "()", *p.SEMANTIC.OPTS]
        self.steps.run("semantic rounds", command, train_dir / f"round{rounds}/model_final.pth")
        for r in range(1, rounds + 1):
            for split, dataset in (("train", p.EVAL.TRAIN_DATASET), ("val", p.EVAL.VAL_DATASET)):
                if not dataset:
                    continue
                out = self.out / f"evaluation/round{r}_{split}"
                command = [TOOLS / "train_net.py", "--config-file", p.SEMANTIC.CONFIG]
                command += ["--eval-only", "MODEL.WEIGHTS", train_dir / f"round{r}/model_final.pth"]
                command += ["OUTPUT_DIR", out, *common, "DATASETS.TEST", repr((dataset,))]
                command += ["SEMANTIC.EVAL_ALLOW_TRAIN_SPLIT", str(split == "train")]
                command += [*p.SEMANTIC.OPTS]
                metrics = out / f"inference/{dataset}/semantic_metrics.json"
                self.steps.run(f"evaluate round {r} ({split})", command, metrics)
                self.stages.setdefault(f"DeepLab round {r}", {})[split] = metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", type=Path, required=True, help="configs/pipelines/*.yaml")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="PIPELINE.KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        p = load_pipeline(args.config_file, args.opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    steps = Steps()
    pipeline = SemanticPipeline(p, out, steps)
    clustered = pipeline.proposals_and_clusters()
    maps = pipeline.initial_maps(clustered)
    if p.SYSTEM == "maskdistill":
        maps = pipeline.instance_maps(clustered)
    pipeline.semantic_rounds(maps)

    summary = write_semantic_report(out, p, clustered, pipeline.stages)
    total = time.perf_counter() - started
    record = run_record(
        ["python", "tools/run_semantic_pipeline.py", *argv], steps, started_at, total
    )
    atomic_write_json(out / "semantic_metrics.json", {**summary, "run": record}, indent=2)
    print(f"\nreport: {out / 'semantic.html'}  ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
