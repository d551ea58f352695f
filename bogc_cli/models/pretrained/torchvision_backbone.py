"""torchvision classification models as encoders: ``resnet18`` with ``weights``, or ``torchvision:<arch>``.

The architecture is ``torchvision.models.get_model(arch, weights=None)`` (torchvision never downloads
here); the weights come from the state-dict file given (a ``torch.save(model.state_dict())`` of that
architecture, with or without its classifier). The classifier, the model's last ``nn.Linear``, is
replaced by ``Identity``, so the encoder returns the features it took: ``[B, in_features]`` (ResNet-18:
512, ResNet-50: 2048, ViT-B/16: 768). An input with other than 3 channels (a 1-channel spectrogram) gets a
first convolution for its channel count whose pretrained weights are adapted by timm's rule
(``weights.adapt_input_conv``: summed over RGB for one channel). 3-channel inputs are standardised
with the ImageNet mean and std that torchvision's weights expect (``normalize``; inputs arrive in
[0, 1], uint8 pixels divided by 255).
"""

from __future__ import annotations

from torch import nn

from bogc_cli.errors import UserError
from bogc_cli.models.pretrained.base import PretrainedEncoder, units_by_prefix
from bogc_cli.models.pretrained.weights import load_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionEncoder(PretrainedEncoder):
    """``[B, C, H, W]`` -> ``[B, out_dim]``: a headless torchvision model."""

    def forward(self, x):
        return self.backbone(self.prepare_input(x))


def build_torchvision(arch: str, in_channels: int, weights: str | None, freeze: bool | int, normalize: bool | None,
                      what: str, load: bool = True) -> TorchvisionEncoder:
    """Build torchvision's ``arch`` for ``in_channels`` inputs, headless; from ``weights`` when given and ``load``
    (``load`` False: the architecture only, for a checkpoint to fill). ``what``: the recipe key, for messages."""
    import torchvision
    from torchvision import models

    known = models.list_models(module=models)
    if arch not in known:
        raise UserError(f"{what}: torchvision has no classification model {arch!r}; e.g. "
                        f"{', '.join(n for n in known if n.startswith(('resnet', 'vit_', 'efficientnet_b0')))}")
    net = models.get_model(arch, weights=None)
    head = _last(net, nn.Linear)
    if head is None:
        raise UserError(f"{what}: torchvision's {arch} has no final linear classifier to remove; choose a model "
                        "whose classifier is a linear layer (ResNets, ViTs, EfficientNets, ...)")
    out_dim = net.get_submodule(head).in_features
    _replace(net, head, nn.Identity())
    first_conv = _first_conv(net, arch, what)
    if in_channels != 3:
        _replace(net, first_conv, _conv_like(net.get_submodule(first_conv), in_channels))
    source = {"family": "torchvision", "arch": arch, "torchvision": torchvision.__version__, "freeze": freeze}
    load_weights_file(net, weights, load, source, what, f"weights of torchvision's {arch}", ignore=(head,),
                      first_conv=f"{first_conv}.weight")
    standardise = (weights is not None and in_channels == 3) if normalize is None else normalize
    if standardise and in_channels != 3:
        raise UserError(f"{what}: normalize standardises RGB inputs with ImageNet's mean and std, but the input has "
                        f"{in_channels} channel(s): remove normalize")
    return TorchvisionEncoder(net, out_dim, torchvision_units(net), freeze, source, weights is not None,
                              f"torchvision's {arch}", *((IMAGENET_MEAN, IMAGENET_STD) if standardise else ()),
                              what=what)


def torchvision_units(net: nn.Module) -> list[list[str]] | None:
    """Blocks for ``freeze: N`` (see ``base``): ResNets, ViTs, models with ``features``; else None."""
    from torchvision.models import VisionTransformer

    if hasattr(net, "conv1") and all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        return units_by_prefix(net, [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)])
    if isinstance(net, VisionTransformer):
        layers = [(f"encoder.layers.{name}",) for name, _ in net.encoder.layers.named_children()]
        return units_by_prefix(net, [("conv_proj", "class_token", "encoder.pos_embedding"), *layers])
    if isinstance(getattr(net, "features", None), nn.Sequential):
        return units_by_prefix(net, [(f"features.{name}",) for name, _ in net.features.named_children()])
    return None


def _last(net: nn.Module, kind: type) -> str | None:
    names = [n for n, m in net.named_modules() if isinstance(m, kind)]
    return names[-1] if names else None


def _first_conv(net: nn.Module, arch: str, what: str) -> str:
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise UserError(f"{what}: torchvision's {arch} has no 2-D convolution to take images; choose another model")
    return names[0]


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None)


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


__all__ = ["TorchvisionEncoder", "build_torchvision", "torchvision_units"]
