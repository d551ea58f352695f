"""One classifier head shared by every modality (MLA's ``h``, ReconBoost's learner head, DI-MML's shared
classifier): its checks and views.

A shared head reads every encoder's feature, so every encoder must output one feature size, and the model's
unimodal logits are that head applied to each feature (``model.unimodal_logits: heads``). The checks run at
recipe validation where the recipe alone shows the clash (``feature_size_reason``) and when the model is
adapted (``shared_feature_size``); both raise or return one message naming the setting to change.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import encoder_names

RESNET18_DIM = 512  # the feature size of the resnet18 encoder (the others: model.feature_dim)


def feature_size_reason(method: str, model_cfg, piece: str = "head") -> str | None:
    """Why ``model_cfg`` (a recipe's model block) cannot give every modality one feature size, or None;
    ``piece`` names what the method shares (its head, its classifier) in the message."""
    enc = model_cfg.encoders
    names = set(encoder_names(enc)) if isinstance(enc, dict) else set()  # entries may be blocks {name, weights, ...}
    if "resnet18" in names and len(names) > 1 and model_cfg.feature_dim != RESNET18_DIM:
        return (f"method {method} shares one {piece} across modalities, so every encoder must output the same "
                f"feature size: resnet18 gives {RESNET18_DIM}, the others model.feature_dim={model_cfg.feature_dim}; "
                f"set model.feature_dim: {RESNET18_DIM} or use one encoder kind")
    return None


def shared_feature_size(method: str, model, piece: str = "head",
                        unimodal: str = "its unimodal logits are its shared head h(z_m)") -> int:
    """The one feature size ``d`` of ``model``'s encoders; ``UserError`` when they differ (naming the shared
    ``piece``) or when the model's unimodal logits are fusion-head slices (``unimodal`` says what they are instead)."""
    if model.slice_unimodal:
        raise UserError(f"method {method} needs model.unimodal_logits: heads ({unimodal})")
    dims = {m: model.encoders[m].out_dim for m in model.modalities}
    if len(set(dims.values())) != 1:
        raise UserError(f"method {method} shares one {piece} across modalities, so every encoder must output the "
                        f"same feature size; they output {dims}: set model.feature_dim to match (resnet18 is "
                        f"{RESNET18_DIM}-d) or use one encoder kind")
    return next(iter(dims.values()))


class SharedHeadView(nn.Module):
    """A unimodal head that is the shared head: ``z`` ``[B, d]`` -> ``h(z)`` ``[B, C]``.

    Holds the head's function without registering its module, so its parameters stay owned (and
    checkpointed) once, by ``model.fusion_head``."""

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self._head = (head,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._head[0](z)


__all__ = ["RESNET18_DIM", "SharedHeadView", "feature_size_reason", "shared_feature_size"]
