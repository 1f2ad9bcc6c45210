"""A PNG grid of foreground maps side by side: one row per image, the image first, then the
ground-truth union and each provider's map (tools/evaluate_foreground.py)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from uis_d2.utils.files import atomic_write_bytes

PANEL_INCHES = 2.2


def save_foreground_grid(
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray]]], path: str | Path
) -> None:
    """``rows``: (title, H x W x 3 uint8 image, {panel title: H x W bool map}) per image, every
    row with the same number of maps; written atomically as a PNG (white = foreground)."""
    if not rows:
        raise ValueError("save_foreground_grid needs at least one image")
    cols = 1 + len(rows[0][2])
    figure = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    for r, (title, image, maps) in enumerate(rows):
        panels = [(title, image), *maps.items()]
        for c, (name, panel) in enumerate(panels):
            axis = figure.add_subplot(len(rows), cols, r * cols + c + 1)
            if panel.ndim == 2:
                axis.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                axis.imshow(panel)
            axis.set_title(name, fontsize=8)
            axis.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())
