"""Optimisers and learning-rate schedules from the recipe's ``optim`` block.

Schedules are stepped once per epoch by the train loop (``scheduler.step()`` after each
epoch), and the learning rate of each epoch is logged, so a schedule that never steps shows.

Pretrained encoders (``model.encoders.<m>`` with ``weights`` or ``path``) may learn at a rate of their
own, ``optim.backbone_lr``: their trainable parameters then form a second parameter group, named
``backbone`` (the first, ``model``, holds the rest at ``optim.lr``). The schedule scales both alike
(a step or cosine schedule multiplies each group's own initial rate). Frozen parameters are in no group.
"""

from __future__ import annotations

import torch

from bogc_cli.errors import UserError
from bogc_cli.recipe import OptimBlock


def build_optimizer(params, cfg: OptimBlock, fused: bool = False, backbone=()) -> torch.optim.Optimizer:
    """The optimiser over the trainable ``params``; ``backbone``: those of pretrained encoders, at
    ``cfg.backbone_lr`` when it is set. ``fused``: one kernel for the whole update (CUDA) instead of a few
    per parameter tensor. ``UserError`` when ``backbone_lr`` is set but no pretrained parameter trains."""
    params = [p for p in params if p.requires_grad]
    groups: list[dict] = [{"params": params, "name": "model"}]
    if cfg.backbone_lr is not None:
        check_backbone_lr(cfg, backbone)
        ids = {id(p) for p in backbone if p.requires_grad}
        groups = [{"params": [p for p in params if id(p) not in ids], "name": "model"},
                  {"params": [p for p in params if id(p) in ids], "name": "backbone", "lr": cfg.backbone_lr}]
        groups = [g for g in groups if g["params"]]
    kernel = {"fused": True} if fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kernel)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)


def check_backbone_lr(cfg: OptimBlock, backbone) -> None:
    """``UserError`` when ``optim.backbone_lr`` is set but no parameter of ``backbone`` (those of the pretrained
    encoders) trains; checked when the run's parts are built, before anything is written."""
    if cfg.backbone_lr is not None and not any(p.requires_grad for p in backbone):
        raise UserError("optim.backbone_lr is set, but no pretrained encoder has a parameter to train (none has "
                        "weights or path in model.encoders, or all are frozen): remove optim.backbone_lr")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimBlock, epochs: int):
    if cfg.schedule == "step":
        if cfg.milestones:
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.min_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
