"""Datasets: class-agnostic registration (at import) and the embedded synthetic data."""

from uis_d2.data import datasets  # noqa: F401  (registers the detectron2 dataset names)
