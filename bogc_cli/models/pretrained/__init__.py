"""Encoders that can start from pretrained weights read from local files: torchvision, timm, Hugging Face.

``build_pretrained(choice, spec, what, load)`` builds the encoder a ``model.encoders.<m>`` block asks for
(``models/encoder_options.py``): ``resnet18`` with ``weights`` and ``torchvision:<arch>``
(``torchvision_backbone``), ``timm:<arch>`` (``timm_backbone``), ``hf`` (``hf_backbone``). Every file is
read and checked here, when the model is built, before a run writes anything; ``load=False`` builds
the architecture alone (a finished run's checkpoint holds the weights). Each encoder is a
``PretrainedEncoder`` (``base``): frozen blocks, eval mode for frozen parts, its ``source`` for
environment.json.
"""

from __future__ import annotations

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import EncoderSpec
from bogc_cli.models.pretrained.base import PretrainedEncoder

#: The pretrained families: family -> (the names it takes, the kinds it encodes, its options for ``bogc list``).
FAMILIES = {
    "torchvision": ("torchvision:<arch>", ("audio", "image", "video"),
                           "any torchvision classification model (resnet50, vit_b_16, ...), headless; weights: a "
                           "state-dict file (resnet18 + weights is torchvision:resnet18); freeze: true | N (ResNet: "
                           "stem, layer1-4; ViT: embedding, layers; `features` stages); normalize (ImageNet mean/std "
                           "on RGB, default with weights); 1-channel inputs get the first conv summed over RGB"),
    "timm": ("timm:<arch>", ("audio", "image", "video"),
                    "a timm model (pip install -e \".[pretrained]\"), num_classes=0, never downloads; weights: a "
                    "local checkpoint; freeze: true | N (timm's coarse parameter groups); normalize (the "
                    "checkpoint's mean/std)"),
    "hf": ("hf", ("text", "image", "video"),
           "a transformers model from a local directory (path: DIR with config.json + weights; pip install -e "
           "\".[pretrained]\"), local_files_only; pooling: mean (over the attention mask, default) | cls | pooler; "
           "freeze: true | N (embeddings, then layers); text needs `bogc prepare --tokenizer DIR`"),
}


def build_pretrained(choice: EncoderSpec, spec: ModalitySpec, what: str, load: bool = True) -> PretrainedEncoder:
    """The encoder ``choice`` names for a modality described by ``spec`` (video: ``spec`` is one frame's)."""
    family = choice.family
    if family == "hf":
        from bogc_cli.models.pretrained.hf_backbone import build_hf

        return build_hf(choice.path, spec, choice.freeze, choice.pooling, choice.normalize, what, load)
    if spec.kind not in ("audio", "image"):
        raise UserError(f"{what}: {choice.name} encodes images and spectrograms [C, H, W], not {spec.kind} inputs")
    channels = spec.shape[0]
    if family == "timm":
        from bogc_cli.models.pretrained.timm_backbone import build_timm

        return build_timm(choice.name.removeprefix("timm:"), channels, choice.weights, choice.freeze,
                          choice.normalize, what, load)
    from bogc_cli.models.pretrained.torchvision_backbone import build_torchvision

    return build_torchvision(choice.name.removeprefix("torchvision:"), channels, choice.weights, choice.freeze,
                             choice.normalize, what, load)


__all__ = ["FAMILIES", "PretrainedEncoder", "build_pretrained"]
