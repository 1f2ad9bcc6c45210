"""Class-agnostic evaluation: COCO AP/AR with one class, and recall by instance count."""

from uis_d2.evaluation.coco_agnostic import METRIC_KEYS, evaluate_agnostic
from uis_d2.evaluation.evaluator import ClassAgnosticEvaluator
from uis_d2.evaluation.recall_by_count import BUCKET_LABELS, RecallByCount, recall_by_instance_count

__all__ = [
    "BUCKET_LABELS",
    "METRIC_KEYS",
    "ClassAgnosticEvaluator",
    "RecallByCount",
    "evaluate_agnostic",
    "recall_by_instance_count",
]
