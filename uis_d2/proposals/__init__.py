"""Offline pseudo-mask generators (registration by import)."""

from uis_d2.proposals import free_mask, maskcut, spectral_generator  # noqa: F401  (registration)
from uis_d2.proposals.base import (
    PSEUDO_MASK_GENERATOR_REGISTRY,
    ProposalGenerator,
    Proposals,
    build_pseudo_mask_generator,
)

__all__ = [
    "PSEUDO_MASK_GENERATOR_REGISTRY",
    "ProposalGenerator",
    "Proposals",
    "build_pseudo_mask_generator",
]
