"""Offline pseudo-mask generators (registration by import)."""

from uis_d2.proposals import (  # noqa: F401  (registration)
    foreground_generator,
    free_mask,
    maskcut,
    maskdistill,
    spectral_generator,
)
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
