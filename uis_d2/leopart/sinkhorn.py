"""Leopart's targets: balanced soft assignments of tokens to prototypes (SEED_SYSTEMS.md 3.4).

Sinkhorn-Knopp spreads the batch's tokens evenly over the prototypes, which is what keeps the
clustering objective from collapsing onto one prototype. Small batches give a poor estimate of
that balance, so a queue of earlier teacher embeddings joins the problem once it is full.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Soft assignments (B, K) of B samples with prototype ``scores`` (B, K).

    ``Q = exp(scores / eps)^T`` normalised to sum 1, then ``iterations`` rounds of rows
    scaled to sum 1/K and columns to 1/B; finally every sample's column is normalised to sum 1.
    Computed in float64 after subtracting the maximum, which the normalisation cancels, so that
    eps = 0.05 cannot overflow.
    """
    logits = scores.double() / epsilon
    q = torch.exp(logits - logits.max()).t()  # (K, B)
    q /= q.sum()
    num_prototypes, num_samples = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * num_prototypes
        q /= q.sum(dim=0, keepdim=True) * num_samples
    q /= q.sum(dim=0, keepdim=True)
    return q.t().to(scores.dtype)


class EmbeddingQueue(nn.Module):
    """A FIFO of teacher embeddings (rows), used once every slot was written.

    Buffers, so that a checkpoint resumes with the queue it was saved with.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def is_full(self) -> bool:
        return len(self.embeddings) > 0 and int(self.filled) >= len(self.embeddings)

    @torch.no_grad()
    def push(self, rows: torch.Tensor) -> None:
        """Add ``rows`` (N, dim) at the front; the oldest fall off the end."""
        size = len(self.embeddings)
        if size == 0 or len(rows) == 0:
            return
        rows = rows[:size].to(self.embeddings)
        self.embeddings.copy_(torch.cat([rows, self.embeddings[: size - len(rows)]]))
        self.filled.add_(len(rows)).clamp_(max=size)
