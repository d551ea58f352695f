"""Hugging Face ``transformers`` models from a local directory as encoders: ``{name: hf, path: DIR}``.

``DIR`` is what ``model.save_pretrained(DIR)`` writes: ``config.json`` and ``model.safetensors`` (or
``pytorch_model.bin``, or shards with their index). The model is
``AutoModel.from_pretrained(DIR, local_files_only=True)`` (never a download); an encoder-decoder model
contributes its encoder. Which input it takes decides the modality it fits: ``input_ids`` (BERT,
RoBERTa, DistilBERT, ...) a ``text`` modality, ``pixel_values`` (ViT, ...) an ``image`` (or ``video``,
frame by frame) modality.

Text: batches carry ``[B, 2, L]`` (ids, attention mask; ``data/cache.py``); the model runs on
``input_ids`` and ``attention_mask``. Features (``pooling``):

- ``mean`` (default): the mean of ``last_hidden_state`` over the positions the attention mask keeps
  (all positions for images); a text with no token (a missing modality filled by zero-input) gives a
  zero vector;
- ``cls``: ``last_hidden_state`` at the first position ([CLS] for BERT);
- ``pooler``: the model's ``pooler_output`` (BERT: tanh(W h_[CLS] + b)), for models that have a pooler.

Features are ``config.hidden_size`` wide. Checked when the model is built: the directory and its
files, the architecture's weights (a key of the model missing from the file is an error; keys of
heads the base model does not use are left, as transformers does), the modality's kind against the
model's input, and, for text, that the cache's token ids fit the model's vocabulary and positions
(``ModalitySpec.tokenizer``; the word vocabulary of a cache prepared without ``--tokenizer`` is
refused). Vision inputs are standardised with ``preprocessor_config.json``'s ``image_mean`` /
``image_std`` when the directory has them (``normalize``).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.pretrained.base import PretrainedEncoder
from bogc_cli.models.pretrained.weights import READ_ERRORS, file_sha256, refuse_lfs_pointer
from bogc_cli.optional import require

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


class HFEncoder(PretrainedEncoder):
    """``[B, 2, L]`` token ids + mask (text) or ``[B, C, H, W]`` pixels -> ``[B, hidden_size]``."""

    def __init__(self, *args, text: bool, pooling: str, interpolate: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.text, self.pooling, self.interpolate = text, pooling, interpolate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.text:
            ids, mask = x[:, 0].long(), x[:, 1] > 0.5
            out = self.backbone(input_ids=ids, attention_mask=mask.long())
        else:
            extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
            out = self.backbone(pixel_values=self.prepare_input(x), **extra)
            mask = None
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        h = out.last_hidden_state
        if h.dim() == 4:  # convolutional vision models: [B, C, h, w]
            return h.mean(dim=(2, 3)) if self.pooling == "mean" else h[:, :, 0, 0]
        if self.pooling == "cls":
            return h[:, 0]
        if mask is None:
            return h.mean(dim=1)
        keep = mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def build_hf(path: str, spec: ModalitySpec, freeze: bool | int, pooling: str | None, normalize: bool | None,
             what: str, load: bool = True) -> HFEncoder:
    """The transformers model in directory ``path`` as the encoder of a modality described by ``spec``."""
    directory = Path(path)
    _check_dir(directory, what, load)
    transformers = require("transformers", f"{what}: name hf")
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what}: {directory / 'config.json'} is not a transformers model configuration "
                        f"({type(exc).__name__}: {_first_line(exc)}); save the model with save_pretrained") from None
    pooling = pooling or "mean"
    source = {"family": "transformers", "path": str(directory), "model_type": config.model_type,
              "transformers": transformers.__version__, "pooling": pooling, "freeze": freeze}
    if load:
        net = _load(transformers, directory, what, pooling)
        source["weights_sha256"] = {p.name: file_sha256(p) for p in sorted(directory.iterdir())
                                    if p.is_file() and p.suffix in (".safetensors", ".bin")}
    else:
        net = transformers.AutoModel.from_config(config)
    if getattr(net.config, "is_encoder_decoder", False):
        net = net.get_encoder()
    text = net.main_input_name == "input_ids"
    if net.main_input_name not in ("input_ids", "pixel_values"):
        raise UserError(f"{what}: the model in {directory} takes {net.main_input_name!r}; bogc feeds token ids "
                        "(text models) or pixel values (vision models)")
    _check_kind(spec, text, directory, what)
    if pooling == "pooler" and getattr(net, "pooler", None) is None:
        raise UserError(f"{what}: pooling pooler, but the {config.model_type} model in {directory} has no pooler: "
                        "use pooling mean or cls")
    stats, interpolate = (), False
    if text:
        _check_tokens(spec, net.config, directory, what)
    else:
        stats = _vision_stats(directory, spec, normalize, what)
        interpolate = "interpolate_pos_encoding" in inspect.signature(net.forward).parameters
        _check_pixels(spec, net.config, interpolate, directory, what)
    return HFEncoder(net, _width(net.config, directory, what), _units(net), freeze, source, True,
                     f"the {config.model_type} model in {directory}", *stats, text=text, pooling=pooling,
                     interpolate=interpolate, what=what)


def _check_dir(directory: Path, what: str, load: bool) -> None:
    if not directory.is_dir():
        why = "does not exist" if not directory.exists() else "is a file"
        raise UserError(f"{what}: path {directory} {why}: give the local directory of a transformers model (what "
                        "model.save_pretrained(DIR) writes: config.json and model.safetensors); nothing is downloaded")
    if not (directory / "config.json").is_file():
        raise UserError(f"{what}: {directory} has no config.json: it is not a saved transformers model (expected "
                        "config.json and model.safetensors or pytorch_model.bin, as save_pretrained writes them)")
    if load and not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{what}: {directory} has config.json but no weights: expected one of "
                        f"{', '.join(WEIGHT_FILES)}")


def _load(transformers, directory: Path, what: str, pooling: str):
    """``AutoModel.from_pretrained`` with every key of the model found in the file (pooler aside when unused).
    ``UserError`` for a Git LFS pointer, a corrupt, truncated or empty weights file, and weights of another
    configuration."""
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in (".safetensors", ".bin"):
            refuse_lfs_pointer(path, what)
    try:
        net, info = transformers.AutoModel.from_pretrained(str(directory), local_files_only=True,
                                                           output_loading_info=True)
    except READ_ERRORS as exc:
        raise UserError(f"{what}: the weights in {directory} cannot be loaded as its config.json describes "
                        f"({type(exc).__name__}: {_first_line(exc)}): a weights file there is corrupt, truncated or "
                        "of another configuration; save config and weights together with save_pretrained") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if pooling == "pooler" or ".pooler." not in f".{k}")
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        keys = [*missing, *[str(m) for m in mismatched]]
        raise UserError(f"{what}: the weights in {directory} do not hold every parameter its config.json describes: "
                        f"{len(keys)} missing or of another shape ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); "
                        "save config and weights together with save_pretrained")
    return net


def _check_kind(spec: ModalitySpec, text: bool, directory: Path, what: str) -> None:
    if text and spec.kind != "text":
        raise UserError(f"{what}: {directory} holds a text model (token ids), but this modality is {spec.kind}: use "
                        "it for a text modality")
    if not text and spec.kind not in ("image", "video"):
        raise UserError(f"{what}: {directory} holds a vision model (pixel values), but this modality is {spec.kind}: "
                        "use it for an image or video modality")


def _check_tokens(spec: ModalitySpec, config, directory: Path, what: str) -> None:
    tok = spec.tokenizer or {}
    if tok.get("kind") == "word":
        raise UserError(f"{what}: this text was tokenised with the word vocabulary built from train (prepared without "
                        f"--tokenizer), whose ids mean nothing to the model in {directory}: prepare it again with "
                        f"`bogc prepare ... --tokenizer {directory}`, or use name text-transformer")
    vocab, limit = spec.vocab_size, getattr(config, "vocab_size", None)
    if limit is not None and vocab > limit:
        raise UserError(f"{what}: the text's tokenizer ({tok.get('path', 'unknown')}) has {vocab} tokens, more than the "
                        f"{limit} of the model in {directory}: prepare with `--tokenizer {directory}`")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and spec.shape[-1] > positions:
        raise UserError(f"{what}: texts are {spec.shape[-1]} tokens long, but the model in {directory} takes at most "
                        f"{positions}: prepare with --max-length {positions} or less")


def _check_pixels(spec: ModalitySpec, config, interpolate: bool, directory: Path, what: str) -> None:
    channels, size = spec.shape[-3], spec.shape[-2:]
    want = getattr(config, "num_channels", None)
    if want is not None and channels != want:
        raise UserError(f"{what}: images have {channels} channel(s), the model in {directory} takes {want}")
    side = getattr(config, "image_size", None)
    if side is not None and not interpolate and list(size) != ([side, side] if isinstance(side, int) else list(side)):
        raise UserError(f"{what}: images are {size[0]}x{size[1]}, the model in {directory} takes {side}: prepare at "
                        "that size")


def _vision_stats(directory: Path, spec: ModalitySpec, normalize: bool | None, what: str) -> tuple:
    path = directory / "preprocessor_config.json"
    stats = None
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
            if cfg.get("image_mean") is not None and cfg.get("image_std") is not None:
                stats = (tuple(cfg["image_mean"]), tuple(cfg["image_std"]))
        except (ValueError, TypeError):
            raise UserError(f"{what}: {path} is not valid JSON") from None
    if normalize is None:
        normalize = stats is not None and len(stats[0]) == spec.shape[-3]
    if normalize and (stats is None or len(stats[0]) != spec.shape[-3]):
        raise UserError(f"{what}: normalize needs image_mean and image_std for {spec.shape[-3]} channel(s) in "
                        f"{path}: add them, or remove normalize")
    return stats if normalize else ()


def _width(config, directory: Path, what: str) -> int:
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise UserError(f"{what}: cannot tell the feature size of the {config.model_type} model in {directory} "
                    "(its config has no hidden_size)")


def _units(net) -> list[list[str]]:
    """Blocks for ``freeze: N``: the parameters before the first numbered layer (embeddings), then each layer."""
    units: dict[int, list[str]] = {-1: []}
    seen_layer = False
    for name, _ in net.named_parameters():
        match = LAYER.search(name)
        if match:
            units.setdefault(int(match.group(1)), []).append(name)
            seen_layer = True
        elif not seen_layer:
            units[-1].append(name)
    return [units[k] for k in sorted(units)]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


__all__ = ["HFEncoder", "build_hf"]
