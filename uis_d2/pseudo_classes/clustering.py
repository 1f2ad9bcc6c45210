"""Region embeddings -> K pseudo-classes, as MaskDistill and COMUS cluster their objects.

- ``kmeans`` (MaskDistill, ref ``utils/cluster.py``): each dimension divided by its standard
  deviation (``scipy.cluster.vq.whiten``: a constant dimension is left as it is), rows
  L2-normalised, then k-means. The reference's MiniBatchKMeans is replaced by full-batch Lloyd
  steps (scikit-learn is no run-time dependency), greedy k-means++ seeding, one restart.
- ``spectral`` (COMUS, ref ``clustering/cluster.py``, scikit-learn's ``SpectralClustering``
  with ``affinity="nearest_neighbors"``): the 0/1 graph of each point's ``n_neighbors`` (30)
  nearest points by Euclidean distance on the raw embeddings, the point itself counted among
  them, symmetrised ``A = (G + G^T) / 2``; the ``K`` leading eigenvectors of the normalised
  Laplacian, rescaled by ``D^-1/2``, the first (constant) one kept; k-means with 10 restarts on
  the rows. As scipy's ``csgraph.laplacian`` (which scikit-learn uses), the diagonal of A is
  ignored: the self-loop only takes up one of the 30 places.

k-means here clusters points of any width (the proposals' ``spectral.kmeans`` clusters the
first k coordinates of eigenvector rows only) and reuses that module's greedy k-means++ seeding,
tolerance and canonical renumbering. An emptied cluster keeps its centre, so with fewer distinct
points than K some clusters stay empty (``cluster_sizes`` shows them; callers warn).

The outlier filter (COMUS, ``get_core_samples``) drops, per cluster, the ``share`` of members
with the largest cosine distance to the cluster's centre (the mean of its members) in the space
that was clustered: the whitened, normalised features for ``kmeans``, the spectral embedding for
``spectral``. It drops exactly ``floor(share * n + 1e-9)`` of a cluster of n (so clusters of
fewer than 1 / share members lose none); ties go by annotation order, the earlier one first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch

from uis_d2.proposals.spectral import KMEANS_TOLERANCE, canonical_labels, kmeans_plus_plus

METHODS = ("kmeans", "spectral")
# The references' choices, used when a caller does not override them.
DEFAULT_RESTARTS = {"kmeans": 1, "spectral": 10}  # MaskDistill: one trial; COMUS: n_init 10
DEFAULT_FILTER_SHARE = {"kmeans": 0.0, "spectral": 0.2}  # only COMUS filters
N_NEIGHBORS = 30  # COMUS
KMEANS_ITERS = 300  # scikit-learn's max_iter
_DENSE_MAX_NODES = 2000  # exact eigh up to here, Lanczos (ARPACK) above
_KNN_CHUNK_ELEMENTS = 1 << 25  # distances per chunk of the neighbour search (128 MB)


@dataclass
class Clustering:
    labels: np.ndarray  # (N,) cluster ids in [0, K), numbered by first appearance
    space: np.ndarray  # (N, d) the points k-means clustered (the filter's distances live here)
    num_clusters: int

    @property
    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_clusters)


def whiten(x: np.ndarray) -> np.ndarray:
    """Each column divided by its standard deviation; a constant column stays as it is."""
    std = x.std(axis=0)
    return x / np.where(std > 0, std, 1.0)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def kmeans(
    points: np.ndarray, k: int, restarts: int, seed: int, iters: int = KMEANS_ITERS
) -> np.ndarray:
    """(N, d) -> (N,) labels in [0, k) of the restart of least inertia, numbered by first
    appearance; each restart is seeded by greedy k-means++ and runs Lloyd steps until the
    centres move less than scikit-learn's tolerance (1e-4 of the mean variance)."""
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k = {k} on {n} points: k must be in 1..{n}")
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(k, restarts, 2 + int(math.log(k)), generator=generator)
    seeds = kmeans_plus_plus(x.T.expand(restarts, dim, n), torch.full((restarts,), k), uniform)
    tolerance = KMEANS_TOLERANCE * float(x.var(dim=0, correction=0).mean())
    norms = x.square().sum(1)
    best_labels, best_inertia = None, math.inf
    for centres in seeds:
        labels, inertia = _lloyd(x, norms, centres, iters, tolerance)
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return canonical_labels(best_labels[None], k)[0].numpy()


def _lloyd(
    x: torch.Tensor, norms: torch.Tensor, centres: torch.Tensor, iters: int, tolerance: float
) -> tuple[torch.Tensor, float]:
    """Lloyd steps from ``centres`` (k, d); returns the labels and the inertia."""
    k = centres.shape[0]
    for _ in range(iters):
        labels = _nearest(x, centres)[0]
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)[:, None]
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        shift = float((moved - centres).square().sum())
        centres = moved
        if shift <= tolerance:
            break
    labels, scores = _nearest(x, centres)
    return labels, float((scores + norms).clamp_min(0).sum())


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's nearest centre and its squared distance minus the point's squared norm."""
    scores = centres.square().sum(1)[None] - 2 * (x @ centres.T)
    values, labels = scores.min(dim=1)
    return labels, values


def knn_connectivity(
    points: np.ndarray, n_neighbors: int, device: torch.device | str = "cpu"
) -> scipy.sparse.csr_matrix:
    """COMUS's graph: ``(G + G^T) / 2`` of the 0/1 matrix G of each point's ``n_neighbors``
    nearest points (Euclidean, itself included; all points when there are fewer). The search
    runs in chunks of rows on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    n = x.shape[0]
    k = min(n_neighbors, n)
    norms = x.square().sum(1)
    chunk = max(1, _KNN_CHUNK_ELEMENTS // n)
    neighbours = []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=x.device)
        distances = norms[rows, None] - 2 * (x[rows] @ x.T) + norms[None]
        distances[torch.arange(len(rows), device=x.device), rows] = -1.0  # itself first
        neighbours.append(distances.topk(k, dim=1, largest=False).indices.cpu())
    columns = torch.cat(neighbours).flatten().numpy()
    graph = scipy.sparse.csr_matrix(
        (np.ones(n * k), (np.repeat(np.arange(n), k), columns)), shape=(n, n)
    )
    return (graph + graph.T) * 0.5


def spectral_embedding(
    adjacency: scipy.sparse.spmatrix, n_components: int, seed: int
) -> np.ndarray:
    """(N, n_components): the eigenvectors of the normalised Laplacian of ``adjacency`` with the
    smallest eigenvalues, first the trivial one, each divided by sqrt(degree) and signed so that
    its largest |entry| is positive: scikit-learn's ``spectral_embedding(drop_first=False)``.

    They are the leading eigenvectors of ``D^-1/2 A D^-1/2`` (A without its diagonal, as scipy's
    Laplacian; an isolated node's degree counts as 1, as there): exact ``eigh`` up to
    2,000 nodes, ARPACK's Lanczos (seeded start vector) above.
    """
    adjacency = scipy.sparse.csr_matrix(adjacency, dtype=np.float64, copy=True)
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    sqrt_degree = np.sqrt(np.where(degree > 0, degree, 1.0))
    scale = scipy.sparse.diags(1.0 / sqrt_degree)
    normalised = scale @ adjacency @ scale
    n = normalised.shape[0]
    if n <= _DENSE_MAX_NODES or n_components >= n - 1:
        values, vectors = scipy.linalg.eigh(
            normalised.toarray(), subset_by_index=[n - n_components, n - 1]
        )
    else:
        start = np.random.default_rng(seed).uniform(-1, 1, n)
        values, vectors = scipy.sparse.linalg.eigsh(
            normalised, k=n_components, which="LA", v0=start
        )
    embedding = vectors[:, np.argsort(-values, kind="stable")] / sqrt_degree[:, None]
    peaks = embedding[np.abs(embedding).argmax(axis=0), np.arange(embedding.shape[1])]
    return embedding * np.where(peaks < 0, -1.0, 1.0)


def cluster(
    embeddings: np.ndarray,
    method: str,
    num_clusters: int,
    seed: int,
    restarts: int | None = None,
    n_neighbors: int = N_NEIGHBORS,
    device: torch.device | str = "cpu",
) -> Clustering:
    """Cluster (N, D) region embeddings into ``num_clusters`` with ``method`` (``METHODS``);
    ``restarts`` defaults to the method's reference (``DEFAULT_RESTARTS``)."""
    if method not in METHODS:
        raise ValueError(f"clustering method {method!r}: must be one of {METHODS}")
    n = len(embeddings)
    if num_clusters < 1:
        raise ValueError(f"the number of clusters must be >= 1, got {num_clusters}")
    if num_clusters > n:
        raise ValueError(f"{num_clusters} clusters asked for, but there are only {n} masks")
    if not np.isfinite(embeddings).all():
        rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        raise ValueError(f"{len(rows)} embeddings hold NaN or inf (first rows: {rows[:5]})")
    restarts = DEFAULT_RESTARTS[method] if restarts is None else restarts
    if method == "kmeans":
        space = l2_normalise(whiten(embeddings.astype(np.float64)))
    else:
        graph = knn_connectivity(embeddings, n_neighbors, device)
        space = spectral_embedding(graph, num_clusters, seed)
    labels = kmeans(space, num_clusters, restarts, seed)
    return Clustering(labels, space.astype(np.float32), num_clusters)


def cluster_centres(space: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """(K, d) float64 mean of each cluster's members; zero for an empty cluster."""
    centres = np.zeros((num_clusters, space.shape[1]))
    np.add.at(centres, labels, space.astype(np.float64))
    return centres / np.maximum(np.bincount(labels, minlength=num_clusters), 1)[:, None]


def centre_distances(space: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """(N,) cosine distance of each point to its cluster's centre (the mean of its members);
    1 where the point or the centre is zero."""
    centres = l2_normalise(cluster_centres(space, labels, num_clusters))
    return 1.0 - (l2_normalise(space.astype(np.float64)) * centres[labels]).sum(axis=1)


def outlier_filter(distances: np.ndarray, labels: np.ndarray, share: float) -> np.ndarray:
    """(N,) bool, False for the ``floor(share * n)`` members of each cluster (of n) farthest
    from its centre; ties drop the earlier point first."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the filtered share must be in [0, 1), got {share}")
    keep = np.ones(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        drop = math.floor(share * len(members) + 1e-9)
        farthest = members[np.argsort(-distances[members], kind="stable")[:drop]]
        keep[farthest] = False
    return keep


def assign_to_clusters(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    points: np.ndarray,
    method: str,
    num_clusters: int,
    n_neighbors: int = N_NEIGHBORS,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centre distances of new ``points`` (M, D) under a clustering fitted earlier
    on ``reference`` (N, D) with ``reference_labels``: how MaskDistill's and COMUS's evaluations
    name the masks of images the clustering never saw (their papers' "initial masks" rows are
    measured on val).

    ``kmeans``: the nearest cluster centre (the mean of its members) in the clustered space,
    whitened with the reference's standard deviations. ``spectral`` has no out-of-sample map, so
    each point takes the majority label of its ``n_neighbors`` nearest reference points by
    Euclidean distance on the raw embeddings, as the graph was built (a tie goes to the label
    whose neighbours rank nearer). Distances are cosine distances to the label's centre: in the
    whitened space for ``kmeans``, in the raw embedding space for ``spectral``.
    """
    if method not in METHODS:
        raise ValueError(f"clustering method {method!r}: must be one of {METHODS}")
    if reference.shape[1:] != points.shape[1:]:
        raise ValueError(
            f"embeddings of width {points.shape[1:]} cannot join a clustering of width "
            f"{reference.shape[1:]}: embed them with the same extractor and settings"
        )
    if len(reference) == 0 or len(reference) != len(reference_labels):
        raise ValueError(
            f"{len(reference)} reference embeddings for {len(reference_labels)} labels"
        )
    reference = reference.astype(np.float64)
    points = points.astype(np.float64)
    if method == "kmeans":
        std = reference.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        reference, points = l2_normalise(reference / std), l2_normalise(points / std)
    centres = cluster_centres(reference, reference_labels, num_clusters)
    if method == "kmeans":
        squared = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)
        empty = np.bincount(reference_labels, minlength=num_clusters) == 0
        squared[:, empty] = np.inf  # an empty cluster has no centre to be near
        labels = squared.argmin(axis=1)
    else:
        labels = _neighbour_vote(reference, reference_labels, points, num_clusters, n_neighbors)
    distances = 1.0 - (l2_normalise(points) * l2_normalise(centres)[labels]).sum(axis=1)
    return labels, distances


def _neighbour_vote(
    reference: np.ndarray, labels: np.ndarray, points: np.ndarray, k: int, n_neighbors: int
) -> np.ndarray:
    squared = (points**2).sum(1)[:, None] - 2 * points @ reference.T + (reference**2).sum(1)
    nearest = np.argsort(squared, axis=1, kind="stable")[:, : min(n_neighbors, len(reference))]
    votes = np.zeros((len(points), k))
    rank_weight = np.linspace(1.0, 0.0, nearest.shape[1], endpoint=False) * 1e-6
    np.add.at(votes, (np.arange(len(points))[:, None], labels[nearest]), 1.0 + rank_weight)
    return votes.argmax(axis=1)
