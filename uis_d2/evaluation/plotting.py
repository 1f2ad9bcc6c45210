"""Grouped bar charts of proposal quality: recall by instance count, one bar group per bucket
(paper's Table 1), optionally beside the COCO AP/AR of the same sets (their Table 2's metrics)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training servers
import matplotlib.pyplot as plt
import numpy as np

from uis_d2.evaluation.recall_by_count import ALL_LABEL, BUCKET_LABELS, RecallByCount
from uis_d2.utils.files import atomic_write_bytes


def plot_recall_by_count(results: Mapping[str, RecallByCount], path: str | Path) -> None:
    """Bars of average recall per bucket, proposal sets side by side, written as a PNG."""
    if not results:
        raise ValueError("plot_recall_by_count needs at least one set of results")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * (len(BUCKET_LABELS) + 1)), 4.0))
    _recall_bars(ax, results)
    _save(fig, path)


def plot_proposal_comparison(
    results: Mapping[str, RecallByCount],
    metrics: Mapping[str, Mapping[str, float]],
    keys: Sequence[str],
    path: str | Path,
) -> None:
    """One PNG of two panels: recall by instance count, and the COCO ``metrics`` named by
    ``keys`` (%), one bar per proposal set in each."""
    if not results:
        raise ValueError("plot_proposal_comparison needs at least one set of results")
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(max(11.0, 1.2 * (len(BUCKET_LABELS) + 1 + len(keys))), 4.0)
    )
    _recall_bars(left, results)
    _grouped_bars(right, {name: [metrics[name][k] for k in keys] for name in results}, keys)
    right.set_xlabel("class-agnostic COCO mask metric (100 proposals per image by score)")
    right.set_ylabel("%")
    right.set_title("Proposal AP / AR")
    _save(fig, path)


def _recall_bars(ax: plt.Axes, results: Mapping[str, RecallByCount]) -> None:
    labels = [*BUCKET_LABELS, ALL_LABEL]
    counts = next(iter(results.values())).num_instances
    heights = {name: [r.average_recall[label] for label in labels] for name, r in results.items()}
    _grouped_bars(ax, heights, [f"{label}\n(n={counts[label]})" for label in labels])
    ax.set_xlabel("instances of the same category in the image")
    ax.set_ylabel("average recall, IoU 0.5:0.95 (%)")
    ax.set_title("Proposal recall by instance count")


def _grouped_bars(
    ax: plt.Axes, heights: Mapping[str, Sequence[float]], ticks: Sequence[str]
) -> None:
    """One group of bars per tick, one bar per set (NaN, an empty bucket, drawn as 0)."""
    x = np.arange(len(ticks))
    width = 0.8 / len(heights)
    for i, (name, values) in enumerate(heights.items()):
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(values), width, label=name)
    ax.set_xticks(x, ticks)
    ax.legend()


def _save(fig: plt.Figure, path: str | Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
