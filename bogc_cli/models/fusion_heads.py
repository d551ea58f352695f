"""Fusion heads: features ``{m: [B, d_m]}`` (in the model's modality order) -> logits ``[B, C]``.

- ``concat``: linear (or one hidden layer) on the concatenated features.
- ``sum``: one linear map per modality, logits summed.
- ``film``: FiLM (Perez et al., 2018): the other modalities' features predict a scale and a
  shift applied to the first modality's features, then a linear classifier.
- ``gated``: gated multimodal unit (Arevalo et al., 2017): tanh projections of each modality
  mixed by per-sample softmax gates computed from all features.

Every head's logits are the sum of the outputs of its ``final_linears()`` (the last layer before
the output): BOGC's ``moments: laplace`` puts its posterior on them.
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatHead(nn.Module):
    def __init__(self, dims: list[int], num_classes: int, hidden: int = 0):
        super().__init__()
        total = sum(dims)
        if hidden:
            self.net = nn.Sequential(nn.Linear(total, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Linear(total, num_classes)
        self.dims = dims

    @property
    def is_linear(self) -> bool:
        return isinstance(self.net, nn.Linear)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat(feats, dim=1))

    def final_linears(self) -> list[nn.Linear]:
        return [self.net] if self.is_linear else [self.net[-1]]

    def slice_logits(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """OGM-GE-style unimodal logits: each modality's block of the weight and 1/M of the bias.

        ``z_m @ W[:, block_m].T + b / M``; they sum to the fused logits.
        """
        w, b = self.net.weight, self.net.bias
        out, start = [], 0
        for f, d in zip(feats, self.dims):
            out.append(f @ w[:, start:start + d].T + b / len(self.dims))
            start += d
        return out


class SumHead(nn.Module):
    def __init__(self, dims: list[int], num_classes: int):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([fc(f) for fc, f in zip(self.fcs, feats)]).sum(0)

    def final_linears(self) -> list[nn.Linear]:
        return list(self.fcs)


class FiLMHead(nn.Module):
    def __init__(self, dims: list[int], num_classes: int):
        super().__init__()
        if len(dims) < 2:
            raise ValueError("film fusion needs at least two modalities")
        self.film = nn.Linear(sum(dims[1:]), 2 * dims[0])
        self.fc = nn.Linear(dims[0], num_classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        gamma, beta = self.film(torch.cat(feats[1:], dim=1)).chunk(2, dim=1)
        return self.fc(gamma * feats[0] + beta)

    def final_linears(self) -> list[nn.Linear]:
        return [self.fc]


class GatedHead(nn.Module):
    def __init__(self, dims: list[int], num_classes: int, hidden: int = 128):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.gate = nn.Linear(sum(dims), len(dims))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        h = torch.stack([torch.tanh(p(f)) for p, f in zip(self.proj, feats)], dim=1)  # [B, M, H]
        a = torch.softmax(self.gate(torch.cat(feats, dim=1)), dim=1).unsqueeze(-1)   # [B, M, 1]
        return self.fc((a * h).sum(dim=1))

    def final_linears(self) -> list[nn.Linear]:
        return [self.fc]


FUSION_HEADS = {
    "concat": "linear (or model.fusion_hidden) on concatenated features",
    "sum": "one linear map per modality, logits summed",
    "film": "FiLM: the other modalities scale and shift the first one's features (M >= 2)",
    "gated": "gated multimodal unit: softmax gates over tanh projections",
}


def build_fusion_head(name: str, dims: list[int], num_classes: int, hidden: int = 0) -> nn.Module:
    if name == "concat":
        return ConcatHead(dims, num_classes, hidden)
    if name == "sum":
        return SumHead(dims, num_classes)
    if name == "film":
        return FiLMHead(dims, num_classes)
    if name == "gated":
        return GatedHead(dims, num_classes, hidden or 128)
    raise ValueError(f"unknown fusion head {name!r}")
