"""The Trainer's optimiser: detectron2's SGD, or Adam (``SOLVER.OPTIMIZER``).

detectron2's ``build_optimizer`` (v0.6 and main) builds SGD only, and its yacs config has no
optimiser key; COMUS trains its DeepLab with Adam (lr 6e-5, default betas). Adam gets the same
parameter groups (``get_default_optimizer_params``: norm and bias weight decay and learning
rate factors) and the same optional gradient clipping as detectron2's SGD.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_sgd_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

OPTIMIZERS = ("SGD", "Adam")


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER's optimiser for ``model``."""
    name = cfg.SOLVER.OPTIMIZER
    if name == "SGD":
        return build_sgd_optimizer(cfg, model)
    if name != "Adam":
        raise ValueError(f"SOLVER.OPTIMIZER = {name!r}: must be one of {list(OPTIMIZERS)}")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    return maybe_add_gradient_clipping(cfg, torch.optim.Adam)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )
