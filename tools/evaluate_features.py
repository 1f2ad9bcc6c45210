#!/usr/bin/env python
"""Leopart's dense-feature evaluation (SEED_SYSTEMS.md 3.7) of a config's PROPOSALS.EXTRACTOR.

DINO ViT-S/16 on VOC val, overclustering with K = 21 (Hungarian), 100, 300, 500 (precision) and
the linear probe trained on VOC trainaug:

    python tools/evaluate_features.py --config-file configs/proposals/coco_maskdistill.yaml \\
        --dataset uis_voc2012_val_sem --out output/features_eval/dino \\
        --linear-probe --probe-train-dataset uis_voc2012_trainaug_sem

A Leopart-tuned checkpoint: append PROPOSALS.EXTRACTOR.CHECKPOINT PATH
PROPOSALS.EXTRACTOR.CHECKPOINT_FORMAT leopart (any KEY VALUE pairs at the end override the config).

Every image is resized to --size x --size (448; aspect not kept) and its final-norm patch tokens
are kept (an extractor without them, ResNetDense, gives its features). Scores are computed at
--eval-size x --eval-size (100), ground truth resized by nearest neighbour, 255 ignored.
Overclustering (unsupervised): all tokens standardised, PCA to --pca-dim, k-means per K of
--clusters ("C" = the split's classes with the background) and per seed (--seeds: 0..N-1),
matched many-to-one by precision (K > C) or Hungarian (K <= C). Linear probe (supervised, the
standard transfer protocol): a 1x1 conv trained on the ground truth of --probe-train-dataset,
scored with the identity mapping.

Writes OUT/features_eval.{json,csv} (the json after each protocol, so finished results
survive a later failure), OUT/features_eval.png (image | ground truth | maps of the first seed
after matching, in ground-truth colours; grey = an unmatched cluster) and the evaluator's json
and confusion PNG of each K's first seed in OUT/overclustering/K<K>/. Resumable: tokens (by
parts of images) and every k-means labelling are cached in OUT/cache/, keyed by the config's
extractor node, its weights, the split, the images and the size; delete it to free the disk.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2 is used)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from uis_d2.config import load_config
from uis_d2.data.image_folder import ensure_dataset
from uis_d2.data.image_io import read_image
from uis_d2.data.semantic import resize_labels, semantic_map
from uis_d2.evaluation.dense_features import (
    ProbeSettings,
    cached_kmeans,
    identity_scores,
    overclustering_matching,
    probe_predictions,
    score_label_maps,
    seed_summary,
    train_linear_probe,
)
from uis_d2.evaluation.foreground_grid import save_foreground_grid
from uis_d2.evaluation.semantic import METRICS_FILE, check_evaluation_split
from uis_d2.features import FeatureExtractor, build_feature_extractor
from uis_d2.features.dense_dataset import (
    PATCH_TOKENS,
    DenseTokens,
    cached_dense_tokens,
    square_resize,
    standardised_pca,
    token_matrix,
)
from uis_d2.proposals.runner import uses_cuda
from uis_d2.report.semantic import colour_map
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json, read_json

NUM_CLASSES_WORD = "C"
REPORT_FILE = "features_eval.json"
CSV_COLUMNS = ("protocol", "K", "matching", "mIoU", "mIoU_std", "pACC", "pACC_std", "runs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="config with PROPOSALS.EXTRACTOR")
    parser.add_argument("--dataset", required=True, help="registered semantic split to evaluate")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", type=int, default=448, help="square model input (448)")
    parser.add_argument("--eval-size", type=int, default=100, help="square scoring size (100)")
    parser.add_argument(
        "--clusters",
        nargs="+",
        default=["C", "100", "300", "500"],
        help='overclustering K values; "C" = the number of classes with the background',
    )
    parser.add_argument("--seeds", type=int, default=5, help="k-means seeds 0..N-1 (5)")
    parser.add_argument("--pca-dim", type=int, default=50, help="PCA dimension (50)")
    parser.add_argument(
        "--kmeans-restarts", type=int, default=5, help="restarts per k-means (5, faiss nredo)"
    )
    parser.add_argument("--kmeans-iters", type=int, default=100, help="Lloyd steps at most (100)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--grid", type=int, default=4, help="images in the PNG (4)")
    parser.add_argument(
        "--allow-train-split",
        action="store_true",
        help="evaluate on a split named as training data (the matching is fitted on it)",
    )
    parser.add_argument(
        "--linear-probe", action="store_true", help="also train and score the linear probe"
    )
    parser.add_argument("--probe-train-dataset", help="semantic split the probe is trained on")
    parser.add_argument("--probe-limit", type=int, default=None, help="its first N images only")
    parser.add_argument("--probe-epochs", type=int, default=ProbeSettings.epochs)
    parser.add_argument(
        "--probe-lr-drop-epoch",
        type=int,
        default=ProbeSettings.lr_drop_epoch,
        help="learning rate x0.1 from this epoch on",
    )
    parser.add_argument("--probe-lr", type=float, default=ProbeSettings.lr)
    parser.add_argument("--probe-batch-size", type=int, default=ProbeSettings.batch_size)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    # --clusters swallows the KEY VALUE overrides when they follow it; config keys have a dot.
    dotted = [i for i, value in enumerate(args.clusters) if "." in value]
    if dotted:
        args.opts = args.clusters[dotted[0] :] + args.opts
        args.clusters = args.clusters[: dotted[0]]
    for name in ("size", "eval_size", "seeds", "pca_dim", "kmeans_restarts", "kmeans_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("limit", "probe_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.linear_probe != (args.probe_train_dataset is not None):
        parser.error("--linear-probe and --probe-train-dataset go together")
    if args.grid < 0:
        parser.error(f"--grid must be >= 0, got {args.grid}")
    try:
        args.probe = ProbeSettings(
            epochs=args.probe_epochs,
            lr_drop_epoch=args.probe_lr_drop_epoch,
            lr=args.probe_lr,
            batch_size=args.probe_batch_size,
        )
    except ValueError as e:
        parser.error(str(e))
    return args


def cluster_counts(values: Sequence[str], num_classes: int) -> list[int]:
    """The K values of --clusters, ascending and unique ("C" = ``num_classes``)."""
    counts = set()
    for value in values:
        k = num_classes if value == NUM_CLASSES_WORD else int(value) if value.isdigit() else 0
        if k < 2:
            raise ValueError(f"--clusters {value!r}: each K must be an integer >= 2 or C")
        counts.add(k)
    if not counts:
        raise ValueError("--clusters needs at least one K")
    return sorted(counts)


def semantic_classes_of(dataset: str) -> list[str]:
    """The classes (background first) of a registered semantic split."""
    classes = MetadataCatalog.get(ensure_dataset(dataset)).get("stuff_classes", None)
    if not classes:
        raise ValueError(
            f"dataset {dataset!r} is not a semantic split (no stuff_classes): name one of "
            "uis_d2/data/semantic_datasets.py, e.g. uis_voc2012_val_sem or synthetic_val_sem"
        )
    return list(classes)


class Split:
    """One semantic split's readable images, their tokens (cached) and ground truth at the
    evaluation size (N, S, S) uint8."""

    def __init__(self, dataset: str, limit: int | None, args: argparse.Namespace, cfg, extractor):
        records = DatasetCatalog.get(dataset)[:limit]
        if not records:
            raise ValueError(f"dataset {dataset!r} has no image")
        self.dataset = dataset
        self.cache_dir = (
            Path(args.out) / "cache" / cache_name(cfg, extractor, dataset, records, args)
        )
        self.dense: DenseTokens = cached_dense_tokens(
            extractor,
            records,
            args.size,
            self.cache_dir,
            (PATCH_TOKENS,),
            cfg.PROPOSALS.BATCH_SIZE,
            cfg.INPUT.BAD_IMAGE_POLICY,
        )
        if not self.dense.file_names:
            raise ValueError(f"dataset {dataset!r}: no readable image to evaluate")
        by_name = {str(r["file_name"]): r for r in records}
        size = (args.eval_size, args.eval_size)
        self.gt = np.stack([resize_labels(semantic_map(by_name[f]), size) for f in self.files])

    @property
    def files(self) -> list[str]:
        return self.dense.file_names

    @property
    def tokens(self) -> torch.Tensor:
        return self.dense.tokens[PATCH_TOKENS]


def cache_name(cfg, extractor: FeatureExtractor, dataset: str, records, args) -> str:
    """A folder name that changes with anything the tokens depend on."""
    key = {
        "extractor": cfg.PROPOSALS.EXTRACTOR.dump(),
        "weights": extractor.checkpoint_sha256,
        "seed": cfg.PROPOSALS.SEED,  # the initial weights of an extractor without checkpoint
        "amp": cfg.PROPOSALS.AMP,
        "size": args.size,
        "files": [str(r["file_name"]) for r in records],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{dataset}_{args.size}px_{digest}"


def overclustering(
    split: Split, ks: list[int], classes: list[str], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Every K's runs over the seeds and their mean/std; and, per K, the first seed's maps of the
    grid images in ground-truth classes (-1: an unmatched cluster)."""
    points, kept_variance = standardised_pca(token_matrix(split.tokens), args.pca_dim)
    results: dict[str, Any] = {
        "pca_dim": int(points.shape[1]),
        "pca_kept_variance": kept_variance,
        "num_tokens": len(points),
        "per_K": {},
    }
    if ks[-1] > len(points):
        raise ValueError(f"--clusters {ks[-1]} exceeds the {len(points)} tokens of the images")
    maps = {}
    with tqdm(total=len(ks) * args.seeds, desc="overclustering", unit="run") as progress:
        for k in ks:
            matching = overclustering_matching(k, len(classes))
            runs = []
            for seed in range(args.seeds):
                progress.set_postfix(K=k, seed=seed)
                labels = cluster_maps(split, points, k, seed, args)
                out = Path(args.out) / "overclustering" / f"K{k}" if seed == 0 else None
                scores = score_label_maps(
                    split.dataset,
                    split.files,
                    labels,
                    split.gt,
                    k,
                    matching,
                    args.eval_size,
                    args.allow_train_split,
                    out,
                )
                runs.append({"seed": seed, **scores})
                progress.update()
                if out is not None and args.grid:
                    mapping = read_json(out / METRICS_FILE)["matchings"][matching]["mapping"]
                    maps[k] = matched_maps(labels[: args.grid], mapping, split.gt.shape[1:])
            summary = {"K": k, "matching": matching, **seed_summary(runs), "runs": runs}
            results["per_K"][str(k)] = summary
    return results, maps


def cluster_maps(
    split: Split, points: torch.Tensor, k: int, seed: int, args: argparse.Namespace
) -> np.ndarray:
    """(N, h, w) k-means ids of the split's tokens, cached beside its tokens."""
    name = f"kmeans_pca{points.shape[1]}_r{args.kmeans_restarts}_i{args.kmeans_iters}"
    cache = split.cache_dir / f"{name}_K{k}_seed{seed}.npy"
    labels = cached_kmeans(points, k, seed, args.kmeans_restarts, args.kmeans_iters, cache)
    return labels.reshape(len(split.tokens), *split.tokens.shape[-2:])


def matched_maps(labels: np.ndarray, mapping: list[int], size: tuple[int, int]) -> np.ndarray:
    """Id maps (N, h, w) resized to ``size`` and renamed to classes (-1: unmatched)."""
    return np.asarray(mapping)[np.stack([resize_labels(m, size) for m in labels])]


def linear_probe(
    split: Split, train: Split, classes: list[str], args: argparse.Namespace, device
) -> tuple[dict[str, Any], np.ndarray]:
    """The probe's scores on the evaluated split and its class maps there."""
    head, losses = train_linear_probe(
        train.tokens, torch.from_numpy(train.gt), len(classes), args.probe, device
    )
    pred = probe_predictions(head, split.tokens, args.eval_size, args.probe.batch_size)
    scores = identity_scores(pred, split.gt, classes)
    return {
        "supervised": True,
        "train_dataset": train.dataset,
        "num_train_images": len(train.files),
        "train_skipped": train.dense.skipped,
        "settings": dataclasses.asdict(args.probe),
        "epoch_losses": losses,
        "matching": "identity",
        **scores,
    }, pred


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for result in report["overclustering"]["per_K"].values():
        rows.append(
            {
                "protocol": "overclustering",
                "K": result["K"],
                "matching": result["matching"],
                "mIoU": result["mIoU_mean"],
                "mIoU_std": result["mIoU_std"],
                "pACC": result["pACC_mean"],
                "pACC_std": result["pACC_std"],
                "runs": len(result["runs"]),
            }
        )
    probe = report["linear_probe"]
    if probe is not None:
        rows.append(
            {
                "protocol": "linear probe (supervised)",
                "K": len(report["setting"]["classes"]),
                "matching": "identity",
                "mIoU": probe["mIoU"],
                "mIoU_std": 0.0,
                "pACC": probe["pACC"],
                "pACC_std": 0.0,
                "runs": 1,
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| protocol | K | matching | mIoU (%) | pACC (%) | runs |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['protocol']} | {r['K']} | {r['matching']} | {r['mIoU']:.2f} ± "
            f"{r['mIoU_std']:.2f} | {r['pACC']:.2f} ± {r['pACC_std']:.2f} | {r['runs']} |"
        )
    return "\n".join(lines)


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_outputs(out: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The json and csv as far as the report goes; returns the table's rows."""
    rows = table_rows(report)
    atomic_write_json(out / REPORT_FILE, report, indent=2)
    atomic_write_bytes(out / "features_eval.csv", csv_bytes(rows))
    return rows


def save_grid(
    split: Split, maps: dict[str, np.ndarray], classes: list[str], size: int, path: Path
) -> None:
    """image (as the model saw it) | ground truth | each map, in ground-truth colours."""
    rows = []
    for i, file_name in enumerate(split.files[: len(next(iter(maps.values())))]):
        image = square_resize(read_image(file_name), size)
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        panels = {"ground truth": colour_map(split.gt[i], None, len(classes))}
        panels.update({title: colour_map(m[i], None, len(classes)) for title, m in maps.items()})
        rows.append((Path(file_name).name, pixels, panels))
    save_foreground_grid(rows, path)


def evaluate(args: argparse.Namespace, cfg) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both protocols; writes the outputs as they finish. Returns the report and table rows."""
    check_evaluation_split(args.dataset, args.allow_train_split)
    classes = semantic_classes_of(args.dataset)
    ks = cluster_counts(args.clusters, len(classes))
    if args.linear_probe and semantic_classes_of(args.probe_train_dataset) != classes:
        raise ValueError(
            f"--probe-train-dataset {args.probe_train_dataset!r} has other classes than "
            f"--dataset {args.dataset!r}"
        )
    device = torch.device("cuda") if uses_cuda(cfg) else torch.device("cpu")
    torch.manual_seed(cfg.PROPOSALS.SEED)  # an extractor without checkpoint: same weights
    node = cfg.PROPOSALS.EXTRACTOR
    extractor = build_feature_extractor(node, args.size, args.size, cfg.PROPOSALS.AMP).to(device)
    split = Split(args.dataset, args.limit, args, cfg, extractor)
    out = Path(args.out)
    report: dict[str, Any] = {
        "setting": {
            "config_file": args.config_file,
            "overrides": args.opts,
            "dataset": args.dataset,
            "classes": classes,
            "num_images": len(split.files),
            "skipped": split.dense.skipped,
            "size": [args.size, args.size],
            "resize": "bilinear, antialiased, aspect ratio not kept",
            "token_grid": list(split.tokens.shape[-2:]),
            "token_dim": int(split.tokens.shape[1]),
            "eval_size": [args.eval_size, args.eval_size],
            "ground_truth_resize": "nearest",
            "clusters": ks,
            "seeds": list(range(args.seeds)),
            "pca_dim_requested": args.pca_dim,
            "kmeans": {"restarts": args.kmeans_restarts, "max_iters": args.kmeans_iters},
            "std": "sample standard deviation over the seeds",
            "extractor": json.loads(json.dumps(extractor.describe(), default=str)),
        },
        "overclustering": None,
        "linear_probe": None,
    }
    report["overclustering"], maps = overclustering(split, ks, classes, args)
    rows = write_outputs(out, report)
    titles = {k: f"K={k} {overclustering_matching(k, len(classes))}" for k in ks}
    grid_maps = {titles[k]: m for k, m in maps.items()}
    if args.linear_probe:
        train = Split(args.probe_train_dataset, args.probe_limit, args, cfg, extractor)
        report["linear_probe"], pred = linear_probe(split, train, classes, args, device)
        rows = write_outputs(out, report)
        grid_maps["linear probe"] = pred[: args.grid]
    if args.grid:
        save_grid(split, grid_maps, classes, args.size, out / "features_eval.png")
    return report, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        report, rows = evaluate(args, cfg)
    except (FileNotFoundError, KeyError, ValueError) as err:  # BadImageError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    setting = report["setting"]
    print(
        f"{setting['dataset']}: {setting['num_images']} images at {args.size} x {args.size}, "
        f"scored at {args.eval_size} x {args.eval_size}; PCA "
        f"{report['overclustering']['pca_dim']}, {args.seeds} seeds (mean ± std)"
    )
    print(markdown_table(rows))
    if setting["skipped"]:
        print(f"{len(setting['skipped'])} unreadable images skipped (listed in {REPORT_FILE})")
    print(f"wrote {args.out}/features_eval.{{json,csv{',png' if args.grid else ''}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
