"""Optimisers and learning-rate schedules from the recipe's ``optim`` block.

Schedules are stepped once per epoch by the train loop (``scheduler.step()`` after each
epoch), and the learning rate of each epoch is logged, so a schedule that never steps shows.
"""

from __future__ import annotations

import torch

from bogc_cli.recipe import OptimBlock


def build_optimizer(params, cfg: OptimBlock, fused: bool = False) -> torch.optim.Optimizer:
    """``fused``: one kernel for the whole update (CUDA) instead of a few per parameter tensor."""
    params = [p for p in params if p.requires_grad]
    kernel = {"fused": True} if fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kernel)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimBlock, epochs: int):
    if cfg.schedule == "step":
        if cfg.milestones:
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.min_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
