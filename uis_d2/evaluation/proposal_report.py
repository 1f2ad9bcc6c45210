"""Several sets of mask proposals side by side: recall by instance count (Engstler et al. 2023,
Table 1) and class-agnostic COCO mask AP/AR (the metrics of their Table 2).

tools/analyze_proposals.py (given files) and tools/compare_features.py (one set per feature
config) both report through these functions, so their tables, CSV columns and json agree.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uis_d2.evaluation.coco_agnostic import (
    METRIC_KEYS,
    GroundTruth,
    evaluate_agnostic,
    load_ground_truth,
    load_predictions,
)
from uis_d2.evaluation.recall_by_count import (
    ALL_LABEL,
    BUCKET_LABELS,
    RecallByCount,
    recall_by_instance_count,
)

MATCHING = (
    "per image, class-agnostic one-to-one matching greedy by mask IoU over all proposals "
    "(no maxDets cap, scores unused); recall pooled over instances, averaged over IoU 0.5:0.95; "
    "crowd annotations left out"
)
LABELS = (*BUCKET_LABELS, ALL_LABEL)


def set_names(names: Sequence[str] | None, paths: Sequence[str], what: str) -> list[str]:
    """One unique display name per path (default: the file stems), or a ValueError saying why
    not; rows, CSV lines and chart legends are keyed by them."""
    names = list(names or [Path(p).stem for p in paths])
    if len(names) != len(paths):
        raise ValueError(f"--names gives {len(names)} names for {len(paths)} {what}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, got {names}; pass --names")
    return names


@dataclass(frozen=True)
class ProposalQuality:
    """One proposal set: its file, its recall by instance count, its COCO mask metrics (%)."""

    file: str
    recall: RecallByCount
    segm: dict[str, float]


def evaluate_proposal_sets(
    gt: GroundTruth, files: Mapping[str, str | Path], backend: str = "pycocotools"
) -> dict[str, ProposalQuality]:
    """Both analyses of every named proposals file against one ground truth (read once)."""
    gt_dataset = load_ground_truth(gt)
    qualities = {}
    for name, path in files.items():
        proposals = load_predictions(path)
        segm = evaluate_agnostic(gt_dataset, proposals, ("segm",), backend=backend)["segm"]
        qualities[name] = ProposalQuality(
            str(path), recall_by_instance_count(gt_dataset, proposals), segm
        )
    return qualities


def format_table(qualities: Mapping[str, ProposalQuality], metrics: Sequence[str]) -> str:
    """One row per set: average recall per bucket, then the chosen COCO ``metrics``."""
    width = max(14, *(len(name) + 2 for name in qualities))
    counts = next(iter(qualities.values())).recall.num_instances
    lines = [
        f"{'AR (%)':<{width}}" + "".join(f"{c:>8}" for c in (*LABELS, *metrics)),
        f"{'GT instances':<{width}}" + "".join(f"{counts[label]:>8}" for label in LABELS),
    ]
    for name, quality in qualities.items():
        recalls = "".join(f"{quality.recall.average_recall[label]:>8.1f}" for label in LABELS)
        values = "".join(f"{quality.segm[key]:>8.1f}" for key in metrics)
        lines.append(f"{name:<{width}}" + recalls + values)
    return "\n".join(lines)


def csv_bytes(qualities: Mapping[str, ProposalQuality]) -> bytes:
    """One row per set: file, proposal count, recall and instances per bucket, every metric."""
    header = ["name", "file", "num_proposals"]
    header += [f"AR_{label}" for label in LABELS] + [f"instances_{label}" for label in LABELS]
    header += [f"segm_{key}" for key in METRIC_KEYS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for name, quality in qualities.items():
        recall = quality.recall
        writer.writerow(
            [name, quality.file, recall.num_proposals]
            + [f"{recall.average_recall[label]:.4f}" for label in LABELS]
            + [recall.num_instances[label] for label in LABELS]
            + [f"{quality.segm[key]:.4f}" for key in METRIC_KEYS]
        )
    return buffer.getvalue().encode("utf-8")


def report(qualities: Mapping[str, ProposalQuality], **context: Any) -> dict[str, Any]:
    """The json report: ``context`` (where the ground truth came from...) first, then the
    matching rule, the bucket sizes and every set's figures."""
    return {
        **context,
        "matching": MATCHING,
        "buckets": list(LABELS),
        "num_instances": next(iter(qualities.values())).recall.num_instances,
        "proposals": {
            name: {"file": q.file, "recall_by_count": q.recall.to_dict(), "coco_segm": q.segm}
            for name, q in qualities.items()
        },
    }
