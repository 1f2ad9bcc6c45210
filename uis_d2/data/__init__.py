"""Datasets: class-agnostic and semantic registration (at import), the embedded synthetic data."""

# Imported for their side effect: registering the detectron2 dataset names.
from uis_d2.data import datasets, semantic_datasets  # noqa: F401
