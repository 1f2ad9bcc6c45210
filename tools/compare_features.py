#!/usr/bin/env python
"""Compare feature models by their proposals (Engstler et al. 2023, Tables 1-2) in one command.

For every proposal config (one feature model each, e.g. configs/proposals/coco_{mae,dino}.yaml)
it generates the proposals of a dataset with ground truth, then puts side by side their recall
by instance count (Table 1's split) and their class-agnostic COCO mask AP/AR (Table 2's metrics;
here of the proposals themselves, where the paper's Table 2 scores a segmenter trained on them):

    python tools/compare_features.py --configs configs/proposals/coco_mae.yaml \\
        configs/proposals/coco_dino.yaml --dataset uis_coco_val2017 --out output/features

Resumable: each config's proposals go to OUT/proposals/NAME.json (NAME: --names, or the config's
file stem). A finished file made with the same config, dataset and --limit is reused, an
interrupted one resumes from its shards (tools/generate_proposals.py); one made otherwise is an
error naming it. Every configured checkpoint is checked before anything runs. KEY VALUE pairs at
the end override every config. With --limit N, the first N image ids and only their ground
truth are evaluated. Writes OUT/comparison.{csv,json,png}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2 is used)

# isort: split
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from uis_d2.config import load_config
from uis_d2.data.pseudo_labels import read_info
from uis_d2.evaluation.coco_agnostic import BACKENDS, load_ground_truth
from uis_d2.evaluation.plotting import plot_proposal_comparison
from uis_d2.evaluation.proposal_report import (
    csv_bytes,
    evaluate_proposal_sets,
    format_table,
    report,
    set_names,
)
from uis_d2.proposals.runner import check_checkpoints, prepare_job
from uis_d2.proposals.shards import ShardMismatchError, shard_dir_for
from uis_d2.report.steps import run_script
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

GENERATE = Path(__file__).resolve().parent / "generate_proposals.py"

# The columns of the paper's Table 2, in its order.
TABLE2_METRICS = ("AP50", "AP75", "AP", "AR1", "AR10", "AR100")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", required=True, help="proposal configs")
    parser.add_argument("--names", nargs="+", help="one display name per config")
    parser.add_argument("--dataset", required=True, help="registered dataset with ground truth")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="only the first N image ids")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes generating proposals (one per GPU)"
    )
    parser.add_argument("--backend", default="pycocotools", choices=BACKENDS)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="overrides for every config: KEY VALUE ..."
    )
    args = parser.parse_args(argv)
    try:
        args.names = set_names(args.names, args.configs, "configs")
    except ValueError as e:
        parser.error(str(e))
    return args


def ground_truth(dataset: str, limit: int | None) -> tuple[str, dict[str, Any]]:
    """The dataset's ground-truth json file, and the ground truth of the images the generator
    takes (the first ``limit`` image ids, all by default), so that unprocessed images count
    nowhere."""
    json_file = MetadataCatalog.get(dataset).get("json_file", None)
    if not json_file:
        raise ValueError(
            f"dataset {dataset!r} has no ground-truth json (metadata json_file): name a "
            "registered dataset with annotations, e.g. uis_coco_val2017 or synthetic_val"
        )
    wanted = {record.image_id for record in prepare_job(dataset, "", limit=limit).records}
    gt = load_ground_truth(json_file)
    return str(json_file), {
        **gt,
        "images": [image for image in gt["images"] if image["id"] in wanted],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in wanted],
    }


def is_finished(path: Path, cfg: CfgNode, dataset: str, num_images: int) -> bool:
    """True when ``path`` holds finished proposals of this config, dataset and image count;
    False when there is nothing yet, or the shards of an interrupted run (the generator
    resumes them). A file made with other settings is an error: reusing it would compare
    the wrong proposals, overwriting it would lose work the user may want."""
    if not path.is_file() or shard_dir_for(path).exists():
        return False
    info = read_info(path) or {}
    expected = {  # info key: (what the user changed, its value now)
        "dataset": ("dataset", dataset),
        "config": ("config", cfg.dump()),
        "num_images_requested": ("image count (--limit)", num_images),
    }
    differing = [what for key, (what, value) in expected.items() if info.get(key) != value]
    if differing:
        raise ValueError(
            f"{path} holds proposals made with another {' and '.join(differing)}; delete it to "
            "generate them again with these settings, or choose another --out"
        )
    return True


def generate(
    args: argparse.Namespace, configs: dict[str, CfgNode], num_images: int
) -> dict[str, Path]:
    """Each config's proposals, generated or resumed unless finished; their paths by name."""
    files = {}
    for index, (name, config) in enumerate(zip(args.names, args.configs), start=1):
        path = Path(args.out) / "proposals" / f"{name}.json"
        files[name] = path
        step = f"[{index}/{len(args.names)}] {name}"
        if is_finished(path, configs[name], args.dataset, num_images):
            print(f"{step}: {path} is finished, reused", flush=True)
            continue
        print(f"{step}: proposals with {config} -> {path}", flush=True)
        command = [GENERATE, "--config-file", config, "--dataset", args.dataset]
        command += ["--output", path, "--num-gpus", args.num_gpus]
        command += ["--limit", args.limit] if args.limit else []
        run_script([*command, *args.opts], cwd=Path.cwd())
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        configs = {n: load_config(c, args.opts) for n, c in zip(args.names, args.configs)}
        for cfg in configs.values():
            check_checkpoints(cfg)
        gt_file, gt = ground_truth(args.dataset, args.limit)
        num_images = len(gt["images"])
        files = generate(args, configs, num_images)
        print(f"evaluating {len(files)} proposal sets on {num_images} images", flush=True)
        qualities = evaluate_proposal_sets(gt, files, backend=args.backend)
    except (
        FileNotFoundError,
        KeyError,
        ValueError,
        ShardMismatchError,
        subprocess.CalledProcessError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    context = {
        "dataset": args.dataset,
        "gt": gt_file,
        "limit": args.limit,
        "num_images": num_images,
        "configs": dict(zip(args.names, args.configs)),
        "overrides": args.opts,
    }
    print("Table 1 split: average recall (%) by instances of the same category in the image;")
    print(f"then class-agnostic COCO mask metrics of the proposals ({', '.join(TABLE2_METRICS)})")
    print(format_table(qualities, TABLE2_METRICS))
    atomic_write_bytes(out / "comparison.csv", csv_bytes(qualities))
    atomic_write_json(out / "comparison.json", report(qualities, **context), indent=2)
    recalls = {name: quality.recall for name, quality in qualities.items()}
    segm = {name: quality.segm for name, quality in qualities.items()}
    plot_proposal_comparison(recalls, segm, TABLE2_METRICS, out / "comparison.png")
    print(f"wrote {out}/comparison.{{csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
