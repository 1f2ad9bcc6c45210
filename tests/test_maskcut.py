"""MaskCut (CutLER): the foreground rule, the seed component, painting and rejection, the
eigenvector against a dense generalised solver, and degenerate images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg
import torch

import uis_d2  # noqa: F401
from uis_d2.config import get_cfg
from uis_d2.data.synthetic import render_scene
from uis_d2.proposals import build_pseudo_mask_generator
from uis_d2.proposals.eigensolvers import thresholded_ncut_operator, without_patches
from uis_d2.proposals.maskcut import (
    MaskCutParams,
    cut_from_vector,
    maskcut_grid_masks,
    rejected,
    second_eigenvectors,
)

PARAMS = MaskCutParams(
    num_masks=3,
    input_size=0,
    tau=0.15,
    eps=1e-5,
    corner_limit=3,
    max_iou_with_previous=0.5,
    min_patch_fraction=0.01,
    solver="krylov",
    tol=1e-5,
    score="cut_order",
    seed=0,
)


def _vector(grid: np.ndarray, inside: float, outside: float) -> np.ndarray:
    return np.where(grid, inside, outside).astype(np.float64).reshape(-1)


def test_the_object_is_the_side_off_the_corners_whatever_the_sign():
    obj = np.zeros((8, 8), dtype=bool)
    obj[0:3, 0:3] = True  # in one corner; the background holds the other three
    for inside, outside in ((1.0, -0.2), (-1.0, 0.2)):
        mask = cut_from_vector(_vector(obj, inside, outside), (8, 8), corner_limit=3)
        assert np.array_equal(mask, obj)


def test_without_three_corners_the_seed_side_wins():
    """A central blob holds no corner: the side of the largest |entry| (the seed) is kept,
    whichever side of the mean it lies on and whatever the sign."""
    blob = np.zeros((8, 8), dtype=bool)
    blob[2:6, 2:6] = True
    vector = _vector(blob, 1.0, -0.1)
    assert np.array_equal(cut_from_vector(vector, (8, 8), 3), blob)
    vector = _vector(blob, 0.5, -0.1)
    vector[63] = -3.0  # the seed is now a background corner: its side wins
    for sign in (1, -1):
        assert np.array_equal(cut_from_vector(sign * vector, (8, 8), corner_limit=5), ~blob)


@pytest.mark.parametrize("seed", range(5))
def test_the_cut_does_not_depend_on_the_eigenvector_sign(seed):
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(100)
    for limit in (2, 3):
        assert np.array_equal(
            cut_from_vector(vector, (10, 10), limit), cut_from_vector(-vector, (10, 10), limit)
        )


def test_mask_is_the_seed_component_only():
    grid = np.zeros((8, 8), dtype=bool)
    grid[1:3, 1:3] = True
    grid[5:7, 5:7] = True  # a second part of the bipartition, not 4-connected to the first
    vector = _vector(grid, 1.0, -0.2)
    vector[6 * 8 + 6] = 2.0  # the seed lies in the second part
    expected = np.zeros_like(grid)
    expected[5:7, 5:7] = True
    assert np.array_equal(cut_from_vector(vector, (8, 8), 3), expected)


def test_constant_vector_gives_no_mask():
    assert not cut_from_vector(np.zeros(16), (4, 4), 3).any()


def test_cuts_are_rejected_when_they_repeat_are_tiny_or_add_nothing():
    previous = np.zeros((10, 10), dtype=bool)
    previous[:5] = True  # 50 patches
    first = np.zeros_like(previous)
    first[8:, 8:] = True  # an earlier cut, not the previous one
    taken = previous | first
    assert rejected(previous.copy(), previous, taken, PARAMS)  # IoU 1
    overlap = np.zeros_like(previous)
    overlap[2:7] = True  # IoU 30 / 70
    assert not rejected(overlap, previous, taken, PARAMS)
    tiny = np.zeros_like(previous)
    tiny[7, 0] = True  # 1 patch = 1% of 100: at the limit, rejected
    assert rejected(tiny, previous, taken, PARAMS)
    # IoU 0 with the previous cut and 4 patches, but all of them taken by the first cut.
    assert rejected(first.copy(), previous, taken, PARAMS)
    assert not rejected(first | tiny, previous, taken, PARAMS)
    empty = np.zeros_like(previous)
    assert rejected(empty, None, empty, PARAMS)  # an empty first cut
    assert not rejected(tiny, None, empty, PARAMS)  # a first cut has no minimum size


def _objects_grid(seed: int = 0) -> tuple[torch.Tensor, list[np.ndarray]]:
    """(1, C, 16, 16) features: background and three objects, each its own direction."""
    rng = np.random.default_rng(seed)
    directions = np.eye(8)
    features = np.tile(directions[0], (16, 16, 1))
    objects = []
    for index, (r, c, h, w) in enumerate([(2, 2, 4, 5), (9, 3, 5, 4), (4, 10, 6, 4)]):
        region = np.zeros((16, 16), dtype=bool)
        region[r : r + h, c : c + w] = True
        features[region] = directions[index + 1]
        objects.append(region)
    features = features + 0.01 * rng.standard_normal(features.shape)
    return torch.from_numpy(features).permute(2, 0, 1)[None].float(), objects


def test_painting_yields_one_mask_per_object_without_overlap():
    features, objects = _objects_grid()
    params = dataclasses.replace(PARAMS, num_masks=5)
    masks = maskcut_grid_masks(features, params)[0]
    found = [m for m in masks if m.any()]
    assert len(found) == 3
    for obj in objects:
        assert any(np.array_equal(mask, obj) for mask in found)
    assert (masks.sum(axis=0) <= 1).all()  # earlier masks' patches removed from later ones


def test_num_masks_caps_the_cuts():
    features, _ = _objects_grid()
    assert len(maskcut_grid_masks(features, dataclasses.replace(PARAMS, num_masks=2))[0]) == 2


def _dense_generalised(features: np.ndarray, tau: float, eps: float) -> np.ndarray:
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = np.where(f @ f.T > tau, 1.0, eps)
    d = np.diag(w.sum(axis=1))
    return scipy.linalg.eigh(d - w, d)[1][:, 1]


@pytest.mark.parametrize("solver", ["krylov", "subspace", "eigh"])
def test_eigenvector_matches_the_dense_generalised_solver(solver):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 16))
    points = centres[rng.integers(0, 4, 300)] + 0.8 * rng.standard_normal((300, 16))
    params = dataclasses.replace(PARAMS, solver=solver, tau=0.3)
    operator = thresholded_ncut_operator(torch.from_numpy(points)[None].float(), 0.3, PARAMS.eps)
    ours = second_eigenvectors(operator, params)[0].double()
    reference = _dense_generalised(points, 0.3, PARAMS.eps)
    cosine = abs(float(ours.numpy() @ reference)) / (ours.norm().item() * np.linalg.norm(reference))
    assert cosine > 0.999


def test_thresholded_operator_degrees_are_the_affinity_row_sums():
    features = torch.randn(2, 50, 6, generator=torch.Generator().manual_seed(0))
    operator = thresholded_ncut_operator(features, 0.15, 1e-5)
    degree = operator.affinity.sum(-1)
    assert torch.allclose(operator.inv_sqrt, degree.rsqrt(), rtol=1e-5)
    values = operator.affinity.unique()
    assert len(values) == 2 and values[1] == 1.0 and values[0] == pytest.approx(1e-5)


def test_painting_the_graph_in_place_equals_rebuilding_it_from_painted_features():
    features = torch.randn(3, 60, 8, generator=torch.Generator().manual_seed(1))
    removed = torch.rand(3, 60, generator=torch.Generator().manual_seed(2)) < 0.3
    painted = without_patches(thresholded_ncut_operator(features, 0.15, 1e-5), removed, 1e-5)
    rebuilt = thresholded_ncut_operator(features * ~removed[:, :, None], 0.15, 1e-5)
    for field in ("affinity", "inv_sqrt", "trivial", "unit_features"):
        assert torch.allclose(getattr(painted, field), getattr(rebuilt, field)), field


def test_painting_selected_images_paints_their_own_graphs_only():
    features = torch.randn(3, 60, 8, generator=torch.Generator().manual_seed(1))
    removed = torch.rand(3, 60, generator=torch.Generator().manual_seed(2)) < 0.3
    graph = thresholded_ncut_operator(features, 0.15, 1e-5)
    untouched = graph.affinity[1].clone()
    selected = torch.tensor([2, 0])
    painted = without_patches(graph[selected], removed[selected], 1e-5)
    rebuilt = thresholded_ncut_operator(features * ~removed[:, :, None], 0.15, 1e-5)[selected]
    assert torch.equal(graph.affinity[1], untouched)
    assert torch.allclose(painted.dense(), rebuilt.dense(), atol=1e-6)
    assert torch.allclose(painted.inv_sqrt, rebuilt.inv_sqrt)


def test_cuts_on_the_graph_painted_in_place_equal_cuts_on_rebuilt_graphs():
    scenes = [render_scene(np.random.default_rng(seed))[0] for seed in range(4)]
    images = [torch.from_numpy(rgb).permute(2, 0, 1).contiguous() for rgb in scenes]
    generator = _generator(INPUT_SIZE=160)
    features = torch.stack(generator.grid_masks(images)[0])
    params = generator.params
    in_place = maskcut_grid_masks(features, params)
    rebuilt = maskcut_grid_masks(
        features,
        params,
        solve=lambda x: second_eigenvectors(
            thresholded_ncut_operator(x, params.tau, params.eps), params
        ),
    )
    assert sum(len(masks) for masks in in_place) > len(images)  # later cuts were made
    for ours, theirs in zip(in_place, rebuilt):
        assert np.array_equal(ours, theirs)


def test_every_cut_adds_patches_not_cut_before():
    """A cut whose seed is a painted patch can return painted patches only (their entries of
    the eigenvector tie); it is rejected, so no image is left with an empty mask."""
    scenes = [render_scene(np.random.default_rng(seed))[0] for seed in range(6)]
    images = [torch.from_numpy(rgb).permute(2, 0, 1).contiguous() for rgb in scenes]
    generator = _generator(INPUT_SIZE=240, NUM_MASKS=6)
    grid_masks = generator.grid_masks(images)[1]
    assert sum(len(masks) for masks in grid_masks) > 2 * len(images)  # later cuts were made
    for masks in grid_masks:
        assert masks.reshape(len(masks), -1).any(axis=1).all()


def _generator(**maskcut):
    cfg = get_cfg()
    cfg.merge_from_file("configs/proposals/synthetic_maskcut.yaml")
    for key, value in maskcut.items():
        setattr(cfg.PROPOSALS.MASKCUT, key, value)
    return build_pseudo_mask_generator(cfg)


def test_generator_on_a_synthetic_scene():
    rgb, instances = render_scene(np.random.default_rng(5))
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    (proposals,) = _generator()([image])
    n = len(proposals.scores)
    assert 1 <= n <= 4
    assert tuple(proposals.masks.shape) == (n, *rgb.shape[:2])
    assert proposals.masks.flatten(1).any(1).all()  # empty masks are dropped
    assert (proposals.masks.sum(0) <= 1).all()
    assert np.allclose(proposals.scores, 1.0 / proposals.extras["cut"])
    assert proposals.embeddings.shape[0] == n


def test_constant_features_give_no_mask():
    features = torch.ones((2, 8, 12, 12))
    assert [len(m) for m in maskcut_grid_masks(features, PARAMS)] == [0, 0]


@pytest.mark.parametrize(
    "image",
    [
        torch.full((3, 64, 80), 128, dtype=torch.uint8),  # constant (features vary at borders)
        torch.zeros((3, 5, 7), dtype=torch.uint8),  # smaller than one 8-px patch
    ],
    ids=["constant", "tiny"],
)
def test_degenerate_images_give_defined_results(image):
    (proposals,) = _generator(INPUT_SIZE=0)([image])
    n = len(proposals.scores)
    assert n <= 4 and tuple(proposals.masks.shape) == (n, *image.shape[1:])
    if image.shape[1] < 8:  # a 1 x 1 grid cannot be cut
        assert n == 0


def test_foreground_touching_every_corner_still_gives_defined_masks():
    """A frame around the image holds all four corners: the rule flips to the inside."""
    image = torch.zeros((3, 96, 96), dtype=torch.uint8)
    image[0] = 200
    image[:, 16:80, 16:80] = torch.tensor([20, 180, 40], dtype=torch.uint8)[:, None, None]
    (proposals,) = _generator(INPUT_SIZE=0, NUM_MASKS=6)([image])
    assert 1 <= len(proposals.scores) <= 6
    assert not proposals.masks[0, 0, 0] and proposals.masks[0, 48, 48]


def test_invalid_options_name_the_key():
    with pytest.raises(ValueError, match="PROPOSALS.MASKCUT.SCORE"):
        _generator(SCORE="random")
    with pytest.raises(ValueError, match="PROPOSALS.MASKCUT.SOLVER"):
        _generator(SOLVER="lanczos")
