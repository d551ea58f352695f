"""``mla``: Multimodal Learning with Alternating unimodal adaptation.

Zhang, Yoon, Bansal & Yao, "Multimodal Representation Learning by Alternating Unimodal
Adaptation", CVPR 2024.

One linear head ``h`` (``d -> C``) is shared by every modality, so every encoder must output
the same feature size ``d`` (``model.feature_dim``; checked when the recipe is validated where
the encoders are known, and when the model is built). ``adapt_model`` replaces the model's
fusion head with :class:`MLAHead` (the shared head plus the inference rule) and its unimodal
heads with parameter-free views of that same head, so the unimodal logits in reports are
exactly ``h(z_m)``, and validation, ``eval`` and ``missing-modality`` all predict with the
inference rule below.

Training, per batch, for each modality m in the model's order (M optimiser steps per batch):

1. encode only m: ``z_m = phi_m(x_m)`` ``[B, d]``; logits ``h(z_m)``; ``L_m = CE(h(z_m), y)``;
2. backward; orthogonal weight modification (OWM, Zeng et al. 2019) of the head: its weight
   gradient ``G`` ``[C, d]`` becomes ``G P``, where the projector ``P`` ``[d, d]`` has been
   built from the head inputs of every earlier sub-step, so the step does not move ``h``'s
   outputs on what it learnt for the modalities before it;
3. optimiser step (``clip_and_step``); then the recursive (regularised least-squares) update
   with the batch-mean head input ``x = mean_i z_m,i`` ``[d]``:

       P <- P - (P x)(P x)^T / (alpha + x^T P x)          (P_0 = I)

   i.e. ``P = (I + sum_seen x x^T / alpha)^-1``: ``P x ~ 0`` for every seen ``x`` once
   ``x^T P x >> alpha``. The denominator is at least ``alpha > 0`` (``x^T P x`` is clamped at
   0 against round-off), so it never divides by ~0. ``P`` is a buffer of the head module and
   is saved with every checkpoint.

Inference: ``sum_m w_m h(z_m)``. With ``fusion: entropy`` (the paper's test-time
uncertainty-based fusion) per sample ``e_m = -sum_c p_mc log p_mc`` with
``p_m = softmax(h(z_m))`` and ``w_m = exp(max_v e_v - e_m) / sum_u exp(max_v e_v - e_u)``
(= softmax over modalities of ``-e_m``: lower entropy, larger weight; after the max-shift the
denominator is >= 1, no eps needed). With ``fusion: fixed`` the weights are equal, ``1/M``.

Hyper-parameters (``method.*``):
- ``fusion`` (``entropy``): inference weights, ``entropy`` or ``fixed`` (equal).
- ``owm`` (``gradient``): ``gradient`` projects the head's weight gradient (the paper);
  ``update`` instead projects the optimiser's actual step of the head weight,
  ``W <- W_before + (W_after - W_before) P``, which equals the paper's rule for plain SGD and
  keeps the orthogonality under Adam(W), momentum and weight decay (which reshape a projected
  gradient); ``none`` disables it, which is what the reference code effectively runs (its
  projection is guarded by a parameter-name check that never matches).
- ``alpha`` (0.1): the OWM regulariser. The paper only calls it a small constant; the
  reference code decays it from 0.1 to 0.01 within every epoch. Constant here.

Data-parallel: each sub-step's batch-mean head input ``x`` is the global batch's, averaged in the
same all-reduce as the sub-step's gradients (no collective added), so every process projects with
the same ``P``.

Reconstructed or generalised: the paper builds modality m's projector from the previous one
and the previous modality's batch-mean feature; applied recursively over sub-steps and batches
(as OWM and the reference code do), ``P`` accumulates every modality's inputs, which is also
how M > 2 modalities are handled (they alternate in the model's modality order). Only the
head's weight is projected, not its bias (OWM projects weights; the reference code too). The
reference code's Frobenius normalisation of ``P`` and its per-epoch alpha schedule are not in
the paper and not done here. Under ``owm: gradient`` the optimiser's momentum, weight decay
and Adam scaling act on the projected gradient, as in the paper's code (SGD with momentum).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.recipe import StrictModel

RESNET18_DIM = 512


class MLAOptions(StrictModel):
    fusion: Literal["entropy", "fixed"] = Field(
        "entropy", description="inference weights of h(z_m): entropy-based per sample (paper) or fixed equal 1/M")
    owm: Literal["gradient", "update", "none"] = Field(
        "gradient", description="orthogonal weight modification of the shared head: project its weight gradient "
        "(paper), project the optimiser's step of it, or none (what the reference code runs)")
    alpha: float = Field(0.1, gt=0, description="OWM regulariser in P <- P - Pxx'P / (alpha + x'Px)")


# ------------------------------------------------------------------ the rule, as pure functions
def owm_update(p: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """One recursive OWM step: ``P - (P x)(P x)^T / (alpha + x^T P x)``.

    ``p``: ``[d, d]`` symmetric positive semi-definite; ``x``: ``[d]`` (a batch-mean input).
    Computed in float64 and symmetrised against round-off; returned in ``p``'s dtype. The
    denominator is ``>= alpha > 0``.
    """
    p64, x64 = p.detach().double(), x.detach().double().reshape(-1)
    k = p64 @ x64
    denom = alpha + torch.dot(x64, k).clamp_min(0.0)
    new = p64 - torch.outer(k, k) / denom
    return ((new + new.T) / 2).to(p.dtype)


def project_gradient(grad: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """OWM-projected weight gradient ``G P``: ``grad`` ``[C, d]``, ``p`` ``[d, d]`` -> ``[C, d]``.

    Each row then satisfies ``(G P) x = G (P x) ~ 0`` for every input ``x`` that built ``P``."""
    return grad @ p.to(grad.dtype)


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per sample: ``[B, C]`` -> ``[B]`` (float32, from log-softmax: no log 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_weights(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The paper's uncertainty-based fusion weights, per sample: ``M x [B, C]`` -> ``[B, M]``.

    ``w_m = exp(max_v e_v - e_m) / sum_u exp(max_v e_v - e_u)``, i.e. a softmax over modalities
    of minus the entropies: rows sum to 1, the least certain modality gets the smallest weight."""
    e = torch.stack([prediction_entropy(z) for z in logits], dim=1)
    return torch.softmax(-e, dim=1)


def equal_weights(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fixed equal fusion weights ``1/M``: ``M x [B, C]`` -> ``[B, M]``."""
    b, m = logits[0].shape[0], len(logits)
    return torch.full((b, m), 1.0 / m, device=logits[0].device)


def fuse(logits: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_m w_m h(z_m)``: ``M x [B, C]`` logits and ``[B, M]`` weights -> ``[B, C]`` (float32)."""
    return (torch.stack([z.float() for z in logits], dim=1) * weights.unsqueeze(-1)).sum(1)


# ------------------------------------------------------------------ the model pieces
class MLAHead(nn.Module):
    """The shared head ``h`` and the inference rule; replaces ``model.fusion_head``.

    ``forward(feats)``: the model's ordered features ``M x [B, d]`` -> fused logits ``[B, C]``.
    ``projector``: the OWM matrix ``P`` ``[d, d]`` (a buffer: checkpointed with the model).
    """

    def __init__(self, dim: int, num_classes: int, fusion: str = "entropy"):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.register_buffer("projector", torch.eye(dim))
        self.fusion = fusion

    def modality_logits(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.linear(z) for z in feats]

    def weights(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fusion weights ``[B, M]`` (no gradient: a test-time rule)."""
        with torch.no_grad():
            return entropy_weights(logits) if self.fusion == "entropy" else equal_weights(logits)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        logits = self.modality_logits(feats)
        return fuse(logits, self.weights(logits))

    @torch.no_grad()
    def observe(self, x: torch.Tensor, alpha: float) -> None:
        """Fold the batch-mean head input ``x`` ``[d]`` into ``P``."""
        self.projector.copy_(owm_update(self.projector, x, alpha))


class SharedHeadView(nn.Module):
    """A unimodal head that is the shared head: ``z`` ``[B, d]`` -> ``h(z)`` ``[B, C]``.

    Holds the head without registering it, so its parameters stay owned (and checkpointed)
    once, by ``model.fusion_head``."""

    def __init__(self, head: MLAHead):
        super().__init__()
        self._head = (head,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._head[0].linear(z)


def _feature_dim_reason(model_cfg) -> str | None:
    """Feature-size clash visible from the recipe alone (resnet18 is 512-d; mlp/cnn-small: feature_dim)."""
    enc = model_cfg.encoders
    names = set(enc.values()) if isinstance(enc, dict) else set()
    if "resnet18" in names and len(names) > 1 and model_cfg.feature_dim != RESNET18_DIM:
        return (f"method mla shares one head across modalities, so every encoder must output the same feature "
                f"size: resnet18 gives {RESNET18_DIM}, the others model.feature_dim={model_cfg.feature_dim}; "
                f"set model.feature_dim: {RESNET18_DIM} or use one encoder kind")
    return None


class MLA(Method):
    name = "mla"
    summary = "alternating unimodal steps through one shared head with OWM gradient projection; entropy-weighted sum"
    Options = MLAOptions
    min_modalities = 2
    modality_note = "alternates over all M modalities in order; P accumulates every modality's inputs"

    @classmethod
    def check_config(cls, options: MLAOptions, recipe) -> str | None:
        m = recipe.model
        if m.unimodal_logits != "heads":
            return ("method mla's unimodal logits are its shared head h(z_m): set model.unimodal_logits: heads "
                    f"(it is {m.unimodal_logits!r})")
        if not m.linear_concat_head:
            return ("method mla replaces the fusion head with its shared linear head: leave model.fusion: concat "
                    f"and model.fusion_hidden: 0 (they are {m.fusion!r}, {m.fusion_hidden})")
        return _feature_dim_reason(m)

    @classmethod
    def adapt_model(cls, options: MLAOptions, model) -> None:
        if model.slice_unimodal:
            raise UserError("method mla needs model.unimodal_logits: heads (its unimodal logits are h(z_m))")
        dims = {m: model.encoders[m].out_dim for m in model.modalities}
        if len(set(dims.values())) != 1:
            raise UserError(f"method mla shares one head across modalities, so every encoder must output the same "
                            f"feature size; they output {dims}: set model.feature_dim to match (resnet18 is "
                            f"{RESNET18_DIM}-d) or use one encoder kind")
        head = MLAHead(next(iter(dims.values())), model.num_classes, options.fusion)
        model.fusion_head = head
        model.unimodal_heads = nn.ModuleDict({m: SharedHeadView(head) for m in model.modalities})

    @property
    def head(self) -> MLAHead:
        return self.model.fusion_head

    def losses(self, out, labels):
        """What the sub-steps minimise, one at a time: ``L_m = CE(h(z_m), y)`` per modality."""
        return {m: F.cross_entropy(z.float(), labels) for m, z in out.unimodal_logits.items()}

    def _substep(self, m: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode only m, one optimiser step on ``CE(h(z_m), y)``; returns detached (logits, loss)."""
        head, o = self.head, self.options
        self.ctx.optimizer.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            z = self.model.encoders[m](batch.inputs[m])
            logits = head.linear(z)
        if self.model.training and torch.is_grad_enabled():
            self.model._track_mean(m, z, None)  # keeps mean-feature fill working, as model.encode would
        loss = F.cross_entropy(logits.float(), batch.labels)
        loss.backward()
        # data-parallel: the global batch's mean head input, in the gradients' all-reduce
        x = self.batch_mean({"x": z.detach().float().mean(0)}, gradients=True)["x"]
        weight = head.linear.weight
        if o.owm == "gradient" and weight.grad is not None:
            weight.grad = project_gradient(weight.grad, head.projector)
        before = weight.detach().clone() if o.owm == "update" else None
        self.clip_and_step()
        if before is not None:
            with torch.no_grad():
                weight.copy_(before + project_gradient(weight - before, head.projector))
        if o.owm != "none":
            head.observe(x, o.alpha)
        return logits.detach(), loss.detach()

    def step(self, batch: Batch) -> StepResult:
        logits, losses = {}, {}
        for m in self.model.modalities:
            logits[m], losses[m] = self._substep(m, batch)
        self.ctx.optimizer.zero_grad(set_to_none=True)
        ordered = [logits[m] for m in self.model.modalities]
        w = self.head.weights(ordered)
        logs = {f"mla.loss.{m}": v for m, v in losses.items()}
        logs.update({f"mla.weight.{m}": w[:, i].mean() for i, m in enumerate(self.model.modalities)})
        logs["mla.p_trace"] = self.head.projector.diagonal().float().mean()  # 1: head free, 0: fully constrained
        total = torch.stack([v.float() for v in losses.values()]).sum()
        return StepResult(total, fuse(ordered, w), logs)


METHOD = MLA
