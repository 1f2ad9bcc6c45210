"""Training-loss curves from detectron2's metrics.json (one json object per logged iteration)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_loss_history(metrics_json: Path) -> dict[str, list[tuple[int, float]]]:
    """Every ``loss*`` series as (iteration, value) pairs; evaluation lines carry none."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in Path(metrics_json).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "iteration" not in record:
            continue
        for key, value in record.items():
            if key.startswith("loss") or key == "total_loss":
                series.setdefault(key, []).append((record["iteration"], float(value)))
    return series


def plot_loss_curves(metrics_json: Path, out_png: Path, title: str = "training losses") -> Path:
    """One line per loss term, log scale, so a term that stalls stands out."""
    series = read_loss_history(metrics_json)
    if not series:
        raise ValueError(f"{metrics_json}: no loss values logged")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key in sorted(series):
        its, values = zip(*series[key])
        ax.plot(its, values, label=key, linewidth=2 if key == "total_loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
