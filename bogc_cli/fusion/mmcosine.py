"""``mmcosine``: Multi-Modal Cosine loss.

Xu, Feng, Zhang & Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced Audio-Visual
Fine-Grained Learning", ICASSP 2023. Reference code: GeWu-Lab/MMCosine_ICASSP23, ``main_CD.py``
(``--mmcosine True``); GeWu-Lab/BalanceBenchmark ``balancemm/trainer/MMCosine_trainer.py``
re-implements it.

The fusion head is a linear concat head whose weight ``W`` ``[C, sum_m d_m]`` is read per modality:
``W_m`` ``[C, d_m]`` is the block that multiplies modality m's features ``z_m`` ``[B, d_m]``. Both are
L2-normalised (each feature row, and each class's weight row ``w_{m,c}``), so modality m's logits are
scaled cosines and the fused logits their sum:

    o_m = s * cos(z_m, w_{m,c})  (= s * normalize(z_m) @ normalize(W_m, rows).T),    f = sum_m o_m

trained with ``CE(f, y)``. No bias (the reference's ``fc_out`` has one but the cosine logits never use
it). ``adapt_model`` replaces the fusion head with :class:`CosineConcatHead`, so validation, ``eval``
and ``missing-modality`` predict with ``f`` too; with ``model.unimodal_logits: fusion-slices`` the
unimodal logits are the ``o_m`` (as BalanceBenchmark's), with separate heads they are probes on
detached features (as joint's).

Hyper-parameters (``method.*``): ``scaling`` ``s`` (10: the reference's ``--scaling`` default and its
README command; BalanceBenchmark's config uses 15).

Deviations: the reference's validation predicts with the plain concat output ``z W^T + b`` (its
``valid`` rebuilds ``o_a``, ``o_v`` as cosines but takes ``softmax(out)`` of the model's output, whose
bias was never trained): here, as in the paper and BalanceBenchmark, the prediction is ``f``. The
reference's optional NCE term (``--lam``, default 0: off) is not implemented. Its README command uses
its "gated" fusion module (cosines on gated features); the concat form (its default
``--fusion_method``) is what is implemented. No epoch window (the reference has none; BalanceBenchmark's
0-80 covers its 30 epochs).

Reference protocol (CREMA-D, ``main_CD.py`` defaults): ResNet-18 audio and visual encoders from
scratch, SGD lr 1e-3, momentum 0.9, weight decay 1e-4, step decay x0.1 every 100 epochs, 200 epochs,
batch 32 (``recipes/cremad/mmcosine.yaml``). Any M >= 1 (BalanceBenchmark runs three); no batch
statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, linear_concat_reason
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class MMCosineOptions(StrictModel):
    scaling: float = Field(10.0, gt=0, description="scale s of every modality's cosine logits")


def cosine_logits(z: torch.Tensor, weight: torch.Tensor, scaling: float) -> torch.Tensor:
    """``s * cos(z_i, w_c)``: features ``[B, d]`` and class weights ``[C, d]`` -> ``[B, C]`` (each row of both
    L2-normalised, eps 1e-12 as ``F.normalize``)."""
    return scaling * F.normalize(z, dim=1) @ F.normalize(weight, dim=1).T


class CosineConcatHead(nn.Module):
    """MMCosine's fusion head: ``forward(feats)`` = ``sum_m s cos(z_m, W_m)`` for the ordered features
    ``M x [B, d_m]`` -> ``[B, C]``; ``slice_logits(feats)`` -> the per-modality terms ``M x [B, C]``.

    ``net`` is one bias-free ``nn.Linear(sum d_m, C)`` whose weight columns are split into the blocks
    ``W_m`` in ``dims``' order."""

    def __init__(self, dims: list[int], num_classes: int, scaling: float):
        super().__init__()
        self.net = nn.Linear(sum(dims), num_classes, bias=False)
        self.dims = list(dims)
        self.scaling = scaling

    def blocks(self) -> list[torch.Tensor]:
        return list(self.net.weight.split(self.dims, dim=1))

    def slice_logits(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [cosine_logits(z, w, self.scaling) for z, w in zip(feats, self.blocks())]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(self.slice_logits(feats)).sum(0)


class MMCosine(Method):
    name = "mmcosine"
    summary = "fused logits = sum over modalities of s * cos(features, class weights of the concat head's block)"
    Options = MMCosineOptions
    modality_note = "any M: one cosine term per modality, summed"
    fidelity = ("follows GeWu-Lab/MMCosine_ICASSP23 main_CD.py --mmcosine True (concat fusion, scaling 10); "
                "deviation: predicts with the cosine logits also at validation (the reference's valid uses the "
                "plain concat output); the optional NCE term (--lam, default 0) is not implemented")

    @classmethod
    def check_config(cls, options: MMCosineOptions, recipe) -> str | None:
        return linear_concat_reason("mmcosine", "normalises the blocks of a linear concat fusion head", recipe.model)

    @classmethod
    def adapt_model(cls, options: MMCosineOptions, model) -> None:
        dims = getattr(model.fusion_head, "dims", None)
        if dims is None or not getattr(model.fusion_head, "is_linear", False):
            raise UserError("method mmcosine needs model.fusion: concat with model.fusion_hidden: 0")
        like = model.fusion_head.net.weight
        model.fusion_head = CosineConcatHead(dims, model.num_classes, options.scaling).to(like.device, like.dtype)

    def losses(self, out, labels):
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}


METHOD = MMCosine
