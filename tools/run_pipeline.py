#!/usr/bin/env python
"""The whole method on your own folder of images, with one command.

    python tools/run_pipeline.py --images ~/photos --output out/photos [--gpus N] [--gt GT.json]

proposals (tools/generate_proposals.py on ``folder:IMAGES``) -> training on them
(tools/train_net.py, ``DATASETS.TRAIN ("pseudo:...",)``, self-training rounds as configured)
-> predictions of the trained model on the images (tools/demo.py --json-out, with overlays)
-> an offline HTML report (overlays, proposal grids, loss curves) and OUT/predictions.json.
With ``--gt GT.json`` (COCO instances whose file names are paths relative to IMAGES) the
proposals and the predictions are also evaluated (class-agnostic AP/AR) and split by instance
count (the paper's Table 1).

Configs: the paper's (``configs/proposals/coco_mae.yaml``: MAE + DINO ViT-B/16;
``configs/coco/solov2_R101_densecl_engstler.yaml``: SOLOv2 on DenseCL R-101) unless
``--proposal-config`` / ``--train-config`` name others; every checkpoint they name must be in
place (a missing one stops the run before any work, naming the file and the key).
``--weight-free`` runs the CPU configs of the embedded data instead (weight-free features, a
small SOLOv2 from scratch): for trying the tool, not for results on photos.

Each step is a call of the project's own tool and is skipped when its output exists, so a rerun
after a kill resumes (generate_proposals and demo.py resume inside their step too, and
train_net.py from its last checkpoint).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import uis_d2  # noqa: F401  (compat before detectron2)
from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.data.image_folder import list_images
from uis_d2.report.curves import plot_loss_curves
from uis_d2.report.overlays import annotations_by_image, write_comparison_grids
from uis_d2.report.page import format_table, write_report
from uis_d2.report.steps import REPO, Steps, run_record
from uis_d2.utils.files import atomic_write_json, read_json

TOOLS = REPO / "tools"
PAPER_CONFIGS = (
    REPO / "configs/proposals/coco_mae.yaml",
    REPO / "configs/coco/solov2_R101_densecl_engstler.yaml",
)
WEIGHT_FREE_CONFIGS = (
    REPO / "configs/proposals/synthetic.yaml",
    REPO / "configs/synthetic/solov2_freesolo_cpu.yaml",
)
# The checkpoint keys of a proposal config and of a training config.
PROPOSAL_CHECKPOINTS = ("PROPOSALS.EXTRACTOR.CHECKPOINT", "PROPOSALS.SALIENCY.EXTRACTOR.CHECKPOINT")
TRAIN_CHECKPOINTS = ("MODEL.WEIGHTS",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of your images")
    parser.add_argument("--output", type=Path, required=True, help="folder for everything")
    parser.add_argument("--proposal-config", type=Path, help="default: the paper's")
    parser.add_argument("--train-config", type=Path, help="default: the paper's")
    parser.add_argument("--weight-free", action="store_true", help="the CPU configs, no weights")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs for every step (0: CPU)")
    parser.add_argument("--gt", type=Path, help="COCO instances json of the images (metrics)")
    parser.add_argument("--num-overlays", type=int, default=8)
    parser.add_argument("--overlay-score", type=float, default=0.3)
    parser.add_argument("--proposal-opts", nargs="*", default=[], help="KEY VALUE ...")
    parser.add_argument(
        "--train-opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... (last)"
    )
    return parser.parse_args(argv)


def chosen_configs(args: argparse.Namespace) -> tuple[Path, Path]:
    defaults = WEIGHT_FREE_CONFIGS if args.weight_free else PAPER_CONFIGS
    return args.proposal_config or defaults[0], args.train_config or defaults[1]


def missing_checkpoints(config: Path, opts: list[str], keys: tuple[str, ...]) -> list[str]:
    """'KEY = PATH' for each checkpoint ``config`` names that is not a file (relative paths
    from the repository, as the tools resolve them)."""
    cfg = load_config(config, opts)
    missing = []
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value and not (REPO / value).is_file() and not Path(value).is_file():
            missing.append(f"{key} = {value}")
    return missing


def check_inputs(args: argparse.Namespace, proposal_config: Path, train_config: Path) -> None:
    """Everything that can be checked before hours of work: the folder holds images, the
    configs load, their checkpoints exist, the ground truth names the folder's files."""
    images = list_images(args.images)  # an error naming the folder when it has no image
    missing = [
        f"{config.relative_to(REPO) if config.is_relative_to(REPO) else config}: {item}"
        for config, opts, keys in (
            (proposal_config, args.proposal_opts, PROPOSAL_CHECKPOINTS),
            (train_config, args.train_opts, TRAIN_CHECKPOINTS),
        )
        for item in missing_checkpoints(config, opts, keys)
    ]
    if missing:
        raise FileNotFoundError(
            "missing checkpoint files (place the official files there, see README "
            "'Checkpoints'; or run with --weight-free to try the tool without weights):\n  "
            + "\n  ".join(missing)
        )
    if args.gt:
        names = {p.relative_to(args.images).as_posix() for p in images}
        gt_names = [img["file_name"] for img in read_json(args.gt, "--gt json")["images"]]
        unmatched = [name for name in gt_names if name not in names]
        if not gt_names or len(unmatched) == len(gt_names):
            raise ValueError(
                f"--gt {args.gt}: none of its {len(gt_names)} file names is an image under "
                f"{args.images} (e.g. {gt_names[:3]}; they must be paths relative to the folder)"
            )
        if unmatched:
            print(
                f"warning: {len(unmatched)} of the {len(gt_names)} images of {args.gt} are not "
                f"under {args.images} (e.g. {unmatched[:3]}); they count as missed objects"
            )


def with_gt_ids(predictions: Path, gt: Path, out: Path) -> Path:
    """``predictions`` (ids of the folder) renumbered with the ids ``gt`` gives the same file
    names, so the COCO evaluation pairs them; images absent from ``gt`` are dropped."""
    pred, truth = read_json(predictions), read_json(gt)
    ids = {img["file_name"]: img["id"] for img in truth["images"]}
    renumber = {
        img["id"]: ids[img["file_name"]] for img in pred["images"] if img["file_name"] in ids
    }
    pred["images"] = [
        {**img, "id": renumber[img["id"]]} for img in pred["images"] if img["id"] in renumber
    ]
    pred["annotations"] = [
        {**ann, "image_id": renumber[ann["image_id"]]}
        for ann in pred["annotations"]
        if ann["image_id"] in renumber
    ]
    atomic_write_json(out, pred)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out = args.output.resolve()
    args.images = args.images.resolve()
    proposal_config, train_config = chosen_configs(args)
    try:
        check_inputs(args, proposal_config, train_config)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    steps = Steps()
    gpus = ["--num-gpus", max(args.gpus, 1)]
    device = [] if args.gpus > 0 else ["MODEL.DEVICE", "cpu"]

    proposals = out / "proposals/pseudo_labels.json"
    command = [TOOLS / "generate_proposals.py", "--config-file", proposal_config]
    command += ["--dataset", f"folder:{args.images}", "--output", proposals]
    command += ["--vis", args.num_overlays, *gpus, *device, *args.proposal_opts]
    steps.run("proposals", command, proposals)

    train_dir = out / "train"
    train_cfg = load_config(train_config, args.train_opts)
    rounds = train_cfg.SELF_TRAINING.ROUNDS
    final_round = train_dir / f"round{rounds}/model_final.pth"
    command = [TOOLS / "train_net.py", "--config-file", train_config, *gpus]
    command += ["--resume", "OUTPUT_DIR", train_dir, "INPUT.PSEUDO_MASKS.REGISTER", "[]"]
    command += ["DATASETS.TRAIN", repr((f"pseudo:{proposals}",)), "DATASETS.TEST", "()"]
    command += [*device, *args.train_opts]
    steps.run("training", command, final_round)

    predictions = out / "predictions.json"
    command = [TOOLS / "demo.py", "--config-file", train_dir / f"round{rounds}/config.yaml"]
    command += ["--input", args.images, "--output", out / "overlays/model"]
    command += ["--overlays", args.num_overlays, "--json-out", predictions]
    command += ["--confidence-threshold", args.overlay_score]
    command += ["--opts", "MODEL.WEIGHTS", final_round, "DATASETS.TEST", "()", *device]
    steps.run("predictions", command, predictions)

    metrics = {}
    if args.gt:
        for name, pred in (("proposals", proposals), ("trained", predictions)):
            renumbered = with_gt_ids(pred, args.gt, out / f"evaluation/{name}_gt_ids.json")
            result = out / f"evaluation/metrics_{name}.json"
            command = [TOOLS / "evaluate_json.py", "--gt", args.gt, "--pred", renumbered]
            steps.run(f"evaluate {name}", [*command, "--json-out", result], result)
            metrics[name] = read_json(result)
        analysis = out / "evaluation/analysis"
        command = [TOOLS / "analyze_proposals.py", "--proposals"]
        command += [
            out / "evaluation/proposals_gt_ids.json",
            out / "evaluation/trained_gt_ids.json",
        ]
        command += ["--names", "proposals", "trained", "--gt", args.gt, "--out", analysis]
        steps.run("analysis (Table 1)", command, analysis / "recall_by_count.json")

    write_pipeline_report(out, args, proposals, predictions, train_dir, rounds, metrics)
    total = time.perf_counter() - started
    record = run_record(["python", "tools/run_pipeline.py", *argv], steps, started_at, total)
    atomic_write_json(out / "metrics.json", {**metrics, "run": record}, indent=2)
    if metrics:
        print(format_table({name: m["segm"] for name, m in metrics.items()}))
    print(f"\nreport: {out / 'index.html'}  predictions: {predictions}  ({total:.0f} s)")
    return 0


def write_pipeline_report(
    out: Path,
    args: argparse.Namespace,
    proposals: Path,
    predictions: Path,
    train_dir: Path,
    rounds: int,
    metrics: dict,
) -> None:
    """index.html: proposals | trained model side by side on the first images, the proposal
    visualisations, loss curves, and the metrics when there is ground truth."""
    sources = {"proposals": proposals, f"trained (score>={args.overlay_score})": predictions}
    if args.gt:  # the ground truth's ids, as evaluation renumbered them
        sources = dict(
            zip(
                sources,
                (out / "evaluation/proposals_gt_ids.json", out / "evaluation/trained_gt_ids.json"),
            )
        )
    loaded = {name: read_json(path) for name, path in sources.items()}
    panels = {
        name: annotations_by_image(
            data, min_score=0.0 if name == "proposals" else args.overlay_score
        )
        for name, data in loaded.items()
    }
    predicted = sorted(list(loaded.values())[1]["images"], key=lambda img: img["file_name"])
    base = read_json(args.gt) if args.gt else {"images": predicted, "annotations": []}
    ids = [img["id"] for img in predicted][: args.num_overlays]
    overlays = write_comparison_grids(
        base,
        panels,
        args.images,
        out / "overlays/grids",
        ids,
        "ground truth" if args.gt else "image",
    )
    curves = [
        plot_loss_curves(
            train_dir / f"round{r}/metrics.json",
            out / f"curves/losses_round{r}.png",
            f"training losses, round {r}",
        )
        for r in range(1, rounds + 1)
    ]
    sections = [
        (
            "Ground truth | proposals | trained model"
            if args.gt
            else "Image | proposals | trained model",
            overlays,
        ),
        ("Training losses", curves),
        (
            "Proposal generation: masks for every k, saliency, kept proposals",
            sorted((out / "proposals").rglob("*.png")),
        ),
    ]
    if metrics:
        sections.append(
            (
                "Recall by instances of one category (Table 1)",
                sorted((out / "evaluation/analysis").glob("*.png")),
            )
        )
    summary = {name: m["segm"] for name, m in metrics.items()}
    notes = [f"Images: {args.images} ({len(predicted)} predicted)."]
    write_report(out, summary, sections, notes)


if __name__ == "__main__":
    sys.exit(main())
