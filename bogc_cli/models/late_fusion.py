"""Late fusion: the fused prediction is the mean of the unimodal heads' logits.

LFM's and the greedy learner's reference models have no fusion layer: each modality has its own
linear classifier and the prediction averages their logits (``(o_a + o_v) / 2``). A method that
trains this way installs :class:`UnimodalMean` as ``model.fusion_head`` in its ``adapt_model``, so
validation, ``bogc eval`` and ``missing-modality`` predict with the same rule.
"""

from __future__ import annotations

import torch
from torch import nn


class UnimodalMean(nn.Module):
    """``forward(feats)``: the model's ordered features ``M x [B, d_m]`` -> ``mean_m head_m(z_m)`` ``[B, C]``.

    ``heads``: the model's ``unimodal_heads`` (a ``ModuleDict`` keyed by modality, in ``modalities``'
    order). They are held without being registered, so their parameters stay owned (and checkpointed)
    once, by ``model.unimodal_heads``; this module has no parameters of its own."""

    def __init__(self, heads: nn.ModuleDict, modalities: list[str]):
        super().__init__()
        missing = [m for m in modalities if m not in heads]
        if missing:
            raise ValueError(f"late fusion needs a unimodal head per modality; none for {missing}")
        self._heads = (heads,)
        self.modalities = list(modalities)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        heads = self._heads[0]
        return torch.stack([heads[m](z) for m, z in zip(self.modalities, feats)]).mean(0)


__all__ = ["UnimodalMean"]
