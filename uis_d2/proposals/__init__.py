"""Offline pseudo-mask generators (registration by import)."""

from uis_d2.proposals import free_mask, spectral_generator  # noqa: F401  (registration)
from uis_d2.proposals.base import (
    PROPOSAL_GENERATOR_REGISTRY,
    ProposalGenerator,
    Proposals,
    build_proposal_generator,
)

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "ProposalGenerator",
    "Proposals",
    "build_proposal_generator",
]
