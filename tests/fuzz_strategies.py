"""Hypothesis settings and mask strategies shared by the tests/test_fuzz_*.py files."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

# Deterministic (derandomized, no example database) and small enough for a few seconds per file.
FUZZ = settings(derandomize=True, max_examples=40, deadline=None, database=None)
sides = st.integers(min_value=1, max_value=24)


@st.composite
def masks(
    draw, height: int | None = None, width: int | None = None, nonempty: bool = False
) -> np.ndarray:
    """A bool mask of random size: empty, full, a rectangle or arbitrary pixels.

    ``nonempty``: at least one pixel set (hypothesis favours all-False arrays when shrinking).
    """
    h = height if height is not None else draw(sides)
    w = width if width is not None else draw(sides)
    kinds = (
        ["full", "rectangle", "pixels"] if nonempty else ["empty", "full", "rectangle", "pixels"]
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "pixels":
        mask = draw(arrays(np.bool_, (h, w)))
    else:
        mask = np.full((h, w), kind == "full")
    if kind == "rectangle":
        y0, y1 = sorted(draw(st.integers(0, h)) for _ in range(2))
        x0, x1 = sorted(draw(st.integers(0, w)) for _ in range(2))
        mask[y0:y1, x0:x1] = True
    if nonempty:
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return mask


@st.composite
def mask_stacks(draw, min_size: int = 1, max_size: int = 6, nonempty: bool = False) -> np.ndarray:
    """(N, H, W) masks sharing one random size."""
    h, w = draw(sides), draw(sides)
    stack = draw(st.lists(masks(h, w, nonempty), min_size=min_size, max_size=max_size))
    return np.stack(stack) if stack else np.zeros((0, h, w), dtype=bool)
