"""Per-modality encoders. Each maps a batch ``[B, *shape]`` to features ``[B, out_dim]``.

- ``mlp``: vectors ``[B, D]`` (any shape is flattened).
- ``cnn-small``: spectrograms ``[B, C, F, T]`` or images ``[B, C, H, W]``; video
  ``[B, T, C, H, W]`` has its frames folded into the batch and features averaged over time.
- ``transformer``: sequences ``[B, T, D]`` (MOSEI/MOSI features): a small Transformer encoder,
  mean-pooled over the steps that are not all-zero padding.
- ``resnet18``: torchvision's ResNet-18 from scratch (no downloaded weights), stem adapted
  to the input's channel count (1 for spectrograms), 512-d features, video as above.
- ``text-transformer``: tokenised text ``[B, 2, L]`` (ids, attention mask; ``data/cache.py``): learned
  token and position embeddings, a small Transformer encoder, the mean over the kept tokens.

Pretrained encoders (``resnet18`` with ``weights``, ``torchvision:<arch>``, ``timm:<arch>``, ``hf``) are
built by ``models/pretrained``; ``build_encoder`` dispatches on the recipe's choice
(``models/encoder_options.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import EncoderSpec, as_spec


class MLPEncoder(nn.Module):
    """``[B, *shape]`` -> ``[B, feature_dim]``: ``layers`` linear layers with ReLU."""

    def __init__(self, in_dim: int, feature_dim: int = 128, hidden_dim: int = 256, layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [feature_dim]
        blocks: list[nn.Module] = [nn.Flatten()]
        for i in range(layers):
            blocks += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU(inplace=True)]
            if dropout and i < layers - 1:
                blocks.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*blocks)
        self.out_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FramesFolded(nn.Module):
    """Apply a 2-D encoder to video ``[B, T, C, H, W]`` frame by frame and average over T."""

    def __init__(self, frame_encoder: nn.Module):
        super().__init__()
        self.frame_encoder = frame_encoder
        self.out_dim = frame_encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        feats = self.frame_encoder(x.flatten(0, 1))
        return feats.view(b, t, -1).mean(dim=1)


class SmallCNN(nn.Module):
    """``[B, C, H, W]`` -> ``[B, feature_dim]``: conv3x3-BN-ReLU-maxpool blocks, average pool to a
    ``pool x pool`` grid, linear.

    The grid keeps the coarse layout of the input (where in time and frequency energy lies),
    which spoken-digit spectrograms need: global pooling (``pool=1``) loses it.
    """

    def __init__(self, in_channels: int, feature_dim: int = 128, channels: list[int] = (32, 64, 128),
                 dropout: float = 0.0, pool: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.proj = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(prev * pool * pool, feature_dim),
                                  nn.ReLU(inplace=True))
        self.out_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.features(x)))


class ResNet18Encoder(nn.Module):
    """torchvision ResNet-18 without its classifier: ``[B, C, H, W]`` -> ``[B, 512]``."""

    def __init__(self, in_channels: int):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _transformer_body(d_model: int, heads: int, layers: int, dropout: float, feature_dim: int
                      ) -> tuple[nn.TransformerEncoder, nn.Sequential]:
    """The sequence and text encoders' shared parts: ``layers`` pre-norm Transformer encoder layers
    (``heads`` heads, feed-forward 2 x ``d_model``, batch first) and the output block applied to the pooled
    ``[B, d_model]``: LayerNorm, linear to ``feature_dim``, ReLU."""
    layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=dropout,
                                       batch_first=True, norm_first=True)
    encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return encoder, nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, feature_dim), nn.ReLU(inplace=True))


class SequenceTransformer(nn.Module):
    """``[B, T, D]`` -> ``[B, feature_dim]``: linear projection to ``d_model``, learned positions,
    ``layers`` pre-norm Transformer encoder layers (4 heads), mean over the non-padding steps
    (a step whose features are all zero is padding, as in the aligned MOSEI/MOSI pickles), linear."""

    def __init__(self, steps: int, in_dim: int, feature_dim: int = 128, d_model: int = 64, layers: int = 2,
                 dropout: float = 0.0, heads: int = 4):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        self.position = nn.Parameter(torch.zeros(1, steps, d_model))
        self.encoder, self.out = _transformer_body(d_model, heads, layers, dropout, feature_dim)
        self.out_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = (x == 0).all(dim=-1)  # [B, T]
        padding = padding & ~padding.all(dim=1, keepdim=True)  # an all-zero sequence keeps every step
        h = self.encoder(self.proj(x) + self.position[:, : x.shape[1]], src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        return self.out((h * keep).sum(dim=1) / keep.sum(dim=1))


class TextTransformer(nn.Module):
    """``[B, 2, L]`` token ids (row 0) and attention mask (row 1) -> ``[B, feature_dim]``: token embeddings
    (``vocab_size`` x ``d_model``, the padding id's row kept at zero) plus learned positions, ``layers``
    pre-norm Transformer encoder layers (4 heads) that attend to the kept tokens only, the mean over the
    kept tokens, LayerNorm, linear, ReLU. A text without any token (a missing modality filled by
    zero-input) attends over its padding and pools to a zero vector, so every such text gets one
    learned "no text" feature."""

    def __init__(self, vocab_size: int, steps: int, feature_dim: int = 128, d_model: int = 64, layers: int = 2,
                 dropout: float = 0.0, heads: int = 4, pad_id: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.position = nn.Parameter(torch.zeros(1, steps, d_model))
        nn.init.normal_(self.position, std=0.02)
        self.encoder, self.out = _transformer_body(d_model, heads, layers, dropout, feature_dim)
        self.out_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, keep = x[:, 0].long(), x[:, 1] > 0.5                     # [B, L], [B, L]
        padding = ~keep & keep.any(dim=1, keepdim=True)               # an empty text attends over every step
        h = self.encoder(self.embed(ids) + self.position[:, : ids.shape[1]], src_key_padding_mask=padding)
        weight = keep.unsqueeze(-1).to(h.dtype)
        return self.out((h * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1))


def _channels(spec: ModalitySpec) -> int:
    return spec.shape[1] if spec.kind == "video" else spec.shape[0]


def _build_mlp(spec: ModalitySpec, cfg) -> nn.Module:
    in_dim = 1
    for s in spec.shape:
        in_dim *= s
    return MLPEncoder(in_dim, cfg.feature_dim, cfg.hidden_dim, cfg.mlp_layers, cfg.dropout)


def _build_cnn_small(spec: ModalitySpec, cfg) -> nn.Module:
    return SmallCNN(_channels(spec), cfg.feature_dim, list(cfg.cnn_channels), cfg.dropout, cfg.cnn_pool)


def _build_resnet18(spec: ModalitySpec, cfg) -> nn.Module:
    return ResNet18Encoder(_channels(spec))


def _build_transformer(spec: ModalitySpec, cfg) -> nn.Module:
    return SequenceTransformer(spec.shape[0], spec.shape[1], cfg.feature_dim, d_model=cfg.hidden_dim // 4 or 16,
                               layers=cfg.mlp_layers, dropout=cfg.dropout)


def _build_text_transformer(spec: ModalitySpec, cfg) -> nn.Module:
    return TextTransformer(spec.vocab_size, spec.shape[-1], cfg.feature_dim, d_model=cfg.hidden_dim // 4 or 16,
                           layers=cfg.mlp_layers, dropout=cfg.dropout, pad_id=int((spec.tokenizer or {}).get("pad_id", 0)))


ENCODERS: dict[str, tuple[Callable, tuple[str, ...], str]] = {
    "mlp": (_build_mlp, ("vector", "sequence", "audio", "image", "video"),
            "fully connected; options model.feature_dim, model.hidden_dim, model.mlp_layers, model.dropout"),
    "cnn-small": (_build_cnn_small, ("audio", "image", "video"),
                  "fast CPU CNN; options model.feature_dim, model.cnn_channels, model.cnn_pool, model.dropout"),
    "transformer": (_build_transformer, ("sequence",),
                    "small Transformer over [T, D] sequences, mean over non-padding steps; d_model = "
                    "model.hidden_dim / 4 (64), layers = model.mlp_layers (2), model.feature_dim, model.dropout"),
    "resnet18": (_build_resnet18, ("audio", "image", "video"),
                 "torchvision ResNet-18 from scratch, 512-d, 1-channel stem for spectrograms; with weights: FILE, "
                 "torchvision's ResNet-18 from that state dict (see torchvision:<arch>)"),
    "text-transformer": (_build_text_transformer, ("text",),
                         "text from scratch: token + position embeddings, small Transformer over the kept tokens, "
                         "masked mean; d_model = model.hidden_dim / 4 (64), layers = model.mlp_layers (2), "
                         "model.feature_dim, model.dropout; vocabulary from the cache's tokenizer"),
}

DEFAULT_ENCODER = {"audio": "cnn-small", "image": "cnn-small", "video": "resnet18", "vector": "mlp",
                   "sequence": "transformer", "text": "text-transformer"}


def build_encoder(choice: str | EncoderSpec, spec: ModalitySpec, cfg, load: bool = True, what: str = "model.encoders"
                  ) -> nn.Module:
    """Build the encoder ``choice`` (a name or a ``model.encoders.<m>`` block) for a modality; video inputs get
    their frames folded. ``load``: read pretrained weights from their files (False when a checkpoint will
    fill the model); ``what``: the recipe key, for messages. ``UserError`` for an encoder that cannot
    take the modality's kind, and for every problem with a weights file (``models/pretrained``)."""
    choice = as_spec(choice)
    from_family = choice.family != "scratch" and (choice.pretrained or choice.name != "resnet18")
    if not from_family and choice.name not in ENCODERS:
        raise UserError(f"{what}: {choice.name!r} is not an encoder; valid: {', '.join(ENCODERS)}, "
                        "torchvision:<arch>, timm:<arch>, hf")
    if from_family:
        from bogc_cli.models.pretrained import FAMILIES, build_pretrained

        kinds = FAMILIES[choice.family][1]
    else:
        builder, kinds, _ = ENCODERS[choice.name]
    if spec.kind not in kinds:
        valid = [n for n, (_, k, _) in ENCODERS.items() if spec.kind in k]
        raise UserError(f"{what}: encoder {choice.name!r} cannot encode {spec.kind} inputs; use one of {valid}"
                        + (" or hf (a local transformers model)" if spec.kind == "text" else ""))
    frames = spec.kind == "video" and choice.name != "mlp"
    inner = ModalitySpec("image", spec.shape[1:], spec.dtype) if frames else spec
    encoder = build_pretrained(choice, inner, what, load) if from_family else builder(inner, cfg)
    return FramesFolded(encoder) if frames else encoder
