"""What a recipe says about one modality's encoder: ``model.encoders.<m>``, a name or a block.

A modality's entry is either a name (``resnet18``) or a block::

    model:
      encoders:
        image: {name: resnet18, weights: weights/resnet18.pth, freeze: 3}
        text:  {name: hf, path: models/bert-base-uncased, pooling: cls, freeze: true}
        audio: {name: "timm:resnet10t", weights: weights/resnet10t.pth}

Names (``bogc list`` shows them with their options):

- built in, trained from scratch: ``mlp``, ``cnn-small``, ``transformer``, ``text-transformer``,
  ``resnet18`` (with ``weights``: torchvision's ResNet-18 loaded from that file);
- ``torchvision:<arch>``: any torchvision classification model (``torchvision:resnet50``,
  ``torchvision:vit_b_16``), from scratch or, with ``weights``, from a state-dict file;
- ``timm:<arch>``: a timm model (``timm:resnet10t``), from scratch or from a local checkpoint
  (``weights``); timm is never asked to download;
- ``hf``: a Hugging Face ``transformers`` model from a local directory (``path``: its
  ``config.json`` and weights), text (token ids) or vision (pixels), loaded with
  ``local_files_only=True``.

This module only checks the block's form (which keys go with which names); files are read and
checked when the model is built (``models/pretrained``), before a run writes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_serializer, model_validator

from bogc_cli.schema import StrictModel

#: The from-scratch encoders, by name (``models/encoders.py`` builds them).
BUILT_IN = ("mlp", "cnn-small", "transformer", "text-transformer", "resnet18")
#: Prefixes of the pretrained families' names, and the word for each.
FAMILIES = {"torchvision:": "torchvision", "timm:": "timm"}
HF = "hf"


class EncoderSpec(StrictModel):
    """One modality's encoder as a block (the long form of ``model.encoders.<m>: NAME``)."""

    described_as: ClassVar[str] = "an encoder name or a block of keys (name, weights, path, freeze, ...)"  # in error messages

    name: str = Field(description="encoder: mlp, cnn-small, transformer, text-transformer, resnet18, "
                      "torchvision:<arch>, timm:<arch>, hf")
    weights: str | None = Field(None, description="torchvision / timm / resnet18: a state-dict file (.pt, .pth, "
                                ".bin, .safetensors) to load as pretrained weights")
    path: str | None = Field(None, description="hf: the local directory of a transformers model "
                             "(config.json + model.safetensors or pytorch_model.bin)")
    freeze: bool | Annotated[int, Field(ge=0)] = Field(
        False, description="keep pretrained weights fixed: true = the whole backbone, N = its first N blocks "
        "(ResNet: stem, layer1..4; timm: its coarse parameter groups; hf: embeddings, then layers)")
    pooling: Literal["mean", "cls", "pooler"] | None = Field(
        None, description="hf: mean over the attention mask (default), the first token, or the model's pooler")
    normalize: bool | None = Field(
        None, description="pretrained image models: standardise 3-channel inputs with the weights' mean/std "
        "(default true with weights or path)")

    @model_validator(mode="after")
    def _keys_fit_name(self) -> "EncoderSpec":
        family = encoder_family(self.name)
        if family == "hf":
            if self.path is None:
                raise ValueError("hf needs path: the directory of a transformers model (config.json + weights)")
            if self.weights is not None:
                raise ValueError("hf reads its weights from path; remove weights")
        else:
            if self.path is not None:
                raise ValueError(f"path is for name: hf; {self.name!r} takes weights: FILE")
            if self.pooling is not None:
                raise ValueError(f"pooling is for name: hf, not {self.name!r}")
            if self.weights is not None and family == "scratch" and self.name != "resnet18":
                raise ValueError(f"{self.name!r} is trained from scratch and takes no weights; pretrained weights "
                                 "go with resnet18, torchvision:<arch> or timm:<arch>")
        if self.freeze is not False and not self.pretrained:
            raise ValueError("freeze keeps pretrained weights fixed, but this encoder has none: give weights (or "
                             "path for hf), or remove freeze")
        if self.normalize and not self.pretrained:
            raise ValueError("normalize uses the pretrained weights' mean and std; give weights (or path for hf)")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler):
        """Dumped (a run's saved recipe) without the keys left at their defaults; a bare name as the name."""
        data = {k: v for k, v in handler(self).items() if v is not None and not (k == "freeze" and v is False)}
        return data["name"] if list(data) == ["name"] else data

    @property
    def pretrained(self) -> bool:
        """Whether the encoder starts from weights read from a file (its parameters are the backbone's)."""
        return self.weights is not None or self.path is not None

    @property
    def family(self) -> str:
        return encoder_family(self.name)


def _entry(value):
    """A modality's entry as a block: a name ``resnet18`` is ``{name: resnet18}``."""
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, (dict, EncoderSpec)):
        raise ValueError(f"expected an encoder name (e.g. mlp, resnet18, hf) or a block {{name: ..., weights: ...}}, "
                         f"got {value!r}")
    return value


#: One modality's ``model.encoders`` entry: a name or a block, validated as a block.
EncoderEntry = Annotated[EncoderSpec, BeforeValidator(_entry)]


def encoder_family(name: str) -> str:
    """``scratch`` (built-in names and unknown ones, refused when the model is built), ``torchvision``,
    ``timm`` or ``hf``."""
    if name == HF:
        return "hf"
    for prefix, family in FAMILIES.items():
        if name.startswith(prefix):
            return family
    return "torchvision" if name == "resnet18" else "scratch"


def as_spec(choice: "str | EncoderSpec") -> EncoderSpec:
    """A name or a block, as a block."""
    return choice if isinstance(choice, EncoderSpec) else EncoderSpec(name=choice)


def encoder_names(encoders: "dict[str, str | EncoderSpec] | str | None") -> list[str]:
    """The encoder names a ``model.encoders`` value gives (one per entry; the one name when it is a name)."""
    if encoders is None:
        return []
    if isinstance(encoders, str):
        return [encoders]
    return [as_spec(e).name for e in encoders.values()]


def with_absolute_paths(encoders: dict | str | None) -> dict | str | None:
    """``model.encoders`` (as plain data) with each ``weights`` and ``path`` made absolute, as a run saves its
    recipe (a later ``eval`` or ``--resume`` from another folder finds the same files)."""
    if not isinstance(encoders, dict):
        return encoders
    out = {}
    for m, entry in encoders.items():
        if isinstance(entry, dict):
            entry = {**entry, **{k: str(Path(entry[k]).expanduser().resolve()) for k in ("weights", "path")
                                 if entry.get(k) is not None}}
        out[m] = entry
    return out


__all__ = ["BUILT_IN", "EncoderEntry", "EncoderSpec", "as_spec", "encoder_family", "encoder_names", "with_absolute_paths"]
