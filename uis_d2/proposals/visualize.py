"""PNG grids for inspecting proposals, in the spirit of the paper's figures 1-3.

One grid per image: the image, every 2-D map the generator left in ``Proposals.debug`` (per-k
label maps colour-coded, the saliency map as a heat map), and the kept proposals overlaid.
The debug dict is free-form, so anything that is not a 2-D map (or a stack / dict / list of
them) is left out instead of failing: a generator that records nothing still gets the image and
the overlay.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from uis_d2.proposals.base import Proposals
from uis_d2.proposals.writer import to_numpy
from uis_d2.utils.files import atomic_write_bytes

MAX_DEBUG_PANELS = 14  # 2+3+4+5 per-k maps plus the saliency map fit; more gets unreadable
PANEL_INCHES = 3.0
OVERLAY_ALPHA = 0.55


def save_proposal_grid(path: Path, image: np.ndarray, proposals: Proposals, title: str) -> None:
    """Write the grid of one image (``image``: H x W x 3 uint8 RGB) as a PNG, atomically."""
    masks = to_numpy(proposals.masks).astype(bool)
    panels: list[tuple[str, np.ndarray]] = [("image", image)]
    panels += list(_debug_maps(proposals.debug))[:MAX_DEBUG_PANELS]
    panels.append((f"kept proposals ({len(masks)})", overlay_masks(image, masks)))

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    figure = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    height, width = image.shape[:2]
    for i, (name, panel) in enumerate(panels):
        axis = figure.add_subplot(rows, cols, i + 1)
        if panel.ndim == 2 and np.issubdtype(panel.dtype, np.integer):
            panel = panel % 10
        # Maps at feature resolution are stretched over the image extent, pixels kept square.
        axis.imshow(panel, extent=(0, width, height, 0), interpolation="nearest", **_style(panel))
        axis.set_title(name, fontsize=9)
        axis.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())


def overlay_masks(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Blend one colour per mask into the image, largest first so small masks stay visible."""
    out = image.astype(np.float32)
    colours = colormaps["tab10"].colors
    for rank, i in enumerate(np.argsort([-m.sum() for m in masks], kind="stable")):
        colour = 255.0 * np.asarray(colours[rank % len(colours)])
        out[masks[i]] = (1 - OVERLAY_ALPHA) * out[masks[i]] + OVERLAY_ALPHA * colour
    return out.round().astype(np.uint8)


def _style(panel: np.ndarray) -> dict[str, Any]:
    if panel.ndim == 3:
        return {}
    if panel.dtype == bool:
        return {"cmap": "gray", "vmin": 0, "vmax": 1}
    if np.issubdtype(panel.dtype, np.integer):  # cluster labels, colours cycle every 10
        return {"cmap": "tab10", "vmin": 0, "vmax": 9}
    return {"cmap": "viridis"}


def _debug_maps(debug: Any, name: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """(title, 2-D map) for every map found in the debug dict, in its order."""
    if isinstance(debug, dict):
        for key, value in debug.items():
            yield from _debug_maps(value, f"{name} {key}".strip())
        return
    if isinstance(debug, (list, tuple)):
        for i, value in enumerate(debug):
            yield from _debug_maps(value, f"{name}[{i}]")
        return
    try:
        array = to_numpy(debug)
    except (TypeError, ValueError):
        return
    if array.ndim == 2 and array.size > 1 and array.dtype != object:
        yield name, array
    elif array.ndim == 3 and array.dtype != object:
        for i, plane in enumerate(array):
            yield f"{name}[{i}]", plane
