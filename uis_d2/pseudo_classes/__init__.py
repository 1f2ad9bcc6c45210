"""Pseudo-classes of discovered masks (MaskDistill, COMUS): region embeddings, clustering with
the outlier filter, the labelled pseudo-label file, and region-level scores against ground
truth. The command line is tools/cluster_pseudo_classes.py."""

from uis_d2.pseudo_classes.clustering import (
    METHODS,
    Clustering,
    assign_to_clusters,
    centre_distances,
    cluster,
    outlier_filter,
)
from uis_d2.pseudo_classes.embeddings import EMBEDDINGS, image_embeddings, stored_embeddings
from uis_d2.pseudo_classes.evaluation import region_classes, region_scores
from uis_d2.pseudo_classes.labels import with_pseudo_classes, write_pseudo_class_file

__all__ = [
    "EMBEDDINGS",
    "METHODS",
    "Clustering",
    "assign_to_clusters",
    "centre_distances",
    "cluster",
    "image_embeddings",
    "outlier_filter",
    "region_classes",
    "region_scores",
    "stored_embeddings",
    "with_pseudo_classes",
    "write_pseudo_class_file",
]
