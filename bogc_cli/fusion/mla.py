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
2. backward; with ``owm`` other than ``none``, orthogonal weight modification (OWM, Zeng et
   al. 2019) of the head: its weight gradient ``G`` ``[C, d]`` becomes ``G P``, where the
   projector ``P`` ``[d, d]`` has been built from the head inputs of every earlier sub-step, so
   the step does not move ``h``'s outputs on what it learnt for the modalities before it;
3. optimiser step (``clip_and_step``); then (with OWM) the recursive (regularised least-squares)
   update with the batch-mean head input ``x = mean_i z_m,i`` ``[d]``:

       P <- P - (P x)(P x)^T / (alpha + x^T P x)          (P_0 = I)

   i.e. ``P = (I + sum_seen x x^T / alpha)^-1``: ``P x ~ 0`` for every seen ``x`` once
   ``x^T P x >> alpha``. The denominator is at least ``alpha > 0`` (``x^T P x`` is clamped at
   0 against round-off), so it never divides by ~0. ``P`` is a buffer of the head module and
   is saved with every checkpoint.

Inference: ``sum_m w_m h(z_m)``. With ``fusion: entropy`` (the test-time uncertainty-based
fusion; the reference's ``--dynamic``) the weights are ``w_m = exp(max_v e_v - e_m) /
sum_u exp(max_v e_v - e_u)`` (= softmax over modalities of ``-e_m``: lower entropy, larger
weight; after the max-shift the denominator is >= 1, no eps needed), where the entropy ``e_m``
is, with ``entropy_over``:

- ``batch`` (default; the reference code, ``calculate_entropy`` in ``main.py``): one entropy per
  modality **per batch**: ``p = softmax`` of ``h(z_m)`` ``[B, C]`` over the batch dimension (each
  class's column normalised over the batch's rows), ``e_m = -sum_{i,c} p_ic log p_ic``, so every
  sample of a batch gets the same weights and a sample's prediction depends on the other
  samples of its batch (and the batch size: ``train.eval_batch_size`` at validation, ``eval`` and
  ``missing-modality``; the reference evaluates in batches of its training batch size, 64, which
  the recipes set);
- ``sample`` (the paper's text, Eq. for the uncertainty of a prediction): per sample, ``p =
  softmax`` over the classes, ``e_m = -sum_c p_c log p_c``.

With ``fusion: fixed`` the weights are equal, ``1/M`` (the reference without ``--dynamic`` uses
0.5/0.5 for two modalities and 0.35/0.25/0.4 for three).

Hyper-parameters (``method.*``):
- ``fusion`` (``entropy``): inference weights, ``entropy`` or ``fixed`` (equal).
- ``entropy_over`` (``batch``): the entropy's scope, above.
- ``owm`` (``none``): the reference code never applies its OWM projection (``GSPlugin.before_update``
  in ``utils/utils.py`` only acts on a parameter named ``module.weight``, and the head it is given
  has ``weight`` and ``bias``), so by default the head is not projected and ``P`` stays ``I``.
  ``gradient`` projects the head's weight gradient (the paper's Eq.); ``update`` instead projects
  the optimiser's actual step of the head weight, ``W <- W_before + (W_after - W_before) P``,
  which equals the paper's rule for plain SGD and keeps the orthogonality under Adam(W),
  momentum and weight decay (which reshape a projected gradient).
- ``alpha`` (0.1): the OWM regulariser. The paper only calls it a small constant; the
  reference code would decay it from 0.1 to 0.01 within every epoch. Constant here.

Reference protocol (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, ``main.py
--gs_flag --dynamic``): audio then visual steps per batch through one ``fc_out``, SGD lr 1e-3,
momentum 0.9, weight decay 1e-4, StepLR 70 x0.1, 100 epochs, batch 64, no clip (``recipes/cremad/
mla.yaml``).

Data-parallel: each sub-step's batch-mean head input ``x`` is the global batch's, averaged in the
same all-reduce as the sub-step's gradients (no collective added), so every process projects with
the same ``P``; the per-batch entropies logged during training are the global batch's (two small
all-reduces).

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
from bogc_cli.fusion.base import Method, StepResult, linear_concat_reason
from bogc_cli.fusion.shared_head import SharedHeadView, feature_size_reason, shared_feature_size
from bogc_cli.schema import StrictModel

class MLAOptions(StrictModel):
    fusion: Literal["entropy", "fixed"] = Field(
        "entropy", description="inference weights of h(z_m): entropy-based or fixed equal 1/M")
    entropy_over: Literal["batch", "sample"] = Field(
        "batch", description="entropy of a modality's predictions over the whole batch, one weight per modality per "
        "batch (reference code), or per sample over the classes (paper)")
    owm: Literal["none", "gradient", "update"] = Field(
        "none", description="orthogonal weight modification of the shared head: none (what the reference code runs), "
        "project its weight gradient (paper), or project the optimiser's step of it")
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


def batch_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The reference's entropy of a batch of predictions: ``[B, C]`` -> scalar.

    ``p = softmax(logits, dim=0)`` (each class's column normalised over the batch's rows) and
    ``-sum_{i,c} p_ic log p_ic`` over the whole batch (float32, from log-softmax: no log 0)."""
    logp = torch.log_softmax(logits.float(), dim=0)
    return -(logp.exp() * logp).sum()


def batch_entropy_weights(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The reference code's fusion weights, one per modality for the whole batch: ``M x [B, C]`` -> ``[B, M]``
    (every row the same): ``softmax`` over modalities of minus each modality's ``batch_entropy``."""
    w = torch.softmax(-torch.stack([batch_entropy(z) for z in logits]), dim=0)
    return w.unsqueeze(0).expand(logits[0].shape[0], -1)


def entropy_weights(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The paper's fusion weights, per sample (``entropy_over: sample``): ``M x [B, C]`` -> ``[B, M]``.

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

    def __init__(self, dim: int, num_classes: int, fusion: str = "entropy", entropy_over: str = "batch"):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.register_buffer("projector", torch.eye(dim))
        self.fusion = fusion
        self.entropy_over = entropy_over

    def modality_logits(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.linear(z) for z in feats]

    def weights(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fusion weights ``[B, M]`` (no gradient: a test-time rule)."""
        with torch.no_grad():
            if self.fusion == "fixed":
                return equal_weights(logits)
            return batch_entropy_weights(logits) if self.entropy_over == "batch" else entropy_weights(logits)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        logits = self.modality_logits(feats)
        return fuse(logits, self.weights(logits))

    @torch.no_grad()
    def observe(self, x: torch.Tensor, alpha: float) -> None:
        """Fold the batch-mean head input ``x`` ``[d]`` into ``P``."""
        self.projector.copy_(owm_update(self.projector, x, alpha))


class MLA(Method):
    name = "mla"
    summary = ("alternating unimodal steps through one shared head (OWM projection optional); entropy-weighted sum "
               "of its unimodal logits")
    Options = MLAOptions
    min_modalities = 2
    modality_note = "alternates over all M modalities in order; P accumulates every modality's inputs"
    fidelity = ("follows Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation main.py --gs_flag "
                "--dynamic: per-batch entropy fusion weights (entropy_over: batch), no OWM projection (owm: none; "
                "the reference's never fires); the paper's per-sample entropy and OWM are options; deviations: fixed "
                "weights 1/M, constant alpha, no Frobenius normalisation of P")

    @classmethod
    def check_config(cls, options: MLAOptions, recipe) -> str | None:
        m = recipe.model
        if m.unimodal_logits != "heads":
            return ("method mla's unimodal logits are its shared head h(z_m): set model.unimodal_logits: heads "
                    f"(it is {m.unimodal_logits!r})")
        return (linear_concat_reason("mla", "replaces the fusion head with its shared linear head", m)
                or feature_size_reason("mla", m))

    @classmethod
    def adapt_model(cls, options: MLAOptions, model) -> None:
        head = MLAHead(shared_feature_size("mla", model), model.num_classes, options.fusion, options.entropy_over)
        model.fusion_head = head
        model.unimodal_heads = nn.ModuleDict({m: SharedHeadView(head.linear) for m in model.modalities})

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
        w = self._global_weights(ordered)
        logs = {f"mla.loss.{m}": v for m, v in losses.items()}
        logs.update({f"mla.weight.{m}": w[:, i].mean() for i, m in enumerate(self.model.modalities)})
        logs["mla.p_trace"] = self.head.projector.diagonal().float().mean()  # 1: head free, 0: fully constrained
        total = torch.stack([v.float() for v in losses.values()]).sum()
        return StepResult(total, fuse(ordered, w), logs)


    def _global_weights(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """The fusion weights ``[B, M]`` of this step's batch; data-parallel, per-batch entropies are the global
        batch's: with a common shift ``k_c`` (the global column mean), ``S_c = sum_i exp(z_ic - k_c)`` and
        ``A_c = sum_i exp(z_ic - k_c) (z_ic - k_c)`` summed over processes give ``e = -sum_c (A_c / S_c - log S_c)``."""
        head = self.head
        if self.ctx.distributed is None or head.fusion != "entropy" or head.entropy_over != "batch":
            return head.weights(logits)
        z = [x.detach().double() for x in logits]
        shift = self.batch_mean({str(i): x.mean(0) for i, x in enumerate(z)})
        e = [torch.exp(x - shift[str(i)]) for i, x in enumerate(z)]
        sums = self.batch_sum({**{f"s{i}": v.sum(0) for i, v in enumerate(e)},
                               **{f"a{i}": (v * (x - shift[str(i)])).sum(0) for i, (v, x) in enumerate(zip(e, z))}})
        entropy = torch.stack([-(sums[f"a{i}"] / sums[f"s{i}"] - sums[f"s{i}"].log()).sum() for i in range(len(z))])
        return torch.softmax(-entropy, dim=0).float().unsqueeze(0).expand(z[0].shape[0], -1)


METHOD = MLA
