"""Grouped bar chart of recall by instance count, one bar group per bucket (paper's Table 1)."""

from __future__ import annotations

import io
from collections.abc import Mapping
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
    labels = [*BUCKET_LABELS, ALL_LABEL]
    counts = next(iter(results.values())).num_instances
    x = np.arange(len(labels))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels)), 4.0))
    for i, (name, result) in enumerate(results.items()):
        heights = [result.average_recall[label] for label in labels]
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(heights), width, label=name)
    ax.set_xticks(x, [f"{label}\n(n={counts[label]})" for label in labels])
    ax.set_xlabel("instances of the same category in the image")
    ax.set_ylabel("average recall, IoU 0.5:0.95 (%)")
    ax.set_title("Proposal recall by instance count")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
