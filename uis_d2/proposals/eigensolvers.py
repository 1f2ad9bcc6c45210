"""Leading eigenpairs of the deflated normalised patch affinity ``A' = D^-1/2 W D^-1/2 - u0 u0^T``.

Three solvers share one contract, ``(operator, m, ...) -> (values (B, m), vectors (B, N, m))``
with mu descending, or None when an iterative one has not reached a residual
``||A'v - mu v|| <= tol`` for every pair (the caller then falls back to the exact one):

- ``top_eigh``: dense ``torch.linalg.eigh``, exact, O(N^3) per image.
- ``top_subspace``: block subspace iteration with Rayleigh-Ritz, m + 27 columns a step. Few,
  wide steps suit a GPU, where each step costs kernel launches and a host sync.
- ``top_krylov``: thick-restart block Krylov (block Lanczos with full reorthogonalisation, in
  Davidson form), 8 rows a step. On the benchmark's features it needs about 40 instead of 100
  products with one column per image, and runs its narrow products in the ``x^T W`` form, which
  a CPU BLAS runs about twice as fast as ``W x`` at widths up to 8: 1.4x faster than subspace
  iteration on a CPU at the same residual there, 2.3x on 768-d random features (measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SUBSPACE_OVERSAMPLING = 27
KRYLOV_START = 24  # rows of the first block (landmark rows of W) ...
_LANDMARK_ROUNDS = 4  # ... drawn in this many rounds
KRYLOV_BLOCK = 8  # rows added per step
KRYLOV_MAX_WIDTH = 32  # basis rows at which the basis restarts ...
KRYLOV_KEEP = 16  # ... on this many leading Ritz vectors
_REORTHOGONALISE = 0.5  # a second Gram-Schmidt pass when a row keeps less than this share
_DEPENDENT = 1e-2  # a row keeping less than this share of its norm is replaced (breakdown)
_REFILLS = 4
_GATHER_SHARE = 0.5


@dataclass
class NcutOperator:
    """``A'`` of B images, kept as its factors: applying it to a few vectors costs one product
    with ``W``, and never forming ``A'`` saves four passes over the (B, N, N) matrix (the
    dominant memory traffic of the iterative solvers).

    Selecting images (``operator[rows]``, as the solvers do when some images have converged)
    copies their W on a GPU, where the copy is cheap and one batched product per step is what
    counts. On a CPU the copy costs 1.5-3.5 products (fresh pages, measured at 900 and 3,600
    patches), so the selection keeps the whole W and the rows of its B images (``images``), and
    products loop over them (as fast as one batched product there, measured).
    """

    affinity: torch.Tensor  # (B0, N, N) W; B0 = B unless ``images`` is set
    inv_sqrt: torch.Tensor  # (B, N) D^-1/2, 0 where the degree is 0
    trivial: torch.Tensor  # (B, N) u0
    unit_features: torch.Tensor  # (B, N, C) f, W's factor before the clamp
    images: torch.Tensor | None = None  # (B,) the B images' rows of ``affinity`` (None: all)

    def selection_copies(self) -> bool:
        """Whether ``operator[rows]`` copies the images' W (on a GPU) or refers to them."""
        return self.affinity.device.type != "cpu"

    def image_rows(self) -> torch.Tensor:
        """(B,) the rows of ``affinity`` holding the B images' W."""
        if self.images is None:
            return torch.arange(self.affinity.shape[0], device=self.affinity.device)
        return self.images

    def _times_affinity(self, x: torch.Tensor, rows: bool) -> torch.Tensor:
        """``x W`` for rows x (B, w, N), else ``W x`` for columns x (B, N, w)."""
        if self.images is None:
            return x @ self.affinity if rows else self.affinity @ x
        weights = [self.affinity[image] for image in self.images.tolist()]
        return torch.stack([a @ w if rows else w @ a for a, w in zip(x, weights)])

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        """``A' x`` for columns x (B, N, w)."""
        scale = self.inv_sqrt[:, :, None]
        product = scale * self._times_affinity(scale * x, rows=False)
        return product - self.trivial[:, :, None] * (self.trivial[:, None, :] @ x)

    def apply_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``(A' x)^T`` for rows x (B, w, N), computed as ``x^T A'`` (A' is symmetric): a CPU
        BLAS runs (w, N) @ (N, N) about 2x faster than (N, N) @ (N, w) for w <= 8 (measured)."""
        scale = self.inv_sqrt[:, None, :]
        product = scale * self._times_affinity(scale * rows, rows=True)
        trivial = self.trivial[:, None, :]
        return torch.baddbmm(product, rows @ trivial.transpose(1, 2), trivial, alpha=-1)

    def __getitem__(self, images: torch.Tensor | slice) -> NcutOperator:
        factors = [getattr(self, name)[images] for name in ("inv_sqrt", "trivial", "unit_features")]
        if self.selection_copies():
            return NcutOperator(self.affinity[images], *factors)
        if self.images is None and isinstance(images, slice):
            return NcutOperator(self.affinity[images], *factors)  # a view: no copy
        return NcutOperator(self.affinity, *factors, images=self.image_rows()[images])

    def dense(self) -> torch.Tensor:
        affinity = self.affinity if self.images is None else self.affinity[self.images]
        matrix = self.inv_sqrt[:, :, None] * affinity * self.inv_sqrt[:, None, :]
        return matrix - self.trivial[:, :, None] * self.trivial[:, None, :]


def ncut_operator(features: torch.Tensor) -> NcutOperator:
    """(B, N, C) features -> the deflated normalised affinity of their patch graphs."""
    f = torch.nan_to_num(features.float(), nan=0.0, posinf=0.0, neginf=0.0)
    f = F.normalize(f, dim=-1)
    affinity = (f @ f.transpose(1, 2)).clamp_min_(0)
    degree = affinity.sum(dim=-1)
    inv_sqrt = torch.where(degree > 1e-12, degree.clamp_min(1e-12).rsqrt(), 0.0)
    return NcutOperator(affinity, inv_sqrt, F.normalize(degree.sqrt(), dim=-1), f)


def thresholded_ncut_operator(features: torch.Tensor, tau: float, eps: float) -> NcutOperator:
    """(B, N, C) features -> the deflated normalised operator of MaskCut's graph (TokenCut):
    ``W = 1`` where the cosine exceeds ``tau``, else ``eps``. ``W = (1 - eps) B + eps 11^T`` with
    B binary, so its degrees are one product and the solvers' products need nothing new; a zero
    (painted) feature has cosine 0 with every patch, so it keeps only the eps edges."""
    f = torch.nan_to_num(features.float(), nan=0.0, posinf=0.0, neginf=0.0)
    f = F.normalize(f, dim=-1)
    # In place on the cosine matrix: B as 0/1 floats, its row sums, then W (a third of the time
    # of building B, W and the degrees as separate tensors, measured at 3,600 patches).
    affinity = torch.bmm(f, f.transpose(1, 2)).gt_(tau)
    degree = (1 - eps) * affinity.sum(dim=-1) + eps * affinity.shape[-1]
    affinity.mul_(1 - eps).add_(eps)
    return NcutOperator(affinity, degree.rsqrt(), F.normalize(degree.sqrt(), dim=-1), f)


def without_patches(operator: NcutOperator, removed: torch.Tensor, eps: float) -> NcutOperator:
    """MaskCut's graph (``thresholded_ncut_operator``) after painting: the patches of ``removed``
    (B, N) bool, and those painted before (which stay so), keep only eps edges, which is what
    their zeroed features give (cosine 0 <= tau), so W's rows and columns are overwritten in
    place instead of rebuilt from painted features (the cosine product and the threshold passes
    were a third of a cut's time, measured)."""
    affinity = operator.affinity
    rows = operator.image_rows().tolist()
    for image, patches in zip(rows, removed):
        index = patches.nonzero().squeeze(1)
        affinity[image].index_fill_(0, index, eps).index_fill_(1, index, eps)
    degree = torch.stack([affinity[image].sum(dim=-1) for image in rows])
    features = operator.unit_features * ~removed[:, :, None]
    trivial = F.normalize(degree.sqrt(), dim=-1)
    return NcutOperator(affinity, degree.rsqrt(), trivial, features, operator.images)


def top_eigh(operator: NcutOperator, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(operator.dense())
    return values.flip(-1)[:, :m], vectors.flip(-1)[:, :, :m]


def _feature_start(operator: NcutOperator, count: int, generator: torch.Generator):
    """(B, N, count) random vectors in the range of D^-1/2 F. Where most affinities are
    positive, A ~ D^-1/2 F F^T D^-1/2, so this range is already close to the leading subspace
    (subspace iteration takes 3 products instead of 4 to 5 from it, measured)."""
    features = operator.unit_features
    mixing = torch.randn(features.shape[0], features.shape[2], count, generator=generator)
    return operator.inv_sqrt[:, :, None] * (features @ mixing.to(features))


def top_subspace(
    operator: NcutOperator, m: int, generator: torch.Generator, tol: float, max_iters: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Leading m eigenpairs by subspace iteration; None when a residual stays above ``tol``.

    An image leaves the batch once its residual is below ``tol``, so the others do not keep it
    iterating. The block is m + 27 wide: on a CPU a product with 32 columns costs about what one
    with 17 does, and converges in fewer steps (measured).
    """
    batch, n = operator.inv_sqrt.shape
    width = min(n, m + _SUBSPACE_OVERSAMPLING)
    start = _feature_start(operator, width, generator)
    basis = torch.linalg.qr(start).Q
    values = start.new_zeros(batch, m)
    vectors = start.new_zeros(batch, n, m)
    pending = torch.arange(batch, device=start.device)
    for _ in range(max_iters):
        image = operator @ basis
        small = basis.transpose(1, 2) @ image
        theta, rotation = torch.linalg.eigh(0.5 * (small + small.transpose(1, 2)))
        theta, rotation = theta.flip(-1), rotation.flip(-1)
        ritz, ritz_image = basis @ rotation, image @ rotation
        residual = (ritz_image - ritz * theta[:, None, :])[:, :, :m].norm(dim=1)
        done = residual.amax(dim=-1) <= tol
        values[pending[done]], vectors[pending[done]] = theta[done, :m], ritz[done, :, :m]
        if bool(done.all()):
            return values, vectors
        if bool(done.any()):
            pending, operator, ritz_image = pending[~done], operator[~done], ritz_image[~done]
        basis = torch.linalg.qr(ritz_image).Q
    return None


def _orthonormalise(
    rows: torch.Tensor, basis: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Orthonormal rows spanning ``rows`` (B, b, N) with the orthonormal ``basis`` (B, k, N)
    projected out.

    Classical Gram-Schmidt, repeated where a row lost more than half its norm ('twice is
    enough'), then a QR of the block. A row left with less than 1% of its norm is numerically
    dependent: the Krylov space has broken down (an invariant subspace was found, as on a
    constant image, or the start was rank-deficient). It is replaced by a random row and the
    block redone, so the basis keeps its width and stays orthonormal.
    """
    for _ in range(_REFILLS):
        norm = torch.linalg.vector_norm(rows, dim=-1)
        x = rows - (rows @ basis.transpose(1, 2)) @ basis
        # ~(a >= b) rather than a < b: a NaN counts as a failure.
        if bool((~(torch.linalg.vector_norm(x, dim=-1) >= _REORTHOGONALISE * norm)).any()):
            x = x - (x @ basis.transpose(1, 2)) @ basis
        q, r = torch.linalg.qr(x.transpose(1, 2))
        dependent = ~(r.diagonal(dim1=1, dim2=2).abs() >= _DEPENDENT * norm)
        if not bool(dependent.any()):
            break
        fresh = torch.randn(rows.shape, generator=generator).to(rows)
        rows = torch.where(dependent[:, :, None], fresh, rows)
    return q.transpose(1, 2)


def _landmark_start(operator: NcutOperator, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, count, N) start rows ``D^-1/2 W e_j`` for ``count`` landmark patches j per image,
    with the trivial direction removed.

    A row of W is already computed and equals ``D^1/2 A e_j`` up to a scale, so the Krylov space
    these rows start is one product ahead of one started from the e_j, for free. The landmarks
    are drawn in rounds, each patch with a probability that falls with its largest affinity to
    the landmarks so far (squared distance, as k-means++ seeding), so every distinct group of
    patches gets a landmark early: on ViT and patch-statistics features the solver is about 8%
    faster from them than from the range of the features (measured). Patches of degree 0 are
    drawn last.
    """
    affinity = operator.affinity
    batch, n = operator.inv_sqrt.shape
    images = operator.image_rows()[:, None]
    weight = torch.where(operator.inv_sqrt > 0, 1.0, 1e-30)
    rows = []
    per_round, extra = divmod(count, _LANDMARK_ROUNDS)
    sizes = [per_round + (r < extra) for r in range(_LANDMARK_ROUNDS)]
    for size in filter(None, sizes):
        uniform = torch.rand(batch, n, generator=generator).to(weight)
        # The top-k of log(u) / weight is a weighted draw without replacement.
        keys = uniform.clamp_min(1e-30).log() / weight
        rows.append(affinity[images, keys.topk(size, dim=1).indices])
        weight = torch.minimum(weight, (1 - rows[-1].amax(dim=1)).clamp_min(1e-15).square())
    start = torch.cat(rows, dim=1) * operator.inv_sqrt[:, None, :]
    trivial = operator.trivial[:, None, :]
    return torch.baddbmm(start, start @ trivial.transpose(1, 2), trivial, alpha=-1)


def top_krylov(
    operator: NcutOperator, m: int, generator: torch.Generator, tol: float, max_iters: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Leading m eigenpairs by thick-restart block Krylov; None when a residual stays above
    ``tol`` after ``max_iters`` steps, or the grid is too small for a basis of this width.

    The basis Q starts from 24 landmark rows of W (see ``_landmark_start``) and grows by 8 rows
    a step: the residuals ``A'v - theta v`` of the 8 leading Ritz pairs (or of the 8
    leading ones not yet converged when m > 8), orthonormalised. They span the next block of the
    block Krylov space. Each row of Q is kept with its image ``A'q``, so the Rayleigh-Ritz matrix,
    the Ritz vectors' images and their exact residuals cost no further product with W. At 32
    rows the basis restarts on its 16 leading Ritz vectors, whose images are known: the restart
    costs no product and keeps the Rayleigh-Ritz problem small.

    An image's pairs are taken once all m residuals are below ``tol``. The batch then shrinks to
    its unfinished images. On a GPU, where selecting them copies their W, it shrinks to the
    range from the first to the last of them (a view) unless they are at most half of it.
    """
    batch, n = operator.inv_sqrt.shape
    block = min(KRYLOV_BLOCK, n)
    count = max(m, block)  # the Ritz pairs whose residuals are formed each step
    width = min(max(KRYLOV_MAX_WIDTH, count + block), n)
    keep = min(max(KRYLOV_KEEP, count), width - block)
    if keep < count:
        return None
    start = _landmark_start(operator, min(KRYLOV_START, width - block), generator)
    q = _orthonormalise(start, start[:, :0], generator)  # no basis to project out yet
    k = q.shape[1]
    both = q.new_zeros(batch, width, 2 * n)  # row j: [q_j, A'q_j]
    small = q.new_zeros(batch, width, width)  # upper triangle: Q^T A'Q
    both[:, :k, :n], both[:, :k, n:] = q, operator.apply_rows(q)
    small[:, :k, :k] = q @ both[:, :k, n:].transpose(1, 2)
    values, vectors = q.new_zeros(batch, m), q.new_zeros(batch, n, m)
    pending = torch.arange(batch, device=q.device)  # the batch's images, by original index
    finished = torch.zeros(batch, dtype=torch.bool, device=q.device)
    for _ in range(max_iters):
        evals, rotation = torch.linalg.eigh(small[:, :k, :k], UPLO="U")  # ascending
        restart = k + block > width
        lead = keep if restart else count
        theta = evals[:, k - lead :].flip(-1)  # (B, lead), leading first
        ritz = rotation[:, :, k - lead :].flip(-1).transpose(1, 2) @ both[:, :k]  # [v, A'v]
        residual = torch.addcmul(
            ritz[:, :count, n:], theta[:, :count, None], ritz[:, :count, :n], value=-1
        )
        converged = torch.linalg.vector_norm(residual, dim=-1) <= tol  # (B, count)
        done = converged[:, :m].all(dim=-1) & ~finished
        if bool(done.any()):
            values[pending[done]] = theta[done, :m]
            vectors[pending[done]] = ritz[done, :m, :n].transpose(1, 2)
            finished = finished | done
            live = (~finished).nonzero().squeeze(1)
            if len(live) == 0:
                return values, vectors
            lo, hi = int(live[0]), int(live[-1]) + 1
            gather = not operator.selection_copies() or len(live) <= _GATHER_SHARE * (hi - lo)
            rows = live if gather else slice(lo, hi)
            pending, operator, both, small, finished = (
                pending[rows],
                operator[rows],
                both[rows],
                small[rows],
                finished[rows],
            )
            theta, ritz, residual, converged = (
                theta[rows],
                ritz[rows],
                residual[rows],
                converged[rows],
            )
        if restart:
            k = keep
            both[:, :k] = ritz[:, :k]
            small.zero_()
            small[:, :k, :k] = torch.diag_embed(theta[:, :k])
        if count > block:  # the leading pairs not yet converged go first (a stable sort)
            order = torch.argsort(converged.to(torch.int8), dim=1, stable=True)[:, :block]
            residual = residual.gather(1, order[:, :, None].expand(-1, -1, n))
        q = _orthonormalise(residual, both[:, :k, :n], generator)
        both[:, k : k + block, :n], both[:, k : k + block, n:] = q, operator.apply_rows(q)
        small[:, : k + block, k : k + block] = both[:, : k + block, :n] @ both[
            :, k : k + block, n:
        ].transpose(1, 2)
        k += block
    return None
