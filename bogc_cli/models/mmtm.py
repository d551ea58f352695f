"""Multimodal transfer modules between encoder stages: the greedy learner's cross-modal "bypass".

An MMTM (Joze et al., "MMTM: Multimodal Transfer Module for CNN Fusion", CVPR 2020) squeezes each
modality's activation map to a channel vector (mean over space and frames), maps their
concatenation through one shared layer and one excitation layer per modality, and rescales each
modality's channels by the sigmoid of its excitation. Wu et al. (ICML 2022, nyukat/greedy_multimodal_learning,
``src/model.py``, ``src/balanced_mmtm.py``) place one after ResNet-18's ``layer2``, ``layer3`` and
``layer4`` of two branches; this is their ``MMTM_mitigate`` for any number of modalities and the
encoders of this project:

- ``resnet18``: stages ``[stem + layer1, layer2, layer3, layer4]``, then average pooling;
- ``cnn-small``: one stage per conv block (``model.cnn_channels``), then its pooling and projection;
- ``mlp``: one stage per linear layer (``model.mlp_layers``);
- video: the frame encoder's stages on the folded frames, squeezed over frames too, features averaged
  over frames after the tail (as ``FramesFolded``).

With ``S_m`` stages in modality m's encoder, ``K = min_m S_m - 1`` MMTMs follow each modality's last
``K`` stages (aligned from the output end): two ResNet-18 give the reference's three. Transformer
encoders have no channel maps to squeeze and are refused.

Each MMTM keeps, as buffers (so checkpoints carry them), the running averages over all training
forwards of every modality's batch-mean excitation (the reference's ``running_avg_weight_*``) and
squeeze (for absent modalities, below), and how many batches they average. *Curation* (``caring =
m``): modality m's excitation is replaced by its running average, so m's channels no longer depend
on the other modalities: m's encoder must learn on its own (the reference's ``curation_mode`` with
``caring_modality``). A sample whose modality n is absent (``present`` mask) has n's squeeze replaced
by its running average, so nothing of n's input reaches the others (the reference's
``turnoff_cross_modal_flow`` with average squeeze maps, for its utilisation-rate evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bogc_cli.models.encoders import FramesFolded, MLPEncoder, ResNet18Encoder, SmallCNN


@dataclass
class Staged:
    """An encoder cut into stages: ``stages[i]`` maps an activation to the next; ``channels[i]`` is stage i's
    output channel count; ``tail`` maps the last activation to features ``[N, d]``; ``frames``: a video
    encoder whose frames are folded into the batch."""

    stages: list[Callable[[torch.Tensor], torch.Tensor]]
    channels: list[int]
    tail: Callable[[torch.Tensor], torch.Tensor]
    frames: bool = False


def _resnet(enc: ResNet18Encoder) -> Staged:
    n = enc.net

    def stem(x: torch.Tensor) -> torch.Tensor:
        return n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))

    def tail(h: torch.Tensor) -> torch.Tensor:
        return n.fc(torch.flatten(n.avgpool(h), 1))

    widths = [n.layer1[-1].bn2.num_features, n.layer2[-1].bn2.num_features, n.layer3[-1].bn2.num_features,
              n.layer4[-1].bn2.num_features]
    return Staged([stem, n.layer2, n.layer3, n.layer4], widths, tail)


def _small_cnn(enc: SmallCNN) -> Staged:
    blocks = list(enc.features)
    per = 4  # conv, batch norm, ReLU, max pool
    stages = [nn.Sequential(*blocks[i:i + per]) for i in range(0, len(blocks), per)]
    channels = [blocks[i].out_channels for i in range(0, len(blocks), per)]
    return Staged(stages, channels, lambda h: enc.proj(enc.pool(h)))


def _mlp(enc: MLPEncoder) -> Staged:
    groups: list[list[nn.Module]] = []
    lead: list[nn.Module] = []
    for module in enc.net:
        if isinstance(module, nn.Linear):
            groups.append(lead + [module])
            lead = []
        elif groups:
            groups[-1].append(module)
        else:
            lead.append(module)  # the Flatten before the first linear layer
    channels = [next(m for m in g if isinstance(m, nn.Linear)).out_features for g in groups]
    return Staged([nn.Sequential(*g) for g in groups], channels, lambda h: h)


def staged(encoder: nn.Module) -> Staged | None:
    """``encoder`` cut into stages, or None for an encoder kind that cannot be (transformer)."""
    if isinstance(encoder, FramesFolded):
        inner = staged(encoder.frame_encoder)
        return None if inner is None else Staged(inner.stages, inner.channels, inner.tail, frames=True)
    if isinstance(encoder, ResNet18Encoder):
        return _resnet(encoder)
    if isinstance(encoder, SmallCNN):
        return _small_cnn(encoder)
    if isinstance(encoder, MLPEncoder):
        return _mlp(encoder)
    return None


def squeeze_map(h: torch.Tensor, rows: int) -> torch.Tensor:
    """Channel means per sample: ``[N, C, ...]`` with ``N = rows x frames`` -> ``[rows, C]`` (over space and frames)."""
    return h.reshape(rows, -1, h.shape[1], h[0, 0].numel()).mean(dim=(1, 3))


class MMTM(nn.Module):
    """One MMTM over ``len(dims)`` modalities with ``dims[i]`` channels: ``forward(maps, rows, present, caring,
    reduce)`` rescales each activation ``maps[i]`` ``[N_i, C_i, ...]`` by its excitation ``[rows, C_i]``.

    ``ratio``: the squeeze layer has ``int(2 * sum(dims) / ratio)`` units (the reference's ``dim_out``)."""

    def __init__(self, dims: list[int], ratio: float = 4):
        super().__init__()
        hidden = int(2 * sum(dims) / ratio)
        self.dims = list(dims)
        self.fc_squeeze = nn.Linear(sum(dims), hidden)
        self.fc_excite = nn.ModuleList(nn.Linear(hidden, d) for d in dims)
        for i, d in enumerate(dims):
            self.register_buffer(f"avg_excitation_{i}", torch.zeros(d))
            self.register_buffer(f"avg_squeeze_{i}", torch.zeros(d))
        self.register_buffer("averaged", torch.zeros((), dtype=torch.long))

    def running(self, kind: str, i: int) -> torch.Tensor:
        return getattr(self, f"avg_{kind}_{i}")

    @torch.no_grad()
    def _observe(self, excitation: list[torch.Tensor], squeeze: list[torch.Tensor], reduce) -> None:
        """Fold this batch's means (the global batch's through ``reduce``) into the running averages; a
        non-finite batch leaves them as they are."""
        means = {**{f"e{i}": e.detach().float().mean(0) for i, e in enumerate(excitation)},
                 **{f"s{i}": s.detach().float().mean(0) for i, s in enumerate(squeeze)}}
        if reduce is not None:
            means = reduce(means)
        ok = torch.stack([torch.isfinite(v).all() for v in means.values()]).all()
        n = self.averaged.to(torch.float32)
        for i in range(len(self.dims)):
            for kind, key in (("excitation", f"e{i}"), ("squeeze", f"s{i}")):
                avg = self.running(kind, i)
                new = (means[key].to(avg.dtype) + avg * n) / (n + 1)
                avg.copy_(torch.where(ok, new, avg))
        self.averaged.add_(ok.to(self.averaged.dtype))

    def forward(self, maps: list[torch.Tensor], rows: int, present: list[torch.Tensor | None] | None = None,
                caring: int | None = None, reduce: Callable | None = None) -> list[torch.Tensor]:
        squeeze = [squeeze_map(h, rows) for h in maps]
        used = list(squeeze)
        if present is not None:
            for i, mask in enumerate(present):
                if mask is not None:
                    used[i] = torch.where(mask.view(-1, 1), squeeze[i], self.running("squeeze", i).to(squeeze[i].dtype))
        hidden = torch.relu(self.fc_squeeze(torch.cat(used, dim=1)))
        excitation = [torch.sigmoid(fc(hidden)) for fc in self.fc_excite]
        if self.training and torch.is_grad_enabled():
            self._observe(excitation, squeeze, reduce)
        if caring is not None:
            avg = self.running("excitation", caring).to(excitation[caring].dtype)
            excitation[caring] = avg.unsqueeze(0).expand(rows, -1)
        out = []
        for h, e in zip(maps, excitation):
            frames = h.shape[0] // rows
            scale = e.repeat_interleave(frames, dim=0) if frames > 1 else e
            out.append(h * scale.view(*scale.shape, *([1] * (h.dim() - 2))).to(h.dtype))
        return out


class MMTMCoupling(nn.Module):
    """The encoders run jointly with MMTMs after their last ``K`` stages; installed as ``model.coupling``.

    ``forward(encoders, inputs, masks)`` -> features ``{m: [B, d_m]}`` as the encoders alone would give,
    plus the MMTMs' rescaling. ``caring`` (a modality name or None) and ``reduce`` (a callable turning a dict
    of batch means into the global batch's) are set by the training method for its own forward passes;
    neither is state."""

    def __init__(self, encoders: nn.ModuleDict, modalities: list[str], ratio: float = 4):
        super().__init__()
        views = {m: staged(encoders[m]) for m in modalities}
        unstageable = [m for m, v in views.items() if v is None]
        if unstageable:
            raise ValueError(f"cannot place MMTMs in the encoders of {unstageable}: only resnet18, cnn-small and mlp "
                             "encoders trained from scratch have stages (pretrained and text encoders do not)")
        self.modalities = list(modalities)
        self.positions = min(len(v.stages) for v in views.values()) - 1
        if self.positions < 1:
            raise ValueError("every encoder needs at least two stages for an MMTM between them; stages: "
                             + ", ".join(f"{m} {len(v.stages)}" for m, v in views.items()))
        k = self.positions
        self.mmtm = nn.ModuleList(
            MMTM([views[m].channels[len(views[m].stages) - k + j] for m in modalities], ratio) for j in range(k))
        self.caring: str | None = None
        self.reduce: Callable | None = None

    def forward(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        views = {m: staged(encoders[m]) for m in self.modalities}
        rows = next(iter(inputs.values())).shape[0]
        h = {m: inputs[m].flatten(0, 1) if views[m].frames else inputs[m] for m in self.modalities}
        k = self.positions
        for m in self.modalities:
            for stage in views[m].stages[:len(views[m].stages) - k]:
                h[m] = stage(h[m])
        present = [masks.get(m) for m in self.modalities] if any(v is not None for v in masks.values()) else None
        caring = None if self.caring is None else self.modalities.index(self.caring)
        for j, mmtm in enumerate(self.mmtm):
            for m in self.modalities:
                h[m] = views[m].stages[len(views[m].stages) - k + j](h[m])
            maps = mmtm([h[m] for m in self.modalities], rows, present, caring, self.reduce)
            h = dict(zip(self.modalities, maps))
        feats = {}
        for m in self.modalities:
            z = views[m].tail(h[m])
            feats[m] = z.view(rows, -1, z.shape[-1]).mean(dim=1) if views[m].frames else z
        return feats


__all__ = ["MMTM", "MMTMCoupling", "Staged", "squeeze_map", "staged"]
