#!/usr/bin/env python
"""Fully unsupervised semantic segmentation (Leopart 3.2, 4.4): CBFE, foreground-only k-means,
community detection.

Example (the weight-free features on the embedded data):

    python tools/segment_unsupervised.py --config-file configs/proposals/synthetic.yaml \
        --fit-dataset synthetic_train_sem --dataset synthetic_val_sem --size 192 \
        --k-cbfe 150 --k-cd 30 --markov-time 1 --weight-threshold 0.05 --out output/unsup_seg

Every image of both splits is resized to --size x --size (aspect not kept) and run through
PROPOSALS.EXTRACTOR for its patch tokens (features/dense_dataset.py); the tokens of both splits
are standardised and projected on --pca-dim principal axes together. The foreground hint of an
image is the map of the FOREGROUND_REGISTRY provider --hint-provider (built from the config as
tools/evaluate_foreground.py builds it) on the ORIGINAL image, resized to the token grid
(resize_map). Then (uis_d2/leopart/cbfe.py, community.py): CBFE with --k-cbfe clusters and the
--threshold-rule fitted on --fit-dataset and applied to --dataset's own precisions; k-means with
--k-cd clusters on the foreground tokens of both splits; the label maps upsampled (nearest) to
--eval-size; co-occurrence over both splits; communities (--detector); merged ids.

Labels: --dataset's semantic ground truth scores the results only; --threshold-rule oracle reads
--fit-dataset's ground truth (instance masks, or semantic classes != 0), which makes the run
label-tuned. The defaults of --k-cd, --markov-time and --weight-threshold are the reference's
ViT-S/16 values, which it tuned to train-set ground truth (the json says so when they are used).

Scores on --dataset (a semantic split), with UnsupervisedSemSegEvaluator at --eval-size:
``cd`` (the result), ``kmeans`` (plain k-means with K = C on all tokens: the baseline) and
``cbfe_kmeans`` (k-means with K = C - 1 on CBFE's foreground, background its own id: Leopart's
"+ CBFE" row): Hungarian mIoU as the evaluator reports it (unmatched ids count as errors) and
with unmatched ids mapped to background (the reference's CD protocol). Foreground Jaccard of the
CBFE masks and of the raw hint (at the provider's own resolution) against the ground truth's
classes != 0, at its size, ignored pixels left out. Writes DIR/segment_unsupervised.{json,txt},
DIR/segment_unsupervised_grid.png (image | ground truth | CBFE foreground | CD map) and each
method's evaluator output in DIR/NAME/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2 is used)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

from uis_d2.config import load_config
from uis_d2.data.image_folder import ensure_dataset
from uis_d2.data.image_io import read_image
from uis_d2.data.semantic import IGNORE_LABEL, resize_labels, semantic_map
from uis_d2.evaluation.foreground import foreground_counts, ground_truth_union, summarize
from uis_d2.evaluation.foreground_grid import save_foreground_grid
from uis_d2.evaluation.semantic import METRICS_FILE, UnsupervisedSemSegEvaluator
from uis_d2.features.base import build_feature_extractor
from uis_d2.features.dense_dataset import (
    PATCH_TOKENS,
    collect_dense_tokens,
    standardised_pca,
    token_matrix,
)
from uis_d2.foreground.base import (
    FOREGROUND_REGISTRY,
    ForegroundProvider,
    build_foreground_provider,
    build_saliency_extractor,
    resize_map,
)
from uis_d2.leopart import cbfe, community
from uis_d2.proposals.runner import uses_cuda
from uis_d2.pseudo_classes.clustering import kmeans
from uis_d2.report.overlays import instance_colours
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

REPORT = "segment_unsupervised"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--config-file", required=True, help="proposal config: PROPOSALS.EXTRACTOR gives tokens")
    add("--fit-dataset", required=True, help="split the CBFE threshold is fitted on")
    add("--dataset", required=True, help="semantic split to segment and score")
    add("--out", required=True, help="output directory")
    add("--size", type=int, default=448, help="square input side (default 448, Leopart)")
    add("--eval-size", type=int, default=100, help="side of the scored maps (default 100)")
    add("--hint-provider", default="AttentionMass", help="FOREGROUND_REGISTRY name of the hint")
    add("--pca-dim", type=int, default=cbfe.DEFAULT_PCA_DIM, help="PCA dimensions (50)")
    add("--k-cbfe", type=int, default=cbfe.DEFAULT_K, help="CBFE clusters (default 200)")
    add(
        "--threshold-rule",
        choices=cbfe.THRESHOLD_RULES,
        default=cbfe.DEFAULT_RULE,
        help="CBFE threshold: background_share, otsu (label-free) or oracle (uses labels)",
    )
    add(
        "--background-share",
        type=float,
        default=cbfe.DEFAULT_BACKGROUND_SHARE,
        help="clusters given to background by --threshold-rule background_share (0.65)",
    )
    add("--k-cd", type=int, help=f"CD clusters ({community.REFERENCE_K_CD}, label-tuned)")
    add("--markov-time", type=float, help=f"CD ({community.REFERENCE_MARKOV_TIME}, label-tuned)")
    add(
        "--weight-threshold",
        type=float,
        help=f"CD edge threshold ({community.REFERENCE_WEIGHT_THRESHOLD}, label-tuned)",
    )
    add("--detector", choices=community.DETECTORS, default="auto", help="community detector")
    add("--preferred-modules", type=int, help="Infomap's preference (default: C - 1 classes)")
    add("--trials", type=int, default=community.DEFAULT_TRIALS, help="CD trials (10)")
    add("--restarts", type=int, default=cbfe.DEFAULT_RESTARTS, help="k-means restarts (5)")
    add("--seed", type=int, default=0, help="seed of every clustering")
    add("--limit", type=int, help="only the first N images of each split")
    add("--grid", type=int, default=6, help="images in the PNG grid")
    add("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    positive = ("size", "eval_size", "pca_dim", "k_cbfe", "trials", "restarts", "k_cd", "limit")
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.grid < 0:
        parser.error(f"--grid must be >= 0, got {args.grid}")
    if args.hint_provider not in FOREGROUND_REGISTRY:
        known = sorted(name for name, _ in FOREGROUND_REGISTRY)
        parser.error(f"--hint-provider {args.hint_provider!r} is not registered; known: {known}")
    return args


def cd_settings(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """k_cd, Markov time and edge threshold, each given or the reference's label-tuned one,
    and Infomap's preferred number of modules (default: the C - 1 object classes)."""
    given = {
        "k_cd": (args.k_cd, community.REFERENCE_K_CD),
        "markov_time": (args.markov_time, community.REFERENCE_MARKOV_TIME),
        "weight_threshold": (args.weight_threshold, community.REFERENCE_WEIGHT_THRESHOLD),
    }
    settings = {key: default if value is None else value for key, (value, default) in given.items()}
    settings["label_tuned_reference_defaults"] = sorted(
        k for k, (v, _) in given.items() if v is None
    )
    settings["preferred_modules"] = args.preferred_modules or num_classes - 1
    return settings


@dataclass
class Split:
    """The readable images of a split, in token order, with their tokens and hints."""

    records: list[dict[str, Any]]
    skipped: list[str]
    tokens: torch.Tensor  # (N, D, h, w)
    native_hints: list[np.ndarray]  # the provider's maps at their own resolution
    hints: np.ndarray  # (N, h, w) bool, at the token grid

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.tokens.shape[-2:])


def load_split(
    name: str, extractor, provider: ForegroundProvider, args: argparse.Namespace, cfg, device
) -> Split:
    p = cfg.PROPOSALS
    records = DatasetCatalog.get(ensure_dataset(name, cfg.INPUT.BAD_IMAGE_POLICY))
    records = sorted(records, key=lambda r: r["image_id"])[: args.limit]
    dense = collect_dense_tokens(
        extractor,
        records,
        args.size,
        batch_size=p.BATCH_SIZE,
        bad_image_policy=cfg.INPUT.BAD_IMAGE_POLICY,
    )
    if not dense.file_names:
        raise ValueError(f"{name}: no readable image")
    by_name = {str(r["file_name"]): r for r in records}
    tokens = dense.tokens[PATCH_TOKENS]
    native = provider_maps(provider, dense.file_names, p.BATCH_SIZE, device)
    grid = tuple(tokens.shape[-2:])
    hints = np.stack([resize_map(torch.from_numpy(m), grid).numpy() for m in native])
    kept = [by_name[f] for f in dense.file_names]
    return Split(kept, dense.skipped, tokens, native, hints)


def provider_maps(
    provider: ForegroundProvider, files: Sequence[str], batch: int, device: torch.device
) -> list[np.ndarray]:
    """The provider's bool map of each image, run on the ORIGINAL image (any size), as the
    proposals' saliency filter runs it."""
    maps = []
    for start in range(0, len(files), batch):
        names = list(files[start : start + batch])
        images = [
            torch.from_numpy(np.ascontiguousarray(read_image(f, fmt="RGB").transpose(2, 0, 1)))
            for f in names
        ]
        maps += [m.cpu().numpy() for m in provider([i.to(device) for i in images], names=names)]
    return maps


def foreground_truth(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, ignored) bool maps of a record: the union of its instance masks, or its
    semantic classes != 0 with the ignore label apart."""
    if "annotations" in record:
        union = ground_truth_union(record)
        return union, np.zeros_like(union)
    labels = semantic_map(record)
    ignored = labels == IGNORE_LABEL
    return (labels != 0) & ~ignored, ignored


def run_cbfe(args: argparse.Namespace, fit: Split, evaluated: Split, points: torch.Tensor):
    """CBFE fitted on ``fit``; the oracle rule reads its ground truth at the token grid."""
    truth = None
    if args.threshold_rule == "oracle":
        truth = np.stack(
            [
                resize_map(torch.from_numpy(foreground_truth(r)[0]), fit.grid).numpy()
                for r in fit.records
            ]
        )
    num_fit = fit.hints.size
    return cbfe.cbfe(
        points[:num_fit],
        fit.hints,
        points[num_fit:],
        evaluated.hints,
        num_clusters=args.k_cbfe,
        rule=args.threshold_rule,
        background_share=args.background_share,
        fit_ground_truth=truth,
        restarts=args.restarts,
        seed=args.seed,
    )


def run_community(
    args: argparse.Namespace, settings: dict[str, Any], points: np.ndarray, foreground: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """CD over both splits: (N, eval_size, eval_size) merged ids, and what it found."""
    k_cd = settings["k_cd"]
    parts = community.cluster_foreground(points, foreground, k_cd, args.restarts, args.seed)
    size = (args.eval_size, args.eval_size)
    upsampled = np.stack([resize_labels(m, size) for m in parts])
    probabilities = community.conditional_cooccurrence(upsampled, k_cd + 1)
    edges = community.cooccurrence_edges(probabilities, settings["weight_threshold"])
    found, detector = community.detect_communities(
        edges,
        settings["markov_time"],
        settings["preferred_modules"],
        args.trials,
        args.seed,
        args.detector,
    )
    ids = community.community_ids(found, k_cd + 1)
    info = {
        **settings,
        "detector": detector,
        "trials": args.trials,
        "edges": len(edges),
        "communities": len(found),
        "labels_in_no_community": int((ids == community.NO_COMMUNITY).sum()),
    }
    return ids[upsampled], info


def evaluate_maps(
    name: str, maps: np.ndarray, records: list[dict[str, Any]], args, num_ids: int
) -> dict[str, Any]:
    """The evaluator's Hungarian result for id maps (N, ., .) in 0..num_ids-1, and the same
    confusion scored with unmatched ids as background."""
    out = Path(args.out) / name
    evaluator = UnsupervisedSemSegEvaluator(
        args.dataset,
        num_clusters=num_ids - 1,
        eval_size=args.eval_size,
        output_dir=out,
        distributed=False,
    )
    for ids, record in zip(maps, records, strict=True):
        evaluator.add_image(ids, semantic_map(record), record["file_name"])
    hungarian = evaluator.evaluate()["sem_seg_hungarian"]
    confusion = np.asarray(json.loads((out / METRICS_FILE).read_text())["confusion"])
    to_background = community.scores_unmatched_to_background(confusion)
    return {
        "num_ids": num_ids,
        "mIoU": hungarian["mIoU"],
        "pACC": hungarian["pACC"],
        "mIoU_unmatched_to_background": 100 * to_background.miou,
        "pACC_unmatched_to_background": 100 * to_background.pixel_accuracy,
    }


def foreground_jaccards(
    maps: Mapping[str, Sequence[np.ndarray]], records: list[dict[str, Any]]
) -> dict[str, dict[str, float | int]]:
    """Foreground Jaccard (and boundary F1 within 3 pixels) of each method's bool maps (any
    resolution) at the ground truth's size; ignored pixels count in neither map."""
    counts: dict[str, list] = {name: [] for name in maps}
    for i, record in enumerate(records):
        truth, ignored = foreground_truth(record)
        for name, masks in maps.items():
            pred = resize_map(torch.from_numpy(masks[i]), truth.shape).numpy() & ~ignored
            counts[name].append(foreground_counts(pred, truth, 3.0))
    return {name: summarize(c) for name, c in counts.items()}


def colour_ids(ids: np.ndarray) -> np.ndarray:
    """An RGB picture of an id map: 0 black, the ignore label white, others bright colours."""
    palette = np.concatenate([[[0, 0, 0]], instance_colours(max(int(ids.max()), 1))])
    picture = palette[np.minimum(ids, len(palette) - 1)].astype(np.uint8)
    picture[ids == IGNORE_LABEL] = 255
    return picture


def write_grid(args, records, result: cbfe.CBFEResult, cd_maps: np.ndarray) -> None:
    """Image | ground truth | CBFE foreground | CD ids of the first --grid images, each map
    resized (nearest) to the image."""
    rows = []
    for i, record in enumerate(records[: args.grid]):
        image = read_image(record["file_name"], fmt="RGB")
        size = image.shape[:2]
        maps = {
            "ground truth": colour_ids(semantic_map(record)),
            "CBFE foreground": resize_labels(result.eval_foreground[i], size),
            "CD": colour_ids(resize_labels(cd_maps[i], size)),
        }
        rows.append((Path(record["file_name"]).name, image, maps))
    save_foreground_grid(rows, Path(args.out) / f"{REPORT}_grid.png")


def provenance(module) -> dict[str, Any]:
    """``describe()`` as json (checkpoint hashes; paths as strings)."""
    return json.loads(json.dumps(module.describe(), default=str))


def segment(args: argparse.Namespace, cfg) -> dict[str, Any]:
    """Run everything; returns the report (the json) and writes the evaluators' outputs."""
    num_classes = len(MetadataCatalog.get(ensure_dataset(args.dataset)).stuff_classes)
    settings = cd_settings(args, num_classes)
    device = torch.device("cuda") if uses_cuda(cfg) else torch.device("cpu")
    p = cfg.PROPOSALS
    torch.manual_seed(p.SEED)  # an extractor without checkpoint: the same weights every run
    extractor = build_feature_extractor(p.EXTRACTOR, p.SHORT_SIDE, p.MAX_SIDE, p.AMP).to(device)
    provider = build_foreground_provider(
        cfg, args.hint_provider, extractor=build_saliency_extractor(cfg)
    ).to(device)
    fit, evaluated = (
        load_split(name, extractor, provider, args, cfg, device)
        for name in (args.fit_dataset, args.dataset)
    )
    points, _ = standardised_pca(
        torch.cat([token_matrix(s.tokens) for s in (fit, evaluated)]), args.pca_dim
    )
    result = run_cbfe(args, fit, evaluated, points)
    foreground = np.concatenate([result.fit_foreground, result.eval_foreground])
    vectors = points.numpy()
    merged, found = run_community(args, settings, vectors, foreground)
    plain = kmeans(vectors, num_classes, args.restarts, args.seed).reshape(foreground.shape)
    fg_only = community.cluster_foreground(
        vectors, foreground, num_classes - 1, args.restarts, args.seed
    )
    num_fit = len(fit.records)
    maps = {
        "cd": (merged[num_fit:], found["communities"] + 1),
        "kmeans": (plain[num_fit:], num_classes),
        "cbfe_kmeans": (fg_only[num_fit:], num_classes),
    }
    semantic = {
        name: evaluate_maps(name, ids, evaluated.records, args, num_ids)
        for name, (ids, num_ids) in maps.items()
    }
    if args.grid:
        write_grid(args, evaluated.records, result, maps["cd"][0])
    return {
        "config_file": args.config_file,
        "fit_dataset": args.fit_dataset,
        "dataset": args.dataset,
        "size": args.size,
        "token_grid": list(fit.grid),
        "eval_size": args.eval_size,
        "num_classes": num_classes,
        "num_images": {"fit": num_fit, "eval": len(evaluated.records)},
        "skipped": {"fit": fit.skipped, "eval": evaluated.skipped},
        "extractor": provenance(extractor),
        "hint_provider": {"name": args.hint_provider, **provenance(provider)},
        "uses_labels": args.threshold_rule == "oracle"
        or bool(settings["label_tuned_reference_defaults"]),
        "pca_dim": int(points.shape[1]),
        "seed": args.seed,
        "cbfe": {
            "k": args.k_cbfe,
            "rule": args.threshold_rule,
            "background_share": args.background_share,
            "threshold": result.threshold,
            "foreground_clusters": result.foreground_clusters,
            "foreground_share": {
                "fit": float(result.fit_foreground.mean()),
                "eval": float(result.eval_foreground.mean()),
            },
        },
        "community": found,
        "foreground": foreground_jaccards(
            {"hint": evaluated.native_hints, "cbfe": result.eval_foreground}, evaluated.records
        ),
        "semantic": semantic,
    }


def format_table(report: Mapping[str, Any]) -> str:
    lines = [f"{'foreground (%)':<30}{'Jaccard':>10}{'BF1':>10}"]
    for name, r in report["foreground"].items():
        lines.append(f"{name:<30}{100 * r['jaccard']:>10.1f}{100 * r['boundary_f1']:>10.1f}")
    lines.append(f"{'semantic (%)':<20}{'ids':>5}{'mIoU':>8}{'mIoU unm.->bg':>15}")
    for name, r in report["semantic"].items():
        lines.append(
            f"{name:<20}{r['num_ids']:>5}{r['mIoU']:>8.1f}{r['mIoU_unmatched_to_background']:>15.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        report = segment(args, cfg)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    table = format_table(report)
    atomic_write_json(out / f"{REPORT}.json", report, indent=2)
    atomic_write_bytes(out / f"{REPORT}.txt", (table + "\n").encode("utf-8"))
    print(table)
    print(f"wrote {out}/{REPORT}.{{json,txt}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
