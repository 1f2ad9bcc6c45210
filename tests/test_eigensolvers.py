"""The Ncut eigensolvers: iterative ones against the exact one, degenerate graphs, batches whose
images converge at different steps, fall-back to eigh."""

from __future__ import annotations

import logging

import pytest
import torch

from uis_d2.proposals import eigensolvers
from uis_d2.proposals.eigensolvers import (
    NcutOperator,
    ncut_operator,
    top_eigh,
    top_krylov,
    top_subspace,
)
from uis_d2.proposals.spectral import spectral_embedding

TOL = 1e-3
FACTORS = ("affinity", "inv_sqrt", "trivial", "unit_features")
ITERATIVE = {"krylov": top_krylov, "subspace": top_subspace}


def _blobs(counts: list[int], dim: int = 16, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(N, dim) features: ``counts[i]`` patches around direction i (orthogonal directions,
    so distinct blobs have zero affinity)."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    features = torch.eye(dim)[truth] + noise * torch.rand(len(truth), dim, generator=generator)
    return features[torch.randperm(len(truth), generator=generator)]


def _noisy(n: int = 300, seed: int = 0) -> torch.Tensor:
    """Positively correlated random features: a dense graph with a flat, small spectrum."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 16, generator=generator) + 0.3 * torch.randn(n, 16, generator=generator)


def _assert_eigenpairs(operator: NcutOperator, values: torch.Tensor, vectors: torch.Tensor):
    """Each image's pairs are orthonormal eigenpairs of its own operator to the residual ``TOL``,
    and are its leading ones (exact eigenvalues closer than ``TOL`` cannot be told apart)."""
    dense = operator.dense()
    residual = dense @ vectors - vectors * values[:, None, :]
    assert residual.norm(dim=1).max() <= TOL * 1.01
    gram = vectors.transpose(1, 2) @ vectors
    assert torch.allclose(gram, torch.eye(vectors.shape[2]).expand_as(gram), atol=1e-4)
    exact, _ = top_eigh(operator, values.shape[1])
    assert torch.allclose(values, exact, atol=TOL)


def test_operator_products_equal_the_dense_matrix():
    operator = ncut_operator(torch.stack([_noisy(60), _noisy(60, seed=1)]))
    x = torch.randn(2, 60, 3, generator=torch.Generator().manual_seed(0))
    dense = operator.dense()
    assert torch.allclose(operator @ x, dense @ x, atol=1e-5)
    assert torch.allclose(operator.apply_rows(x.transpose(1, 2)), (dense @ x).mT, atol=1e-5)
    # The trivial vector u0 = D^1/2 1 is deflated: A' u0 = 0.
    assert (dense @ operator.trivial[:, :, None]).abs().max() < 1e-5


@pytest.mark.parametrize("solver", sorted(ITERATIVE))
def test_iterative_solvers_find_the_exact_leading_subspace(solver):
    features = torch.stack([_noisy(300), _blobs([80, 70, 60, 50, 40], noise=0.5)])
    operator = ncut_operator(features)
    result = ITERATIVE[solver](operator, 5, torch.Generator().manual_seed(0), TOL, 300)
    assert result is not None
    values, vectors = result
    _assert_eigenpairs(operator, values, vectors)
    _, exact = top_eigh(operator, 5)
    # Same subspace: all cosines of the principal angles are ~1.
    assert torch.linalg.svdvals(exact.transpose(1, 2) @ vectors).min() > 0.999


@pytest.mark.parametrize(
    "counts",
    [
        [120],  # a constant image: no structure at all
        [40, 40, 40],  # fewer distinct features than eigenvectors wanted
        [30] * 6,  # six components: mu = 1 five times over (degenerate)
    ],
)
def test_krylov_survives_degenerate_graphs(counts):
    operator = ncut_operator(_blobs(counts)[None])
    values, vectors = top_krylov(operator, 5, torch.Generator().manual_seed(0), TOL, 300)
    _assert_eigenpairs(operator, values, vectors)


@pytest.mark.parametrize("copies", [False, True], ids=["referred", "copied"])
def test_krylov_results_belong_to_their_own_images_when_they_finish_at_different_steps(
    monkeypatch, copies
):
    """Finished images leave the batch: every image must still get its own eigenpairs,
    whatever the order in which they finish. Referred (a CPU): the unfinished images' rows of
    the shared W. Copied (as on a GPU): a range view, or a gather when they are few."""
    generator = torch.Generator().manual_seed(0)
    easy, constant = _blobs([60, 60, 60, 60, 60], noise=0.02), torch.ones(300, 16)
    slow, slower = torch.randn(2, 300, 16, generator=generator), torch.randn(300, 16) + 0.5
    # Step 1 finishes the easy images: the rest is a range view. Then the two in the middle
    # finish, and the two slowest ends, at most half of their range, are gathered.
    order = [constant, slow[0], easy, slower, slower, easy, slow[1]]
    selected = []
    selecting = NcutOperator.__getitem__
    monkeypatch.setattr(NcutOperator, "selection_copies", lambda self: copies)
    monkeypatch.setattr(
        NcutOperator, "__getitem__", lambda self, i: selected.append(i) or selecting(self, i)
    )
    operator = ncut_operator(torch.stack(order))
    # The step at which an image converges follows float reductions, whose order depends on
    # the thread count: one thread makes the finishing order, and so both routes, repeatable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        values, vectors = top_krylov(operator, 5, torch.Generator().manual_seed(0), TOL, 300)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    _assert_eigenpairs(operator, values, vectors)
    if copies:
        assert {type(i) for i in selected} == {slice, torch.Tensor}
    else:  # the unfinished images themselves, each time fewer
        sizes = [len(i) for i in selected]
        assert all(isinstance(i, torch.Tensor) for i in selected) and len(sizes) >= 3
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < len(order)


def test_selected_images_refer_to_the_shared_affinity_on_a_cpu():
    operator = ncut_operator(torch.stack([_noisy(50, seed=s) for s in range(4)]))
    rows = torch.tensor([3, 1])
    referred = operator[rows]
    assert referred.affinity is operator.affinity and referred.images.tolist() == [3, 1]
    again = referred[torch.tensor([1])]  # a selection of a selection
    assert again.affinity is operator.affinity and again.images.tolist() == [1]
    x = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0))
    copied = NcutOperator(*(getattr(operator, f)[rows] for f in FACTORS))
    assert torch.allclose(referred @ x, copied @ x, atol=1e-6)
    assert torch.allclose(referred.apply_rows(x.mT), copied.apply_rows(x.mT), atol=1e-6)
    assert torch.equal(referred.dense(), copied.dense())
    assert operator[1:3].images is None  # a range stays a view


def test_landmark_start_gives_every_group_of_patches_a_landmark_first():
    """Drawn away from the landmarks so far, four rounds of one landmark each land in four
    different blobs, so the start spans all four blobs (less u0: rank 3). A uniform draw would
    mostly repeat the large blob."""
    operator = ncut_operator(_blobs([200, 20, 20, 20], noise=0.01)[None])
    for seed in range(5):
        rows = eigensolvers._landmark_start(operator, 4, torch.Generator().manual_seed(seed))
        assert torch.linalg.matrix_rank(rows[0], atol=1e-3) == 3
        assert (rows[0] @ operator.trivial[0]).abs().max() < 1e-5  # u0 removed


def test_solvers_give_up_cleanly_and_the_embedding_falls_back_to_eigh(caplog):
    features = torch.randn(1, 300, 16, generator=torch.Generator().manual_seed(0))
    operator = ncut_operator(features)
    generator = torch.Generator().manual_seed(0)
    assert top_krylov(operator, 5, generator, TOL, max_iters=1) is None
    assert top_subspace(operator, 5, generator, TOL, max_iters=1) is None
    # Too few patches for a Krylov basis of 8-row blocks.
    assert top_krylov(ncut_operator(_noisy(12)[None]), 5, generator, TOL, 300) is None
    exact = spectral_embedding(features, 5, solver="eigh")
    with caplog.at_level(logging.INFO, logger="uis_d2.proposals.spectral"):
        fallen_back = spectral_embedding(features, 5, solver="krylov", max_iters=1)
    assert "krylov solver did not converge in 1 steps; using eigh" in caplog.text
    assert torch.equal(exact.vectors, fallen_back.vectors)
