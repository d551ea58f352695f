"""timm models as encoders: ``timm:<arch>`` (``timm:resnet10t``, ``timm:vit_tiny_patch16_224``), from scratch
or from a local checkpoint (``weights``).

The model is ``timm.create_model(arch, pretrained=False, num_classes=0, in_chans=C)``: timm is never
asked for pretrained weights, so it never downloads. A ``weights`` file is read here
(``weights.read_state_dict``), its classifier (``pretrained_cfg["classifier"]``) dropped and its first
convolution (``pretrained_cfg["first_conv"]``) adapted to ``C`` channels, as timm's own
``load_pretrained`` does, then loaded strictly, so a checkpoint of another architecture is an error
naming the keys. Features: ``model.num_features`` (what ``num_classes=0`` returns, pooled). 3-channel
inputs are standardised with the checkpoint's ``pretrained_cfg`` mean and std (``normalize``).
``freeze: N`` counts timm's coarse parameter groups (``group_matcher(coarse=True)``: stem, then stages).
"""

from __future__ import annotations

from bogc_cli.errors import UserError
from bogc_cli.models.pretrained.base import PretrainedEncoder
from bogc_cli.models.pretrained.weights import load_weights_file
from bogc_cli.optional import require


class TimmEncoder(PretrainedEncoder):
    """``[B, C, H, W]`` -> ``[B, num_features]``: a timm model without classifier."""

    def forward(self, x):
        return self.backbone(self.prepare_input(x))


def build_timm(arch: str, in_channels: int, weights: str | None, freeze: bool | int, normalize: bool | None,
               what: str, load: bool = True) -> TimmEncoder:
    """Build timm's ``arch`` headless for ``in_channels`` inputs, from ``weights`` when given and ``load``."""
    timm = require("timm", f"{what}: timm:{arch}")
    if not timm.is_model(arch):
        raise UserError(f"{what}: timm has no model {arch!r} (timm {timm.__version__}; `timm.list_models()` lists them)")
    net = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels)
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    source = {"family": "timm", "arch": arch, "timm": timm.__version__, "freeze": freeze}
    first = _names(cfg.get("first_conv"))
    load_weights_file(net, weights, load, source, what, f"weights of timm's {arch}",
                      ignore=_names(cfg.get("classifier")), first_conv=f"{first[0]}.weight" if first else None)
    standardise = (weights is not None and in_channels == 3) if normalize is None else normalize
    if standardise and (in_channels != 3 or "mean" not in cfg):
        raise UserError(f"{what}: normalize standardises RGB inputs with the weights' mean and std; this input has "
                        f"{in_channels} channel(s){'' if 'mean' in cfg else ' and the model states none'}: remove "
                        "normalize")
    from timm.models import group_parameters

    groups = group_parameters(net, net.group_matcher(coarse=True))
    units = [list(names) for _, names in sorted(groups.items())]
    stats = (tuple(cfg["mean"]), tuple(cfg["std"])) if standardise else ()
    return TimmEncoder(net, net.num_features, units, freeze, source, weights is not None, f"timm's {arch}", *stats,
                       what=what)


def _names(value) -> tuple[str, ...]:
    """A pretrained_cfg entry that is a name or a tuple of names, as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


__all__ = ["TimmEncoder", "build_timm"]
