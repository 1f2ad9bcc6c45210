#!/usr/bin/env python
"""The whole method on the embedded synthetic data, on CPU, with one command.

generate data -> proposals (weight-free extractor) -> Table 1 analysis -> train SOLOv2 with the
FreeSOLO losses -> class-agnostic evaluation on synthetic_val -> pictures, metrics.json, index.html.

``--generators`` and ``--detectors`` compare pipelines side by side: every named generator's
proposals, and a detector trained on each generator's proposals, in one report (e.g.
``--generators spectral maskcut --detectors solov2 mask_rcnn``). The default is the single
spectral + SOLOv2 run, whose names and paths are the plain ones ("proposals", "trained", train/).
``--saliency`` adds the saliency ablation (Engstler et al. Table 5) on the val images: the spectral
proposals with each named foreground provider as the saliency filter, "none" without it, "A+B"
the intersection and "A,B" the union of two, evaluated and split by instance count side by side
(``--detectors`` with no name trains nothing).

Each step is a call of the project's own command-line tool, so the demo exercises exactly what a
user runs, and each step is skipped when its output already exists (rerun = resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import uis_d2  # noqa: F401  (compat before detectron2)

# isort: split

from uis_d2.report.curves import plot_loss_curves
from uis_d2.report.overlays import annotations_by_image, write_comparison_grids
from uis_d2.report.page import format_table, write_report
from uis_d2.report.steps import REPO, Steps, run_record
from uis_d2.utils.files import atomic_write_json

TOOLS = REPO / "tools"
GENERATOR_CONFIGS = {
    "spectral": REPO / "configs/proposals/synthetic.yaml",
    "maskcut": REPO / "configs/proposals/synthetic_maskcut.yaml",
}
DETECTOR_CONFIGS = {
    "solov2": REPO / "configs/synthetic/solov2_freesolo_cpu.yaml",
    "mask_rcnn": REPO / "configs/synthetic/mask_rcnn_R18_cpu.yaml",
    "cascade": REPO / "configs/synthetic/cascade_mask_rcnn_R18_cpu.yaml",
}
DEFAULT_GENERATOR, DEFAULT_DETECTOR = "spectral", "solov2"
SEMANTIC_PIPELINES = {
    "comus": REPO / "configs/pipelines/comus_synthetic.yaml",
    "maskdistill": REPO / "configs/pipelines/maskdistill_synthetic.yaml",
}


def _suffix(*names: str, defaults: tuple[str, ...]) -> str:
    """ "" for the default pipeline, else "_" + its names (keeps the default run's paths)."""
    return "" if names == defaults else "_" + "_".join(names)


@dataclasses.dataclass(frozen=True)
class Proposals:
    """One generator's proposals: the training set's (the detectors' labels) and val's."""

    generator: str
    out: Path
    synthetic: Path

    @property
    def name(self) -> str:
        return "proposals" + _suffix(self.generator, defaults=(DEFAULT_GENERATOR,))

    @property
    def train_dataset(self) -> str:
        return "synthetic_train_pseudo" + _suffix(self.generator, defaults=(DEFAULT_GENERATOR,))

    @property
    def train_json(self) -> Path:
        suffix = _suffix(self.generator, defaults=(DEFAULT_GENERATOR,))
        return self.synthetic / f"pseudo/train{suffix}.json"

    @property
    def val_json(self) -> Path:
        return self.out / self.name / "val.json"


@dataclasses.dataclass(frozen=True)
class SaliencyVariant:
    """The spectral generator's val proposals with another saliency filter (``--saliency``)."""

    spec: str  # "none", "Provider", "A+B" (intersection) or "A,B" (union)
    out: Path

    @property
    def name(self) -> str:
        return "saliency_" + self.spec.replace("+", "_and_").replace(",", "_or_")

    @property
    def val_json(self) -> Path:
        return self.out / self.name / "val.json"

    def overrides(self) -> list[str]:
        if self.spec == "none":
            return ["PROPOSALS.SALIENCY.ENABLED", "False"]
        combine = "union" if "," in self.spec else "intersection"
        providers = self.spec.replace(",", "+").split("+")
        return [
            "PROPOSALS.SALIENCY.PROVIDERS",
            repr(providers),
            "PROPOSALS.SALIENCY.COMBINE",
            combine,
        ]


@dataclasses.dataclass(frozen=True)
class Training:
    """A detector trained on one generator's proposals."""

    proposals: Proposals
    detector: str

    @property
    def suffix(self) -> str:
        pipeline = (self.proposals.generator, self.detector)
        return _suffix(*pipeline, defaults=(DEFAULT_GENERATOR, DEFAULT_DETECTOR))

    def name(self, round_index: int) -> str:
        return "trained" + self.suffix + ("" if round_index == 1 else f"_round{round_index}")

    @property
    def train_dir(self) -> Path:
        return self.proposals.out / f"train{self.suffix}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("output/demo"))
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="self-training rounds (FreeSOLO: 2)")
    parser.add_argument(
        "--generators", nargs="+", choices=sorted(GENERATOR_CONFIGS), default=[DEFAULT_GENERATOR]
    )
    parser.add_argument(
        "--detectors", nargs="*", choices=sorted(DETECTOR_CONFIGS), default=[DEFAULT_DETECTOR]
    )
    parser.add_argument(
        "--saliency",
        nargs="+",
        default=[],
        metavar="SPEC",
        help='saliency ablation: "none", a provider (e.g. AttentionMass), "A+B" or "A,B"',
    )
    parser.add_argument(
        "--semantic",
        nargs="*",
        default=[],
        choices=sorted(SEMANTIC_PIPELINES),
        help="also run these unsupervised semantic pipelines (tools/run_semantic_pipeline.py)",
    )
    parser.add_argument("--num-overlays", type=int, default=8)
    parser.add_argument(
        "--overlay-score",
        type=float,
        default=0.15,
        help="predictions drawn in the overlays score at least this (metrics use all of them)",
    )
    parser.add_argument(
        "--train-opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE overrides for tools/train_net.py (e.g. SOLVER.MAX_ITER 10)",
    )
    return parser.parse_args(argv)


def evaluation_dir(train_dir: Path, round_index: int) -> Path:
    """Where the trainer's class-agnostic evaluator leaves round r's validation predictions
    (class_agnostic_predictions.json) and their metrics (class_agnostic_metrics.json)."""
    return train_dir / f"round{round_index}/inference/synthetic_val"


def predictions_path(train_dir: Path, round_index: int) -> Path:
    return evaluation_dir(train_dir, round_index) / "class_agnostic_predictions.json"


def ensure_synthetic(root: Path, args: argparse.Namespace, steps: Steps) -> None:
    """(Re)generate the data when absent or made with other parameters."""
    params = {"num_train": args.num_train, "num_val": args.num_val, "seed": args.seed}
    stamp = root / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        steps.skip("synthetic data", root)
        return
    command = [TOOLS / "make_synthetic.py", "--output", root]
    command += ["--num-train", args.num_train, "--num-val", args.num_val, "--seed", args.seed]
    stamp.unlink(missing_ok=True)
    steps.run("synthetic data", command, stamp)
    atomic_write_json(stamp, params)


def evaluate(gt: Path, pred: Path, out: Path, steps: Steps) -> dict:
    steps.run(
        f"evaluate {pred.name}",
        [TOOLS / "evaluate_json.py", "--gt", gt, "--pred", pred, "--json-out", out],
        out,
    )
    return json.loads(out.read_text())


def generate_proposals(proposals: Proposals, args: argparse.Namespace, steps: Steps) -> None:
    """The generator's proposals for the training set and, with pictures, for val."""
    config = GENERATOR_CONFIGS[proposals.generator]
    for dataset, target, vis in (
        ("synthetic_train", proposals.train_json, 0),
        ("synthetic_val", proposals.val_json, args.num_overlays),
    ):
        command = [TOOLS / "generate_proposals.py", "--config-file", config]
        command += ["--dataset", dataset, "--output", target, "--vis", vis]
        title = f"{proposals.generator} proposals for {dataset}"
        steps.run(title.removeprefix(f"{DEFAULT_GENERATOR} "), command, target)


def generate_variant(variant: SaliencyVariant, args: argparse.Namespace, steps: Steps) -> None:
    command = [TOOLS / "generate_proposals.py", "--config-file", GENERATOR_CONFIGS["spectral"]]
    command += ["--dataset", "synthetic_val", "--output", variant.val_json, "--vis", 0]
    steps.run(f"val proposals, {variant.name}", command + variant.overrides(), variant.val_json)


def analysis_dir(proposal_sets: list[Proposals | SaliencyVariant], out: Path) -> Path:
    names = tuple(p.name for p in proposal_sets)
    return out / ("analysis" + _suffix(*names, defaults=("proposals",)))


def analyse_proposals(
    proposal_sets: list[Proposals | SaliencyVariant], gt_val: Path, out: Path, steps: Steps
) -> None:
    """The Table 1 split of every set of val proposals, side by side."""
    analysis = analysis_dir(proposal_sets, out)
    command = [TOOLS / "analyze_proposals.py", "--proposals", *[p.val_json for p in proposal_sets]]
    command += ["--names", *[p.name for p in proposal_sets], "--gt", gt_val, "--out", analysis]
    steps.run("proposal analysis (Table 1)", command, analysis / "recall_by_count.json")


def train(training: Training, args: argparse.Namespace, steps: Steps) -> None:
    """Train (and evaluate) the detector on its generator's training proposals."""
    proposals = training.proposals
    command = [TOOLS / "train_net.py", "--config-file", DETECTOR_CONFIGS[training.detector]]
    command += ["OUTPUT_DIR", training.train_dir, "SELF_TRAINING.ROUNDS", args.rounds]
    if proposals.generator != DEFAULT_GENERATOR:
        image_root = proposals.synthetic / "train"
        register = [[proposals.train_dataset, str(proposals.train_json), str(image_root)]]
        command += ["INPUT.PSEUDO_MASKS.REGISTER", repr(register)]
        command += ["DATASETS.TRAIN", repr((proposals.train_dataset,))]
    command += args.train_opts
    title = "training + evaluation" + training.suffix.replace("_", " ")
    steps.run(title, command, predictions_path(training.train_dir, args.rounds))


def main(argv: list[str] | None = None) -> dict:
    """Returns what it writes to metrics.json: each method's metrics, and ``run``."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))).resolve()
    os.environ["DETECTRON2_DATASETS"] = str(root)
    synthetic = root / "synthetic"
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    steps = Steps()

    ensure_synthetic(synthetic, args, steps)
    gt_val = synthetic / "annotations/val.json"
    generators = [Proposals(g, out, synthetic) for g in dict.fromkeys(args.generators)]
    trainings = [Training(p, d) for p in generators for d in dict.fromkeys(args.detectors)]
    metrics = {}
    for proposals in generators:
        generate_proposals(proposals, args, steps)
        metrics[proposals.name] = evaluate(
            gt_val, proposals.val_json, out / f"metrics_{proposals.name}.json", steps
        )
    variants = [SaliencyVariant(spec, out) for spec in dict.fromkeys(args.saliency)]
    for variant in variants:
        generate_variant(variant, args, steps)
        metrics[variant.name] = evaluate(
            gt_val, variant.val_json, out / f"metrics_{variant.name}.json", steps
        )
    analyse_proposals([*generators, *variants], gt_val, out, steps)
    for training in trainings:
        train(training, args, steps)
        for r in range(1, args.rounds + 1):  # the trainer evaluated them with evaluate_agnostic
            metrics_file = evaluation_dir(training.train_dir, r) / "class_agnostic_metrics.json"
            metrics[training.name(r)] = json.loads(metrics_file.read_text())

    semantic_sections = []
    for system in dict.fromkeys(args.semantic):
        semantic_out = out / f"semantic_{system}"
        command = [TOOLS / "run_semantic_pipeline.py", "--config-file", SEMANTIC_PIPELINES[system]]
        done = semantic_out / "semantic_metrics.json"
        steps.run(f"semantic pipeline, {system}", [*command, "--output", semantic_out], done)
        metrics[f"semantic_{system}"] = json.loads(done.read_text())
        semantic_sections += semantic_report_sections(system, semantic_out)

    summary = {name: m["segm"] for name, m in metrics.items() if "segm" in m}
    sets = [*generators, *variants]
    write_pictures_and_report(
        out, synthetic, gt_val, sets, trainings, args, summary, semantic_sections
    )
    total = time.perf_counter() - started
    metrics["run"] = run_record(["python", "tools/run_demo.py", *argv], steps, started_at, total)
    atomic_write_json(out / "metrics.json", metrics, indent=2)
    print("\nClass-agnostic mask metrics on synthetic_val:\n" + format_table(summary))
    print(f"\nreport: {out / 'index.html'}  ({total:.0f} s in all)")
    return metrics


def semantic_report_sections(system: str, semantic_out: Path) -> list[tuple[str, list[Path]]]:
    """The semantic pipeline's pictures for the demo page: colour maps and confusion matrices
    (its own semantic.html has the per-stage and per-class tables)."""
    confusions = sorted(semantic_out.glob("evaluation/**/semantic_confusion_hungarian.png"))
    return [
        (
            f"Semantic ({system}): image | ground truth | pseudo-labels | predictions "
            f"(semantic_{system}/semantic.html: mIoU and per-class IoU of every stage)",
            sorted((semantic_out / "maps_grid").glob("*.png")),
        ),
        (f"Semantic ({system}): Hungarian-matched confusion matrices", confusions),
    ]


def write_pictures_and_report(
    out: Path,
    synthetic: Path,
    gt_val: Path,
    proposal_sets: list[Proposals | SaliencyVariant],
    trainings: list[Training],
    args: argparse.Namespace,
    summary: dict[str, dict[str, float]],
    semantic_sections: list[tuple[str, list[Path]]],
) -> None:
    gt = json.loads(gt_val.read_text())
    panels = {
        p.name: annotations_by_image(json.loads(p.val_json.read_text())) for p in proposal_sets
    }
    curves = []
    for training in trainings:
        for r in range(1, args.rounds + 1):
            pred = json.loads(predictions_path(training.train_dir, r).read_text())
            panels[f"{training.name(r)} (score>={args.overlay_score})"] = annotations_by_image(
                pred, min_score=args.overlay_score
            )
            curves.append(
                plot_loss_curves(
                    training.train_dir / f"round{r}/metrics.json",
                    out / f"curves/losses{training.suffix}_round{r}.png",
                    f"training losses, {training.name(r)}, round {r}",
                )
            )
    image_ids = sorted(img["id"] for img in gt["images"])[: args.num_overlays]
    overlays = write_comparison_grids(gt, panels, synthetic / "val", out / "overlays", image_ids)
    sections = [
        ("Ground truth | raw proposals | trained model", overlays),
        (
            "Proposal analysis: recall by instances of one category (Table 1)",
            sorted(analysis_dir(proposal_sets, out).glob("*.png")),
        ),
        ("Training losses", curves),
        (
            "Proposal generation: masks for every k, saliency, kept proposals",
            sorted(png for p in proposal_sets for png in p.val_json.parent.rglob("*.png")),
        ),
    ]
    sections += semantic_sections
    notes = [
        f"Command: python tools/run_demo.py --output {args.output} --num-train {args.num_train} "
        f"--num-val {args.num_val} --seed {args.seed} --rounds {args.rounds} --generators "
        f"{' '.join(args.generators)} --detectors {' '.join(args.detectors)}"
        + (f" --saliency {' '.join(args.saliency)}" if args.saliency else "")
        + (f" --semantic {' '.join(args.semantic)}" if args.semantic else ""),
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}.",
    ]
    write_report(out, summary, sections, notes)


if __name__ == "__main__":
    main()
