"""Fully connected CRF (Krähenbühl & Koltun 2011) over binary masks, as CutLER's MaskCut uses it.

Each mask is one two-label CRF on its image. Energy: a unary from the coarse mask plus a Potts
pairwise term with two Gaussian kernels, a smoothness kernel over position (x, y) and an
appearance kernel over position and colour (x, y, r, g, b), each divided by its standard
deviation (``*_sxy`` in pixels, ``srgb`` in 0-255 units). The unary is MaskCut's: the softmax of
the one-hot (background, foreground) map, probabilities 0.27 / 0.73, i.e. a foreground logit of
+1 inside the mask and -1 outside. Inference is ``iters`` mean-field updates, each kernel
normalised symmetrically, ``D^-1/2 K D^-1/2`` with ``D = diag(K 1)`` (densecrf's default), the
label = the larger marginal.

Two backends compute it:

- ``"torch"`` (no extra package; CPU or GPU; all masks of an image in one batch). The
  smoothness kernel is exact (separable: two dense matrix products). The appearance kernel
  (230k x 230k entries at 480 x 480) is approximated on a sparse grid in the 5-D feature space:
  each pixel is splatted multilinearly onto the 2^5 = 32 corners of its grid cell, the occupied
  cells are blurred with [1, 2, 1] / 4 along each axis in turn, and each pixel reads back
  (slices) multilinearly from its 32 corners. The cell side is sqrt(6/5) standard deviations,
  so the composed kernel (tent 1/6 + blur 1/2 + tent 1/6 = 5/6 cell^2 per axis) has the
  Gaussian's variance; its shape is a piecewise polynomial, not a Gaussian, and what the blur
  would put into unoccupied cells is lost (the permutohedral lattice of densecrf makes the
  same cut). Deterministic: cells are found by a stable sort, and splat, blur and slice are
  products of a CSR matrix (never transposed) with a dense one, summed row by row in a fixed
  order on the CPU; cuSPARSE documents run-to-run differences of such products only for a
  transposed sparse operand (not run on a GPU here). Memory and time grow
  with the pixels times 32: at 480 x 480 on one CPU thread about 0.4 GB and 1.0 s per image
  (building the grid) plus 0.09 s per mask, against 0.32 s per mask for ``pydensecrf``
  (benchmarks/bench_refine.py; their masks agree at mean IoU 0.997).
- ``"pydensecrf"``: the reference C++ code (Krähenbühl's permutohedral lattice) through the
  optional ``pydensecrf2`` package (``pip install -e .[crf]``); CPU, one mask at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

CRF_BACKENDS = ("torch", "pydensecrf")
# Cell side of the appearance grid in standard deviations: 5/6 cell^2 of variance per axis.
_CELL = math.sqrt(6.0 / 5.0)


@dataclass(frozen=True)
class CRFParams:
    """Constants of the CRF (see ``PROPOSALS.REFINE`` in config/defaults.py)."""

    iters: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


class MissingCRFPackageError(ImportError):
    """The ``pydensecrf`` backend was asked for without its optional package."""


def dense_crf(
    image: torch.Tensor, masks: torch.Tensor, params: CRFParams, backend: str = "torch"
) -> torch.Tensor:
    """MAP labels of the CRF of each mask: ``image`` (3, H, W) RGB in [0, 255], ``masks``
    (M, H, W) bool -> (M, H, W) bool on the masks' device."""
    if backend == "torch":
        return _dense_crf_torch(image.float(), masks, params)
    if backend == "pydensecrf":
        return _dense_crf_pydensecrf(image, masks, params)
    raise ValueError(f"unknown CRF backend {backend!r}; known: {list(CRF_BACKENDS)}")


def require_pydensecrf() -> ModuleType:
    """The pydensecrf module, or an error telling which extra installs it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise MissingCRFPackageError(
            "PROPOSALS.REFINE.BACKEND 'pydensecrf' needs the optional package pydensecrf2: "
            "install it with `pip install -e .[crf]` (or use BACKEND 'torch', which needs "
            "nothing extra)"
        ) from err
    return dcrf


def _potts_kernels(
    image: torch.Tensor, params: CRFParams
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The normalised smoothness and appearance kernels of ``image`` (3, H, W), applied to
    (L, H, W) maps."""
    height, width = image.shape[1:]
    ones = torch.ones(1, height, width, device=image.device)
    smooth = _normalised(_GaussianBlur2d(params.gaussian_sxy, (height, width), image.device), ones)
    rows, cols = torch.meshgrid(
        torch.arange(height, device=image.device, dtype=torch.float32),
        torch.arange(width, device=image.device, dtype=torch.float32),
        indexing="ij",
    )
    features = torch.cat(
        [
            torch.stack([cols, rows]).flatten(1) / params.bilateral_sxy,
            image.reshape(3, -1) / params.bilateral_srgb,
        ]
    ).T
    return smooth, _normalised(_SparseGridFilter(features), ones)


def dense_crf_labels(
    image: torch.Tensor, probabilities: torch.Tensor, params: CRFParams
) -> torch.Tensor:
    """MAP label per pixel of the multi-label Potts CRF whose unary is ``-log probabilities``
    (L, H, W) (a segmenter's softmax, MaskDistill's CRF rounds); ``image`` (3, H, W) RGB in
    [0, 255]. Mean field: ``q = softmax(log p + sum_k compat_k K_k q)``, the two-label case of
    which is ``dense_crf``. Torch backend only."""
    image = image.float().to(probabilities.device)
    smooth, appearance = _potts_kernels(image, params)
    unary = probabilities.float().clamp_min(1e-8).log()
    q = probabilities.float()
    for _ in range(params.iters):
        pairwise = params.gaussian_compat * smooth(q) + params.bilateral_compat * appearance(q)
        q = torch.softmax(unary + pairwise, dim=0)
    return q.argmax(dim=0)


def _dense_crf_torch(image: torch.Tensor, masks: torch.Tensor, params: CRFParams) -> torch.Tensor:
    height, width = masks.shape[1:]
    if masks.shape[0] == 0:
        return masks.clone()
    ones = torch.ones(1, height, width, device=masks.device)
    smooth, appearance = _potts_kernels(image.to(masks.device), params)
    # Potts with two labels: the foreground logit minus the background one gains
    # compat * (K q - K (1 - q)) = compat * (2 K q - K 1) from each kernel.
    bias = -params.gaussian_compat * smooth(ones) - params.bilateral_compat * appearance(ones)
    # Foreground logit of the softmax of the one-hot map, log(0.731 / 0.269): +1 in, -1 out;
    # q is the foreground marginal.
    unary = masks.float() * 2 - 1
    q = torch.sigmoid(unary)
    for _ in range(params.iters):
        pairwise = params.gaussian_compat * smooth(q) + params.bilateral_compat * appearance(q)
        q = torch.sigmoid(unary + bias + 2 * pairwise)
    return q > 0.5


class _GaussianBlur2d:
    """Exact separable Gaussian of (L, H, W) maps, zero outside the image: ``G_H X G_W``, two
    dense matrix products (on 2 CPU cores 3x faster than a 4-sigma convolution at 480 x 480)."""

    def __init__(self, sigma: float, size: tuple[int, int], device: torch.device) -> None:
        self.rows, self.cols = (_gaussian_matrix(n, sigma, device) for n in size)

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        return self.rows @ maps @ self.cols


def _gaussian_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    position = torch.arange(n, device=device, dtype=torch.float32)
    return torch.exp(-0.5 * ((position[:, None] - position[None, :]) / sigma) ** 2)


class _SparseGridFilter:
    """Approximate Gaussian filter in feature space (module docstring): (L, H, W) maps whose
    pixels have the rows of ``features`` (N, d), in units of the kernel's standard deviation."""

    def __init__(self, features: torch.Tensor) -> None:
        num, dim = features.shape
        position = features / _CELL
        base = torch.floor(position)
        frac = position - base
        base = (base - base.amin(dim=0) + 1).long()  # a free cell on each side of every axis
        extent = base.amax(dim=0) + 3
        strides = torch.cumprod(torch.cat([extent.new_ones(1), extent[:-1]]), 0)
        keys = (base * strides).sum(dim=1, keepdim=True)
        weights = features.new_ones(num, 1)
        for axis in range(dim):
            keys = torch.cat([keys, keys + strides[axis]], dim=1)
            f = frac[:, axis : axis + 1]
            weights = torch.cat([weights * (1 - f), weights * f], dim=1)
        corners = keys.shape[1]
        sorted_keys, order = torch.sort(keys.flatten(), stable=True)
        cells, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        cell_of_pair = torch.empty_like(order)
        cell_of_pair[order] = torch.repeat_interleave(
            torch.arange(len(cells), device=cells.device), counts
        )
        weights = weights.flatten()
        self.splat = _csr(
            torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            order >> dim,  # pair index // 2^dim: its pixel
            weights[order],
            (len(cells), num),
        )
        self.slice = _csr(
            torch.arange(0, num * corners + 1, corners, device=cells.device),
            cell_of_pair,
            weights,
            (num, len(cells)),
        )
        self.blurs = [_axis_blur(cells, stride) for stride in strides.tolist()]

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        shape = maps.shape
        grid = self.splat @ maps.reshape(shape[0], -1).T
        for blur in self.blurs:
            grid = blur @ grid
        return (self.slice @ grid).T.reshape(shape)


def _axis_blur(cells: torch.Tensor, stride: int) -> torch.Tensor:
    """[1, 2, 1] / 4 along one grid axis as a CSR matrix over the occupied ``cells`` (sorted
    keys); a neighbour that is not occupied is left out (its value would be 0)."""
    num = len(cells)
    own = torch.arange(num, device=cells.device)
    columns, present = [], []
    for target in (cells - stride, cells + stride):
        index = torch.searchsorted(cells, target).clamp_(max=num - 1)
        columns.append(index)
        present.append(cells[index] == target)
    # Per row: lower neighbour, the cell itself, upper neighbour (ascending columns).
    columns = torch.stack([columns[0], own, columns[1]], dim=1)
    present = torch.stack([present[0], torch.ones_like(present[0]), present[1]], dim=1)
    values = torch.tensor([0.25, 0.5, 0.25], device=cells.device).expand(num, 3)
    counts = present.sum(dim=1)
    return _csr(
        torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
        columns[present],
        values[present],
        (num, num),
    )


def _csr(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """A CSR matrix, correct by construction (no invariant checks), with int32 indices where
    they fit (int64 ones are converted on every CPU product), without torch's "beta" notice."""
    small = max(len(values), *size) < 2**31
    index_dtype = torch.int32 if small else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            rows.to(index_dtype),
            cols.to(index_dtype),
            values,
            size=size,
            check_invariants=False,
        )


def _normalised(
    kernel: Callable[[torch.Tensor], torch.Tensor], ones: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> D^-1/2 K D^-1/2 x`` with ``D = diag(K 1)``; ``ones`` (1, H, W)."""
    norm = kernel(ones).clamp_min(1e-20).rsqrt()
    return lambda maps: norm * kernel(norm * maps)


def _dense_crf_pydensecrf(
    image: torch.Tensor, masks: torch.Tensor, params: CRFParams
) -> torch.Tensor:
    dcrf = require_pydensecrf()
    height, width = masks.shape[1:]
    rgb = np.ascontiguousarray(image.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy())
    # -log of the softmax of the one-hot map: -log(0.731) where a label is set, -log(0.269) not.
    energy_set, energy_unset = -math.log(math.e / (1 + math.e)), -math.log(1 / (1 + math.e))
    refined = []
    for mask in masks.cpu().numpy().reshape(len(masks), -1):
        unary = np.where(np.stack([~mask, mask]), energy_set, energy_unset).astype(np.float32)
        crf = dcrf.DenseCRF2D(width, height, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(unary))
        crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
        crf.addPairwiseBilateral(
            sxy=params.bilateral_sxy,
            srgb=params.bilateral_srgb,
            rgbim=rgb,
            compat=params.bilateral_compat,
        )
        marginals = np.asarray(crf.inference(params.iters))
        refined.append(marginals.argmax(axis=0).reshape(height, width).astype(bool))
    out = np.stack(refined) if refined else np.zeros((0, height, width), dtype=bool)
    return torch.from_numpy(out).to(masks.device)
