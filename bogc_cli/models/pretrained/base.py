"""What every pretrained-capable encoder shares: its backbone, which of its blocks are frozen, input
standardisation, and where its weights came from.

Freezing (``freeze`` in ``model.encoders.<m>``): ``true`` freezes every backbone parameter; ``N`` the
parameters of the backbone's first ``N`` blocks (``units``, defined per family: torchvision ResNets:
stem (conv1 + bn1), layer1, layer2, layer3, layer4; torchvision ViTs: patch embedding with class token
and positions, then each encoder layer; torchvision models with ``features``: each of its stages;
timm: its coarse parameter groups (``group_matcher(coarse=True)``, the groups timm's layer-wise
learning-rate decay uses: stem, then stages or blocks); Hugging Face: embeddings, then each layer).
Frozen parameters get ``requires_grad = False``, so no optimiser holds them and no method's rule
touches them; every module whose parameters are all frozen stays in eval mode even while the model
trains (``train`` is overridden), so BatchNorm running statistics and dropout of frozen parts do not
change either: frozen parameters and buffers are bit-identical after training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bogc_cli.errors import UserError


class PretrainedEncoder(nn.Module):
    """A backbone ``[B, *shape] -> [B, out_dim]`` with frozen blocks, optional standardisation of its input
    (``mean``/``std`` per channel) and a ``source`` (family, file, sha256) for environment.json.

    ``what``: the recipe key of the encoder (``model.encoders.image``), for messages. ``pretrained``: whether
    the backbone's weights were (or, when the model is rebuilt to load a
    checkpoint, will be) read from a file: its parameters are the ones ``optim.backbone_lr`` applies to.
    """

    def __init__(self, backbone: nn.Module, out_dim: int, units: list[list[str]] | None, freeze: bool | int,
                 source: dict[str, Any], pretrained: bool, describe: str,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 what: str = "model.encoders"):
        super().__init__()
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.source = dict(source)
        self.pretrained = pretrained
        frozen = frozen_parameter_names(backbone, units, freeze, describe, what)
        for name, p in backbone.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
        self.frozen_modules = fully_frozen_modules(backbone)
        self.source["frozen_parameters"] = sum(p.numel() for n, p in backbone.named_parameters() if n in frozen)
        self.source["parameters"] = sum(p.numel() for p in backbone.parameters())
        if mean is not None:
            self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)
            self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)
        self.standardise = mean is not None

    def train(self, mode: bool = True) -> "PretrainedEncoder":
        """As ``nn.Module.train``, but the fully frozen modules stay in eval mode (see module doc)."""
        super().train(mode)
        if mode:
            for name in self.frozen_modules:
                self.backbone.get_submodule(name).eval()
        return self

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` standardised per channel with the weights' mean and std (when ``standardise``)."""
        if not self.standardise:
            return x
        return (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters that came from the weights file (empty when trained from scratch)."""
        return [p for p in self.backbone.parameters() if p.requires_grad] if self.pretrained else []


def frozen_parameter_names(backbone: nn.Module, units: list[list[str]] | None, freeze: bool | int,
                           describe: str, what: str = "model.encoders") -> set[str]:
    """The parameter names ``freeze`` covers: all of them (``True``), none (``False``/0), or those of the first
    ``freeze`` ``units`` (lists of parameter names). ``UserError`` when N exceeds the blocks there are, or
    when the architecture has no block definition (``units`` None)."""
    names = [n for n, _ in backbone.named_parameters()]
    if freeze is True:
        return set(names)
    if freeze is False or freeze == 0:
        return set()
    if units is None:
        raise UserError(f"{what}.freeze: {freeze} counts blocks, which are defined for ResNets, ViTs, models with "
                        f"`features`, timm and Hugging Face models, not for {describe}: use freeze: true (all) or "
                        "false")
    units = [u for u in units if u]
    if freeze > len(units):
        raise UserError(f"{what}.freeze: {freeze}, but {describe} has {len(units)} blocks (the first holds {_first(units[0])}, "
                        f"the last {_first(units[-1])}): give at most {len(units)}, or true for the whole backbone")
    return {n for unit in units[:freeze] for n in unit}


def fully_frozen_modules(backbone: nn.Module) -> list[str]:
    """Names of the outermost modules all of whose parameters (at least one) are frozen ("" = the backbone)."""
    out: list[str] = []
    for name, module in backbone.named_modules():
        if any(name == o or name.startswith(o + ".") for o in out if o) or "" in out:
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def units_by_prefix(backbone: nn.Module, groups: list[tuple[str, ...]]) -> list[list[str]]:
    """One unit per tuple of prefixes: the parameter names equal to a prefix or below it (``prefix.``)."""
    names = [n for n, _ in backbone.named_parameters()]
    return [[n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)] for prefixes in groups]


def _first(unit: list[str]) -> str:
    return unit[0].rsplit(".", 1)[0] if unit else "-"


__all__ = ["PretrainedEncoder", "frozen_parameter_names", "fully_frozen_modules", "units_by_prefix"]
