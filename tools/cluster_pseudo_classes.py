#!/usr/bin/env python
"""Group the masks of a pseudo-label json into K pseudo-classes (MaskDistill, COMUS).

Examples (the embedded data; proposals from tools/generate_proposals.py):

    python tools/cluster_pseudo_classes.py --pseudo-labels P.json --output P_classes.json \
        --method spectral --num-clusters 6 --images datasets/synthetic/train \
        --config-file configs/proposals/synthetic.yaml \
        --gt datasets/synthetic/annotations/train.json
    python tools/cluster_pseudo_classes.py --pseudo-labels P.json --output P_classes.json \
        --method kmeans --num-clusters 6 --embedding stored
    python tools/cluster_pseudo_classes.py --pseudo-labels P_val.json --output P_val_classes.json \
        --assign-to P_classes.json --config-file configs/proposals/synthetic.yaml

One embedding per mask (uis_d2/pseudo_classes/embeddings.py): the extractor's class token of
the mask's box crop (default) or of the masked image, from PROPOSALS.EXTRACTOR of --config-file
(KEY VALUE overrides at the end), or the mask's stored embedding. --method kmeans is
MaskDistill's whitened k-means, spectral COMUS's 30-nearest-neighbour spectral clustering
(uis_d2/pseudo_classes/clustering.py); --filter-share drops that share of each cluster's masks
farthest from its centre (COMUS; default 0.2 for spectral, 0 for kmeans). Writes OUT.json with
category_id = cluster + 1 and cluster_distance (uis_d2/pseudo_classes/labels.py), image
embeddings to OUT.region_emb.npz (a rerun with the same input and embedding settings reads
them), and with --gt the region-level accuracy after Hungarian matching, NMI and ARI
(uis_d2/pseudo_classes/evaluation.py) to OUT.metrics.json; the ground truth never enters the
clustering.

--assign-to FITTED.json names the masks of other images (e.g. a validation split) with the
pseudo-classes an earlier run fitted, without clustering again: the nearest centre (kmeans) or
the majority of the nearest fitted masks (spectral; ``assign_to_clusters``). Method, K and the
embedding settings come from FITTED.json; the embeddings must come from the same extractor. No
mask is filtered. This is how the papers' "initial masks" rows are measured on val.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2 is used)

# isort: split
from uis_d2.config import load_config
from uis_d2.features import build_feature_extractor, file_sha256
from uis_d2.proposals.runner import uses_cuda
from uis_d2.pseudo_classes.clustering import (
    DEFAULT_FILTER_SHARE,
    DEFAULT_RESTARTS,
    METHODS,
    N_NEIGHBORS,
    assign_to_clusters,
    centre_distances,
    cluster,
    outlier_filter,
)
from uis_d2.pseudo_classes.embeddings import (
    EMBEDDINGS,
    IMAGE_EMBEDDINGS,
    EmbeddingCache,
    cache_path,
    image_embeddings,
    iter_image_groups,
    stored_embeddings,
)
from uis_d2.pseudo_classes.evaluation import GT_MATCHES, region_classes, region_scores
from uis_d2.pseudo_classes.labels import with_pseudo_classes, write_pseudo_class_file
from uis_d2.utils.files import atomic_write_json, read_json

logger = logging.getLogger("uis_d2.cluster_pseudo_classes")

# The references' crop sizes: MaskDistill crops at the box's own size, COMUS resizes to 256.
DEFAULT_CROP_SIZE = {"kmeans": 0, "spectral": 256}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pseudo-labels", required=True, help="input pseudo-label json")
    parser.add_argument("--output", required=True, help="output json (may be the input)")
    parser.add_argument("--method", choices=METHODS, help="required unless --assign-to")
    parser.add_argument(
        "--num-clusters", type=int, help="K pseudo-classes (required unless --assign-to)"
    )
    parser.add_argument(
        "--embedding", choices=EMBEDDINGS, help="default box_crop, or --assign-to's embedding"
    )
    parser.add_argument(
        "--assign-to",
        help="a json this tool wrote: name the masks with its pseudo-classes instead of "
        "clustering them",
    )
    parser.add_argument(
        "--images",
        help="folder the json's file names are relative to (default: its info.image_root, "
        "which tools/generate_proposals.py records)",
    )
    parser.add_argument("--config-file", help="config whose PROPOSALS.EXTRACTOR embeds regions")
    parser.add_argument(
        "--crop-size",
        type=int,
        help="side regions are resized to (0: their own size; default 0 for kmeans as "
        "MaskDistill, 256 for spectral as COMUS)",
    )
    parser.add_argument(
        "--filter-share",
        type=float,
        help="share of each cluster dropped as outliers (default 0.2 spectral, 0 kmeans)",
    )
    parser.add_argument(
        "--restarts", type=int, help="k-means restarts (default 1 kmeans, 10 spectral)"
    )
    parser.add_argument("--neighbors", type=int, help=f"spectral: graph neighbours ({N_NEIGHBORS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size", type=int, help="regions per forward (default PROPOSALS.BATCH_SIZE)"
    )
    parser.add_argument("--gt", help="ground-truth COCO json: report accuracy, NMI and ARI")
    parser.add_argument(
        "--gt-match",
        default="mask",
        choices=GT_MATCHES,
        help="a mask's true class: the instance of largest mask IoU (default) or box IoU",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.assign_to is not None:
        try:
            adopt_fitted_settings(args)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
    elif args.method is None or args.num_clusters is None:
        parser.error("--method and --num-clusters are required (or --assign-to a fitted json)")
    if args.embedding is None:
        args.embedding = "box_crop"
    if args.neighbors is None:
        args.neighbors = N_NEIGHBORS
    if args.crop_size is None:
        args.crop_size = DEFAULT_CROP_SIZE[args.method]
    if args.filter_share is None:
        args.filter_share = DEFAULT_FILTER_SHARE[args.method]
    if args.restarts is None:
        args.restarts = DEFAULT_RESTARTS[args.method]
    if args.num_clusters < 1:
        parser.error(f"--num-clusters must be >= 1, got {args.num_clusters}")
    if not 0.0 <= args.filter_share < 1.0:
        parser.error(f"--filter-share must be in [0, 1), got {args.filter_share}")
    if args.crop_size < 0 or min(args.restarts, args.neighbors, args.batch_size or 1) < 1:
        parser.error("--crop-size must be >= 0, --restarts, --neighbors and --batch-size >= 1")
    if args.embedding in IMAGE_EMBEDDINGS and args.config_file is None:
        parser.error(f"--embedding {args.embedding} needs --config-file (the extractor's config)")
    if args.opts and args.config_file is None:
        parser.error("KEY VALUE overrides need --config-file")
    return args


FITTED_SETTINGS = ("method", "num_clusters", "embedding", "crop_size", "neighbors")


def adopt_fitted_settings(args: argparse.Namespace) -> None:
    """Fill the clustering settings (and a missing --config-file) from ``--assign-to``'s file;
    a conflicting option is an error naming both values."""
    fitted = read_json(args.assign_to, "--assign-to json").get("info", {}).get("pseudo_classes")
    if not fitted:
        raise ValueError(
            f"--assign-to {args.assign_to}: it has no info.pseudo_classes (it was not written "
            "by tools/cluster_pseudo_classes.py)"
        )
    for key in FITTED_SETTINGS:
        given, value = getattr(args, key), fitted.get(key)
        if value is None:
            continue
        if given is not None and given != value:
            option = "--" + key.replace("_", "-")
            raise ValueError(
                f"{option} {given} differs from {args.assign_to}'s {key} = {value!r}, which "
                "its pseudo-classes were fitted with"
            )
        setattr(args, key, value)
    if args.config_file is None:  # the same extractor, unless the caller names another config
        args.config_file = fitted.get("config_file")


def fitted_embeddings(fitted_json: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Embeddings and cluster ids of the masks an earlier run kept, and its settings."""
    fitted = read_json(fitted_json, "--assign-to json")
    settings = fitted["info"]["pseudo_classes"]
    annotations = fitted["annotations"]
    if not annotations:
        raise ValueError(f"--assign-to {fitted_json}: it has no masks to assign to")
    labels = np.array([a["category_id"] - 1 for a in annotations])
    if settings["embedding"] == "stored":
        return stored_embeddings(fitted_json, annotations), labels, settings
    store = cache_path(fitted_json)
    if not store.is_file():
        raise FileNotFoundError(
            f"{store}: the embeddings of {fitted_json}'s masks are missing (rerun its clustering)"
        )
    with np.load(store) as cached:
        rows = {key: row for row, key in enumerate(cached["annotation_ids"].tolist())}
        missing = [a["id"] for a in annotations if a["id"] not in rows]
        if missing:
            raise ValueError(
                f"{store} lacks the embeddings of masks {missing[:5]} of {fitted_json}"
            )
        embeddings = cached["embeddings"][[rows[a["id"]] for a in annotations]]
    return embeddings, labels, settings


def region_embeddings(
    args: argparse.Namespace, coco: dict[str, Any], cfg, device: torch.device
) -> tuple[np.ndarray, dict[str, Any]]:
    """(N, D) embeddings of the annotations in file order, and their provenance."""
    annotations = coco["annotations"]
    if args.embedding == "stored":
        return stored_embeddings(args.pseudo_labels, annotations), {"embedding": "stored"}
    image_root = args.images or coco.get("info", {}).get("image_root")
    if image_root is None:
        raise ValueError(
            f"--embedding {args.embedding} reads images: give --images ({args.pseudo_labels} "
            "records no info.image_root)"
        )
    p = cfg.PROPOSALS
    extractor = build_feature_extractor(p.EXTRACTOR, short_side=0, max_side=0, amp=p.AMP)
    provenance = {
        "embedding": args.embedding,
        "images": image_root,
        "crop_size": args.crop_size,
        "config_file": args.config_file,
        "extractor": extractor.describe(),
        "amp": extractor.amp,
    }
    cache = EmbeddingCache(
        cache_path(args.output), {**provenance, "input_sha256": file_sha256(args.pseudo_labels)}
    )
    ids = np.array([a["id"] for a in annotations])
    cached = cache.load(ids)
    if cached is not None:
        logger.info("embeddings read from %s", cache.path)
        return cached, provenance
    groups = list(iter_image_groups(coco["images"], annotations))
    rows = image_embeddings(
        extractor.to(device),
        [str(Path(image_root) / image["file_name"]) for image, _ in groups],
        [[annotations[i] for i in positions] for _, positions in groups],
        args.embedding,
        args.crop_size,
        args.batch_size or p.BATCH_SIZE,
        p.NUM_WORKERS,
    )
    embeddings = np.empty_like(rows)
    embeddings[np.concatenate([positions for _, positions in groups])] = rows
    cache.save(ids, embeddings)
    return embeddings, provenance


def evaluate(
    args: argparse.Namespace, coco: dict[str, Any], labels: np.ndarray, keep: np.ndarray
) -> dict[str, Any]:
    """Region-level scores of every clustered mask and of those the filter kept."""
    gt = read_json(args.gt, "ground-truth json")
    classes, names = region_classes(coco["images"], coco["annotations"], gt, args.gt_match)
    return {
        "gt": args.gt,
        "gt_match": args.gt_match,
        "classes": names,
        "masks_without_class": int((classes < 0).sum()),
        "all": region_scores(labels, classes, args.num_clusters, names),
        "kept": region_scores(labels[keep], classes[keep], args.num_clusters, names),
    }


def metrics_path(output_json: str | Path) -> Path:
    path = Path(output_json)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + ".metrics.json")


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = [f"{'masks':<8}{'count':>8}{'accuracy':>10}{'NMI':>8}{'ARI':>8}"]
    for part in ("all", "kept"):
        m = metrics[part]
        lines.append(
            f"{part:<8}{m['masks_with_class']:>8}{100 * m['accuracy']:>10.1f}"
            f"{100 * m['nmi']:>8.1f}{100 * m['ari']:>8.1f}"
        )
    lines.append(f"{metrics['masks_without_class']} masks overlap no ground-truth instance")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    coco = read_json(args.pseudo_labels, "pseudo-label json")
    if not coco.get("annotations"):
        raise ValueError(f"{args.pseudo_labels} has no masks ('annotations') to cluster")
    count = len(coco["annotations"])
    if args.assign_to is None and args.num_clusters > count:
        raise ValueError(
            f"--num-clusters {args.num_clusters} is larger than the number of masks, {count}, "
            f"in {args.pseudo_labels}"
        )
    cfg = load_config(args.config_file, args.opts) if args.config_file else None
    device = torch.device("cuda" if cfg is not None and uses_cuda(cfg) else "cpu")
    embeddings, provenance = region_embeddings(args, coco, cfg, device)
    if args.assign_to is None:
        labels, distances, keep, settings = cluster_masks(args, embeddings, device)
    else:
        labels, distances, settings = assign_masks(args, embeddings, provenance)
        keep = np.ones(count, dtype=bool)
    settings = {
        **provenance,
        **settings,
        "method": args.method,
        "neighbors": args.neighbors if args.method == "spectral" else None,
        "seed": args.seed,
        "source": args.pseudo_labels,
    }
    labelled = with_pseudo_classes(coco, labels, distances, keep, args.num_clusters, settings)
    write_pseudo_class_file(labelled, args.pseudo_labels, args.output)
    summary = labelled["info"]["pseudo_classes"]
    print(
        f"wrote {args.output}: {int(keep.sum())} of {count} masks in {args.num_clusters} "
        f"pseudo-classes (sizes after the filter {summary['kept_sizes']}), "
        f"{len(summary['dropped_images'])} images dropped"
    )
    if args.gt is None:
        return None
    metrics = evaluate(args, coco, labels, keep)
    atomic_write_json(metrics_path(args.output), metrics, indent=2)
    print(format_metrics(metrics))
    print(f"wrote {metrics_path(args.output)}")
    return metrics


def cluster_masks(
    args: argparse.Namespace, embeddings: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Labels, centre distances and the filter's keep mask of a new clustering."""
    result = cluster(
        embeddings,
        args.method,
        args.num_clusters,
        args.seed,
        restarts=args.restarts,
        n_neighbors=args.neighbors,
        device=device,
    )
    distances = centre_distances(result.space, result.labels, args.num_clusters)
    keep = outlier_filter(distances, result.labels, args.filter_share)
    empty = np.flatnonzero(result.cluster_sizes == 0).tolist()
    if empty:
        logger.warning(
            "%d of %d clusters are empty (%s): fewer distinct embeddings than clusters; their "
            "categories stay in the file with no mask",
            len(empty),
            args.num_clusters,
            ", ".join(f"cluster_{c}" for c in empty),
        )
    settings = {
        "restarts": args.restarts,
        "filter_share": args.filter_share,
        "empty_clusters": empty,
    }
    return result.labels, distances, keep, settings


def assign_masks(
    args: argparse.Namespace, embeddings: np.ndarray, provenance: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Labels and centre distances under ``--assign-to``'s pseudo-classes."""
    reference, reference_labels, fitted = fitted_embeddings(args.assign_to)
    for key in ("embedding", "crop_size", "extractor", "amp"):
        if key in provenance and fitted.get(key) != provenance[key]:
            raise ValueError(
                f"the masks' embedding {key} {provenance[key]!r} differs from "
                f"{fitted.get(key)!r}, which {args.assign_to} was clustered with"
            )
    labels, distances = assign_to_clusters(
        reference, reference_labels, embeddings, args.method, args.num_clusters, args.neighbors
    )
    return labels, distances, {"assigned_to": args.assign_to, "filter_share": 0.0}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, KeyError, ValueError) as err:  # BadImageError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
