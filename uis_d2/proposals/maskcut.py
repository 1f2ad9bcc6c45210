"""CutLER's MaskCut (Wang et al. 2023, section 3.1; ref ``maskcut/maskcut.py``) as a generator.

Per image, on the keys of a self-supervised ViT at a square input (aspect not kept):

1. Graph: ``W_ij = 1`` where the cosine of patches i and j exceeds ``tau``, else ``eps``.
2. One cut: the second-smallest generalised eigenvector of ``(D - W) v = lambda D v``, i.e.
   ``D^-1/2 u`` for the leading eigenvector u of the deflated normalised operator, solved by the
   project's iterative eigensolvers (eigensolvers.py) instead of the reference's dense
   generalised ``eigh`` (about 13.5 s an image; benchmarks/bench_maskcut.py compares the two).
3. Bipartition ``v > mean(v)``, v signed so that its largest |entry| (the seed) is positive
   (``cut_from_vector``: the reference's rule depends on its solver's sign); the bipartition is
   flipped when at least ``corner_limit`` of the 4 corner patches lie in it, and the seed is the
   argmax of the (possibly negated) vector. The mask is the 4-connected component of the
   bipartition holding the seed.
4. N masks: before each later cut the features of every patch already taken are zeroed
   ("painting": cosine 0 < tau, so those patches keep only eps edges). A cut whose IoU with
   the previous one exceeds ``max_iou_with_previous``, or that covers at most
   ``min_patch_fraction`` of the patches, is rejected, and the image stops there: the next cut
   would see the same painted features and repeat it (the reference empties the mask and goes
   on, which can then accept the repeat against the emptied mask; a deviation by design). A
   cut adding no patch to those already taken is rejected too: the painted patches' entries of
   the eigenvector are equal (they differ by rounding only), so when the seed is one of them
   which painted component the cut returns is a tie; the reference writes such a cut as an
   empty mask, and since the painting did not change, no later cut adds a patch either.
5. Each mask is upsampled (nearest) to the image's original size, without the pixels of earlier
   masks. Optional CRF refinement is the generic ``PROPOSALS.REFINE`` step, as for every
   generator.

Degenerate inputs give fewer masks, never an error: a constant image has no non-trivial
eigenvector (no mask), a grid of fewer than 2 patches is skipped.

``MaskCutUnion``, the foreground provider made of the union of an image's cuts, lives here
rather than in uis_d2/foreground/: the foreground package is imported by the proposals package,
so it cannot import the generator back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from scipy import ndimage

from uis_d2.features.base import FeatureExtractor, build_feature_extractor, extract_features
from uis_d2.foreground.base import (
    FOREGROUND_REGISTRY,
    ForegroundProvider,
    build_saliency_extractor,
)
from uis_d2.proposals.base import PSEUDO_MASK_GENERATOR_REGISTRY, ProposalGenerator, Proposals
from uis_d2.proposals.eigensolvers import (
    NcutOperator,
    thresholded_ncut_operator,
    without_patches,
)
from uis_d2.proposals.spectral import operator_embedding
from uis_d2.proposals.spectral_generator import group_indices

SCORE_MODES = ("constant", "cut_order")
SOLVERS = ("auto", "krylov", "subspace", "eigh")


@dataclass(frozen=True)
class MaskCutParams:
    """``PROPOSALS.MASKCUT``, one field per key (see the config's comments)."""

    num_masks: int
    input_size: int
    tau: float
    eps: float
    corner_limit: int
    max_iou_with_previous: float
    min_patch_fraction: float
    solver: str
    tol: float
    score: str
    seed: int

    def __post_init__(self) -> None:
        if self.score not in SCORE_MODES:
            raise ValueError(
                f"PROPOSALS.MASKCUT.SCORE = {self.score!r}: must be one of {SCORE_MODES}"
            )
        if self.solver not in SOLVERS:
            raise ValueError(
                f"PROPOSALS.MASKCUT.SOLVER = {self.solver!r}: must be one of {SOLVERS}"
            )
        if self.num_masks < 1:
            raise ValueError(f"PROPOSALS.MASKCUT.NUM_MASKS = {self.num_masks}: must be >= 1")


def _solver_for(solver: str, device: torch.device) -> str:
    """``auto``: block Krylov on a CPU, subspace iteration on a GPU (as the spectral
    generator's choice for large grids), never the dense solver."""
    if solver != "auto":
        return solver
    return "krylov" if device.type == "cpu" else "subspace"


def second_eigenvectors(operator: NcutOperator, params: MaskCutParams) -> torch.Tensor:
    """(B, N) second-smallest generalised eigenvectors of B thresholded graphs (all zeros where
    a graph has no non-trivial structure)."""
    solver = _solver_for(params.solver, operator.affinity.device)
    return operator_embedding(operator, 1, solver, params.seed, params.tol).vectors[:, :, 0]


def corner_indices(height: int, width: int) -> list[int]:
    return [0, width - 1, (height - 1) * width, height * width - 1]


def cut_from_vector(vector: np.ndarray, grid: tuple[int, int], corner_limit: int) -> np.ndarray:
    """One cut's mask (h, w) bool from its eigenvector (N,): MaskCut's foreground rule and
    the seed's 4-connected component. Empty when the vector is constant.

    The vector is first signed so that its largest |entry| (the reference's seed) is positive,
    hence inside the bipartition ``v > mean``; the bipartition is then flipped when it holds at
    least ``corner_limit`` corners, and the seed is the peak of the side kept. The reference
    applies its rule to whatever sign its solver returns, and that rule is not sign-symmetric:
    with fewer corners than the limit and a negative seed entry, it flips to the corners' side
    and keeps the seed there, where the opposite sign keeps the other side and its peak. Fixing
    the sign makes the cut a function of the graph alone.
    """
    height, width = grid
    peak = int(np.argmax(np.abs(vector)))
    vector = vector if vector[peak] >= 0 else -vector
    bipartition = vector > vector.mean()
    if not bipartition.any():
        return np.zeros(grid, dtype=bool)
    if int(bipartition[corner_indices(height, width)].sum()) >= corner_limit:
        vector, bipartition = -vector, ~bipartition
    seed = int(np.argmax(vector))
    components, _ = ndimage.label(bipartition.reshape(grid))  # 4-connectivity
    label = components.reshape(-1)[seed]
    return components == label if label else np.zeros(grid, dtype=bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def rejected(
    mask: np.ndarray, previous: np.ndarray | None, taken: np.ndarray, params: MaskCutParams
) -> bool:
    """A cut is rejected when it adds no patch to those ``taken`` by earlier cuts; a later
    cut also when it repeats the previous one or is too small."""
    if not (mask & ~taken).any():
        return True
    if previous is None:
        return False
    too_small = mask.sum() <= params.min_patch_fraction * mask.size
    return too_small or _iou(mask, previous) > params.max_iou_with_previous


def maskcut_grid_masks(
    features: torch.Tensor,
    params: MaskCutParams,
    solve: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[np.ndarray]:
    """MaskCut on B images of one grid: features (B, C, h, w) -> per image (n_i, h, w) bool
    masks in cut order (n_i <= num_masks), earlier masks' patches removed from later ones.
    Images that are still cutting share each eigensolver call; their graph is built once and
    painted in place (``without_patches``). ``solve``: (B, N, C) painted features -> (B, N)
    eigenvectors instead, for the benchmark's reference solver, which builds each cut's graph
    from the painted features as CutLER does."""
    batch, channels, height, width = features.shape
    tokens = features.flatten(2).transpose(1, 2).contiguous()  # (B, N, C)
    cuts: list[list[np.ndarray]] = [[] for _ in range(batch)]
    taken = np.zeros((batch, height, width), dtype=bool)  # patches of each image's cuts so far
    active = list(range(batch)) if height * width >= 2 else []
    graph = thresholded_ncut_operator(tokens, params.tau, params.eps) if solve is None else None
    for cut in range(params.num_masks):
        if not active:
            break
        if solve is None:
            if cut > 0:  # paint the last cut's patches: the earlier ones already are
                newest = np.stack([cuts[image][-1] for image in active]).reshape(len(active), -1)
                graph = without_patches(
                    graph, torch.from_numpy(newest).to(features.device), params.eps
                )
            vectors = second_eigenvectors(graph, params).cpu().numpy()
        else:
            index = torch.tensor(active, device=features.device)
            painted = torch.from_numpy(taken[active].reshape(len(active), -1)).to(features.device)
            vectors = solve(tokens[index] * ~painted[:, :, None]).cpu().numpy()
        still_active = []
        for row, image in enumerate(active):
            mask = cut_from_vector(vectors[row], (height, width), params.corner_limit)
            previous = cuts[image][-1] if cuts[image] else None
            if rejected(mask, previous, taken[image], params):
                continue
            cuts[image].append(mask)
            taken[image] |= mask
            still_active.append(row)
        if graph is not None and len(still_active) < len(active):
            graph = graph[torch.tensor(still_active, dtype=torch.long, device=features.device)]
        active = [active[row] for row in still_active]
    out = []
    for image_cuts in cuts:
        earlier = np.zeros((height, width), dtype=bool)
        kept = []
        for mask in image_cuts:
            kept.append(mask & ~earlier)
            earlier |= mask
        out.append(np.stack(kept) if kept else np.zeros((0, height, width), dtype=bool))
    return out


def square_resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """RGB uint8 (3, H, W) -> (3, size, size) uint8, aspect not kept (as the reference);
    ``size`` 0 returns the image."""
    if size <= 0 or tuple(image.shape[1:]) == (size, size):
        return image
    x = image[None].float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def upsample_nearest(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) bool grid masks -> (n, H, W) bool at the image's size, nearest neighbour (the
    reference's upsampling; the square grid stretches back to the image's aspect)."""
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def maskcut_params(cfg) -> MaskCutParams:
    """``PROPOSALS.MASKCUT`` and ``PROPOSALS.SEED`` as parameters (generator and provider)."""
    m = cfg.PROPOSALS.MASKCUT
    return MaskCutParams(
        num_masks=m.NUM_MASKS,
        input_size=m.INPUT_SIZE,
        tau=m.TAU,
        eps=m.EPS,
        corner_limit=m.CORNER_LIMIT,
        max_iou_with_previous=m.MAX_IOU_WITH_PREVIOUS,
        min_patch_fraction=m.MIN_PATCH_FRACTION,
        solver=m.SOLVER,
        tol=m.TOL,
        score=m.SCORE,
        seed=cfg.PROPOSALS.SEED,
    )


@PSEUDO_MASK_GENERATOR_REGISTRY.register()
class MaskCutGenerator(ProposalGenerator):
    """MaskCut's N normalised cuts per image (see the module docstring)."""

    @configurable
    def __init__(self, *, extractor: FeatureExtractor, params: MaskCutParams) -> None:
        self.extractor = extractor
        self.params = params

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        p = cfg.PROPOSALS
        # The generator resizes to the square itself; the extractor only rounds to its grid.
        extractor = build_feature_extractor(p.EXTRACTOR, short_side=0, max_side=0, amp=p.AMP)
        return {"extractor": extractor, "params": maskcut_params(cfg)}

    def to(self, device: torch.device) -> MaskCutGenerator:
        self.extractor.to(device)
        return self

    @torch.no_grad()
    def __call__(
        self, images: list[torch.Tensor], names: list[str] | None = None
    ) -> list[Proposals]:
        features, grid_masks = self.grid_masks(images)
        return [
            self._proposals(image, feature, masks)
            for image, feature, masks in zip(images, features, grid_masks)
        ]

    def grid_masks(self, images: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[np.ndarray]]:
        """Per image the features of its square input (C, h, w) and its cuts (n, h, w) bool on
        that grid, in cut order, earlier cuts' patches removed."""
        inputs = [square_resized(image, self.params.input_size) for image in images]
        features = extract_features(self.extractor, inputs) if images else []
        return features, self.cut(features)

    def cut(self, features: list[torch.Tensor]) -> list[np.ndarray]:
        """Per image (C, h, w) features -> its cuts (n, h, w) bool, one batch per grid size."""
        grid_masks: list[np.ndarray] = [np.zeros(0)] * len(features)
        for indices in group_indices([f.shape for f in features]).values():
            batch = torch.stack([features[i] for i in indices])
            for index, masks in zip(indices, maskcut_grid_masks(batch, self.params)):
                grid_masks[index] = masks
        return grid_masks

    def _proposals(
        self, image: torch.Tensor, feature: torch.Tensor, masks: np.ndarray
    ) -> Proposals:
        """One image's grid masks at its original size, with scores, cut numbers and the mean
        (unpainted) feature inside each mask as its embedding."""
        grid = torch.from_numpy(masks).to(feature.device)
        full = upsample_nearest(grid, tuple(image.shape[1:]))
        nonempty = full.flatten(1).any(dim=1).cpu().numpy()
        cut = np.arange(1, len(masks) + 1)[nonempty]
        weights = grid[torch.from_numpy(nonempty).to(grid.device)].flatten(1).float()
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        embeddings = (weights @ feature.flatten(1).T.float()).cpu().numpy().astype(np.float32)
        scores = np.ones(len(cut)) if self.params.score == "constant" else 1.0 / cut
        return Proposals(
            masks=full[torch.from_numpy(nonempty).to(full.device)],
            scores=scores.astype(np.float32),
            embeddings=embeddings,
            extras={"cut": cut.astype(np.int32)},
            debug={"grid_masks": masks, "grid_size": tuple(feature.shape[1:])},
        )

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "generator": type(self).__name__,
            "extractor": self.extractor.describe(),
            "num_masks": p.num_masks,
            "input_size": p.input_size,
            "tau": p.tau,
            "eps": p.eps,
            "corner_limit": p.corner_limit,
            "max_iou_with_previous": p.max_iou_with_previous,
            "min_patch_fraction": p.min_patch_fraction,
            "solver": p.solver,
            "tol": p.tol,
            "score": p.score,
            "seed": p.seed,
        }


@FOREGROUND_REGISTRY.register()
class MaskCutUnion(ForegroundProvider):
    """Foreground = the union of MaskCut's cuts of the image (``PROPOSALS.MASKCUT``) on the
    saliency features (``PROPOSALS.SALIENCY.EXTRACTOR``).

    ``shared_features`` (``FOREGROUND.MASKCUT_UNION.SHARED_FEATURES``): cut the features of the
    image itself, handed over by a generator sharing the extractor (else computed), and return
    the union on their grid. Otherwise MaskCut's own square input (``MASKCUT.INPUT_SIZE``) is cut
    and the union returned at pixel resolution: exactly the union of the masks
    ``MaskCutGenerator`` writes for those features (a shared saliency extractor still applies
    its own ``SHORT_SIDE``/``MAX_SIDE`` resize to that square, a no-op when they leave a square
    of INPUT_SIZE as it is, as in the shipped configs).
    """

    @configurable
    def __init__(self, *, generator: MaskCutGenerator, shared_features: bool) -> None:
        self.generator = generator
        self.extractor = generator.extractor
        self.shared_features = shared_features

    @classmethod
    def from_config(cls, cfg, extractor: FeatureExtractor | None = None) -> dict[str, Any]:
        return {
            "generator": MaskCutGenerator(
                extractor=build_saliency_extractor(cfg, extractor), params=maskcut_params(cfg)
            ),
            "shared_features": cfg.PROPOSALS.FOREGROUND.MASKCUT_UNION.SHARED_FEATURES,
        }

    @torch.no_grad()
    def __call__(
        self, images, features=None, tokens=None, names=None, clusters=None
    ) -> list[torch.Tensor]:
        if self.shared_features:
            if features is None:
                features = extract_features(self.extractor, images)
            grid_masks = self.generator.cut(features)
            return [
                torch.from_numpy(masks.any(axis=0)).to(image.device)
                for image, masks in zip(images, grid_masks)
            ]
        _, grid_masks = self.generator.grid_masks(images)
        maps = []
        for image, masks in zip(images, grid_masks):
            union = torch.from_numpy(masks.any(axis=0)).to(image.device)
            maps.append(upsample_nearest(union[None], tuple(image.shape[1:]))[0])
        return maps

    def reads_extractor_output(self) -> bool:
        """Only the shared features: otherwise MaskCut's own square input is extracted."""
        return self.shared_features

    def describe(self) -> dict[str, Any]:
        return {
            "provider": "MaskCutUnion",
            "shared_features": self.shared_features,
            **self.generator.describe(),
        }
