"""Training: the detectron2 trainer, FreeSOLO self-training rounds, checkpoint conversion."""

from uis_d2.engine.self_training import run_self_training
from uis_d2.engine.trainer import Trainer, check_runtime

__all__ = ["Trainer", "check_runtime", "run_self_training"]
