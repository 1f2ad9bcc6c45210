"""Dense tokens of a whole dataset at one fixed square size, for dataset-level evaluations.

Leopart evaluates features (overclustering, linear probe; SEED_SYSTEMS.md 3.7) on every image
resized to 448 x 448 with the aspect ratio NOT kept, so that all token grids have the same
shape and stack into one tensor. ``preprocess`` keeps the aspect ratio (the proposals need the
masks to map back to the image), so this module resizes itself: bilinear with antialiasing on
[0, 1] floats, as ``preprocess`` does, then the extractor's own normalisation.

Extractors without patch tokens (``ResNetDense``) get their features as "patch_tokens": the
dense map they would hand any consumer, so they can be evaluated by the same protocols.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from uis_d2.data.image_io import BAD_IMAGE_POLICIES, BadImageError, read_image
from uis_d2.features.base import FeatureExtractor
from uis_d2.utils.files import atomic_output

logger = logging.getLogger(__name__)

PATCH_TOKENS = "patch_tokens"
PART_SIZE = 500  # images per cached part: 0.6 GB of ViT-S/16 tokens at 448 x 448 (ViT-B/8: 5)


@dataclass
class DenseTokens:
    """The tokens of the readable images of a dataset, stacked in the records' order."""

    file_names: list[str]  # images kept, in order (row i of every token tensor)
    skipped: list[str]  # unreadable images left out (bad-image policy "skip")
    # name -> (N, ...) float32 CPU tensor, e.g. "patch_tokens" (N, D, h, w); (0,) when N = 0
    tokens: dict[str, torch.Tensor]


def collect_dense_tokens(
    extractor: FeatureExtractor,
    records: Sequence[Mapping[str, Any]],
    size: int,
    names: Iterable[str] = (PATCH_TOKENS,),
    batch_size: int = 8,
    bad_image_policy: str = "skip",
) -> DenseTokens:
    """Run ``extractor`` on every record's ``file_name`` resized to ``size`` x ``size`` and
    return the tokens ``names`` (``TOKEN_NAMES``). ``bad_image_policy`` (INPUT.BAD_IMAGE_POLICY):
    "skip" logs an unreadable image and lists it in ``skipped``, "fail" raises its
    ``BadImageError`` (which names the file)."""
    names = sorted(set(names))
    _check_arguments(extractor, size, names, batch_size, bad_image_policy)
    fallback = PATCH_TOKENS in names and PATCH_TOKENS not in extractor.provided_tokens
    extractor.request_tokens(set(names) - {PATCH_TOKENS} if fallback else names)
    kept: list[str] = []
    skipped: list[str] = []
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    progress = tqdm(total=len(records), desc=f"dense tokens at {size} x {size}", unit="img")
    with torch.inference_mode(), progress:
        for files, pixels in _batches(records, size, batch_size, bad_image_policy, skipped):
            output = extractor(extractor.normalise(pixels))
            if fallback:
                output.tokens[PATCH_TOKENS] = output.features
            for name in names:
                chunks[name].append(output.tokens[name].cpu())
            kept += files
            progress.update(len(kept) + len(skipped) - progress.n)
        progress.update(len(records) - progress.n)  # skipped images after the last batch
    tokens = {n: torch.cat(c) if c else torch.empty(0) for n, c in chunks.items()}
    return DenseTokens(kept, skipped, tokens)


def cached_dense_tokens(
    extractor: FeatureExtractor,
    records: Sequence[Mapping[str, Any]],
    size: int,
    cache_dir: str | Path,
    names: Iterable[str] = (PATCH_TOKENS,),
    batch_size: int = 8,
    bad_image_policy: str = "skip",
    part_size: int = PART_SIZE,
) -> DenseTokens:
    """``collect_dense_tokens`` by parts of ``part_size`` records, each saved to ``cache_dir``
    once collected and read back instead of recomputed: a killed run loses one part at most.
    ``cache_dir`` must be specific to everything the tokens depend on (extractor, weights,
    records, size, names), which the caller knows; this only checks the part's file names."""
    cache_dir, names = Path(cache_dir), tuple(names)
    parts = []
    for index, start in enumerate(range(0, len(records), part_size)):
        path = cache_dir / f"tokens_{index:05d}.pt"
        chunk = records[start : start + part_size]
        if path.is_file():
            part = DenseTokens(**torch.load(path, weights_only=True))
            expected, skipped = [str(r["file_name"]) for r in chunk], set(part.skipped)
            if part.file_names != [f for f in expected if f not in skipped] or not (
                skipped <= set(expected)
            ):
                raise ValueError(f"{path} holds the tokens of other images; delete {cache_dir}")
        else:
            part = collect_dense_tokens(extractor, chunk, size, names, batch_size, bad_image_policy)
            with atomic_output(path) as f:
                torch.save(vars(part), f)
        parts.append(part)
    return _concatenate(parts, names)


def _concatenate(parts: Sequence[DenseTokens], names: Iterable[str]) -> DenseTokens:
    full = [part for part in parts if part.file_names]
    return DenseTokens(
        file_names=[f for part in parts for f in part.file_names],
        skipped=[f for part in parts for f in part.skipped],
        tokens={
            n: torch.cat([p.tokens[n] for p in full]) if full else torch.empty(0) for n in names
        },
    )


def _check_arguments(
    extractor: FeatureExtractor, size: int, names: list[str], batch_size: int, policy: str
) -> None:
    if size < 1 or size % extractor.stride:
        raise ValueError(
            f"input size {size} (size x size) must be a positive multiple of the stride "
            f"{extractor.stride} of extractor {extractor.name}"
        )
    if not names:
        raise ValueError("collect_dense_tokens needs at least one token name")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_image_policy {policy!r}: must be one of {BAD_IMAGE_POLICIES}")


def _batches(
    records: Sequence[Mapping[str, Any]],
    size: int,
    batch_size: int,
    policy: str,
    skipped: list[str],
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(file names, (B, 3, size, size) RGB in [0, 1]) of the readable images; unreadable ones
    are appended to ``skipped`` (policy "skip") or raised."""
    files: list[str] = []
    images: list[torch.Tensor] = []
    for record in records:
        file_name = str(record["file_name"])
        try:
            pixels = read_image(file_name, fmt="RGB")
        except BadImageError as err:
            if policy == "fail":
                raise
            logger.warning("skipping unreadable image %s: %s", file_name, err.reason)
            skipped.append(file_name)
            continue
        files.append(file_name)
        images.append(square_resize(pixels, size))
        if len(files) == batch_size:
            yield files, torch.stack(images)
            files, images = [], []
    if files:
        yield files, torch.stack(images)


def square_resize(pixels: np.ndarray, size: int) -> torch.Tensor:
    """``read_image``'s H x W x 3 uint8 -> float (3, size, size) in [0, 1], aspect ratio not
    kept (Leopart)."""
    x = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0) / 255.0
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]


__all__ = [
    "PART_SIZE",
    "PATCH_TOKENS",
    "DenseTokens",
    "cached_dense_tokens",
    "collect_dense_tokens",
    "square_resize",
]


def token_matrix(tokens: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) token maps -> (N * h * w, D) rows, image-major then raster order."""
    if tokens.ndim != 4:
        raise ValueError(f"token maps must be (N, D, h, w), got shape {tuple(tokens.shape)}")
    return tokens.permute(0, 2, 3, 1).reshape(-1, tokens.shape[1])


# Tokens per matrix product in ``standardised_pca``: bounded memory on millions of tokens.
_PCA_CHUNK_ROWS = 1 << 16


def standardised_pca(points: torch.Tensor, dim: int) -> tuple[torch.Tensor, float]:
    """(n, D) tokens -> (n, d) float32 coordinates on the d leading principal axes of the tokens
    standardised per dimension (a constant dimension is only centred), and the share of the
    variance they keep (Leopart's evaluation and CBFE). ``dim`` above D is clipped to D with a
    warning: the protocol's 50 exceeds the width of small extractors (PatchStats). The
    covariance is accumulated in float64 by chunks and the projection folded into one product,
    so millions of tokens cost no float64 or standardised copy."""
    if dim < 1:
        raise ValueError(f"PCA dimension must be >= 1, got {dim}")
    n, width = points.shape
    if dim > width:
        logger.warning("PCA to %d dimensions clipped to the feature dimension %d", dim, width)
        dim = width
    gram = torch.zeros(width, width, dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    for chunk in points.split(_PCA_CHUNK_ROWS):
        chunk = chunk.double()
        gram += chunk.T @ chunk
        total += chunk.sum(0)
    mean = total / n
    covariance = gram / n - torch.outer(mean, mean)
    std = covariance.diagonal().clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    values, vectors = torch.linalg.eigh(covariance / torch.outer(std, std))  # ascending
    kept = values[-dim:].clamp_min(0).sum() / values.clamp_min(0).sum().clamp_min(1e-12)
    axes = vectors[:, -dim:].flip(1) / std[:, None]
    offset = mean @ axes
    chunks = [(c.double() @ axes - offset).float() for c in points.split(_PCA_CHUNK_ROWS)]
    return torch.cat(chunks), float(kept)
