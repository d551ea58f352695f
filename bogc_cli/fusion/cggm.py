"""``cggm``: Classifier-Guided Gradient Modulation.

Guo, Jin, Chen & Zhao, "Classifier-guided Gradient Modulation for Enhanced Multimodal
Learning", NeurIPS 2024. Each modality m has an auxiliary unimodal classifier trained on its
*detached* features; how fast each classifier is improving decides how strongly each encoder
is trained (magnitude), and a loss pulls each modality's share of the fusion gradient towards
its classifier's gradient (direction).

One step, for a batch with labels ``y`` and features ``z_m`` ``[B, d_m]``:

1. Auxiliary classifiers. Here they are the model's unimodal heads (``model.unimodal_heads``,
   linear ``d_m -> C``). Their cross-entropy on ``z_m.detach()`` is back-propagated and the
   model's optimiser is stepped while only the heads hold gradients, so this is the heads' own
   update (the paper gives the classifiers their own optimiser; the model's optimiser already
   holds their parameters, so it serves, with the recipe's lr/schedule, and, as in the reference
   code, without gradient clipping). ``Delta_m`` = the head's accuracy on this batch after that
   update minus before it (the updated head re-applied to the same detached features).
2. Magnitude: ``coeff_m = (sum_j Delta_j - Delta_m) / sum_j Delta_j`` (the coefficients sum to
   ``M - 1``; a modality whose classifier improves more than its share gets less). Not clipped:
   it can be negative or large, as in the paper and the reference code. When
   ``|sum_j Delta_j| < eps`` (e.g. no head changed its batch accuracy) every coefficient falls
   back to 1; ``cggm.guarded`` logs the fraction of such steps.
3. Direction: ``L_dir = lambda * (sum_m |coeff_m| - sum_m coeff_m cos(G_m^uni, G_m^fus)) / M``,
   with ``G_m^uni`` the gradient of head m's loss w.r.t. its weight and ``G_m^fus`` the gradient
   of the fusion loss w.r.t. modality m's block of the linear concat head's weight, both
   ``[C, d_m]``. For linear layers under mean cross-entropy they have the closed form
   ``(softmax(logits) - onehot(y))^T z / B``: ``G_m^uni`` uses the head's logits before its
   update and ``z_m.detach()`` (a fixed target); ``G_m^fus`` uses the fused logits and ``z_m``
   and stays differentiable (no double backward), so ``L_dir`` trains the encoders and the
   fusion head. ``coeff`` is a constant in ``L_dir``.
4. ``L_0 + L_dir`` is back-propagated, every gradient of encoder m is multiplied by
   ``rho * coeff_m``, then the usual clip (``optim.grad_clip``) and optimiser step.

Hyper-parameters (``method.*``): ``rho`` (1.3), ``lam`` (0.1; the reference code uses 0.2 for
CMU-MOSI/IEMOCAP and 0.05 for Food-101), ``eps`` (1e-6, the guard above). The paper clips the
gradient norm at 0.8: a recipe setting (``optim.grad_clip: 0.8``), not part of the method.
Under Adam-type optimisers a scale held constant over steps cancels in the update; what acts
is its variation across steps and modalities, and the clip, which sees the scaled gradients.
Cost: one more forward of the heads and one heads-only optimiser step per batch (~1.1x).
Needs a linear concat fusion head and separate unimodal heads (refused at recipe validation
otherwise). Any M >= 2, as in the paper (which has up to three modalities).

Data-parallel: ``Delta_m``, ``G_m^uni`` and ``G_m^fus`` are the global batch's (each process's
batch means, weighted by its share, in one all-reduce of ``M (1 + 2 C d_m)`` numbers per step);
``G_m^fus`` keeps the gradient of this process's rows, so ``L_dir``'s averaged gradient is one
process's on the whole batch, and every process scales by the same coefficients.

Where this differs from the reference code (zrguo/CGGM): it takes the cosine between the
*weights* of the classifier's and the fusion module's output layers and adds the direction loss
to the *next* step's loss; here, as the paper writes, the cosine is between the two gradients
and the direction loss enters this step's backward. The reference measures ``Delta`` between
consecutive batches (this batch's accuracy before the classifier update minus the previous
batch's); here it is the same-batch change made by this step's classifier update, which carries
no batch-to-batch sampling noise and needs no state across steps (a reconstruction of "the
one-step improvement"). As in the reference, the
modulation runs for the whole training (no epoch window), multiplies every encoder parameter's
gradient (including the part that comes from ``L_dir``) and precedes the clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.models.fusion_heads import ConcatHead
from bogc_cli.models.multimodal import FUSED
from bogc_cli.recipe import StrictModel


class CGGMOptions(StrictModel):
    rho: float = Field(1.3, gt=0, description="scale of every modulated encoder gradient (rho * coeff_m)")
    lam: float = Field(0.1, ge=0, description="weight of the gradient-direction loss")
    eps: float = Field(1e-6, gt=0, description="coefficients fall back to 1 when |sum_j Delta_j| < eps")


def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of ``[B, C]`` logits whose argmax is the ``[B]`` label; scalar float tensor."""
    return (logits.argmax(dim=1) == labels).float().mean()


def cggm_coefficients(deltas: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``coeff_m = (S - Delta_m) / S`` with ``S = sum_j Delta_j``, from ``deltas`` ``[M]``.

    Returns ``(coeff [M], guarded)``: when ``|S| < eps`` the denominator is ~0 and every
    coefficient is 1, with ``guarded`` a scalar bool tensor saying so. Otherwise the
    coefficients sum to ``M - 1``.
    """
    total = deltas.sum()
    guarded = total.abs() < eps
    safe = torch.where(guarded, torch.ones_like(total), total)
    coeff = torch.where(guarded, torch.ones_like(deltas), (total - deltas) / safe)
    return coeff, guarded


def linear_head_gradient(logits: torch.Tensor, labels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Gradient of ``mean CE(logits, labels)`` w.r.t. the weight ``W`` ``[C, d]`` of a linear
    layer ``logits = z @ W.T + b`` (or of ``W``'s block for ``z`` inside a concat layer).

    ``logits`` ``[B, C]``, ``labels`` ``[B]``, ``z`` ``[B, d]`` -> ``(softmax(logits) - onehot(labels))^T z / B``
    ``[C, d]``; differentiable in ``logits`` and ``z``.
    """
    residual = torch.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return residual.T @ z / logits.shape[0]


def gradient_cosine(g_uni: torch.Tensor, g_fus: torch.Tensor) -> torch.Tensor:
    """Cosine between two gradients of the same shape (flattened); scalar, 0 if either is ~0 (eps 1e-8)."""
    return F.cosine_similarity(g_uni.flatten(), g_fus.flatten(), dim=0, eps=1e-8)


def direction_loss(coeff: torch.Tensor, cos: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * (sum_m |coeff_m| - sum_m coeff_m cos_m) / M`` from ``coeff`` and ``cos`` ``[M]``; scalar, >= 0."""
    return lam * (coeff.abs().sum() - (coeff * cos).sum()) / coeff.numel()


class CGGM(Method):
    name = "cggm"
    summary = "encoder m's gradients x rho * coeff_m from classifier accuracy gains, plus a gradient-direction loss"
    Options = CGGMOptions
    min_modalities = 2
    modality_note = "any M >= 2, as in the paper (coefficients sum to M - 1)"

    @classmethod
    def check_config(cls, options: CGGMOptions, recipe) -> str | None:
        model = recipe.model
        if not model.linear_concat_head:
            return ("method cggm compares each classifier's gradient with its block of a linear concat fusion "
                    f"head: set model.fusion: concat and model.fusion_hidden: 0 (they are {model.fusion!r} and "
                    f"{model.fusion_hidden})")
        if model.unimodal_logits != "heads":
            return ("method cggm trains the unimodal heads as its auxiliary classifiers: set "
                    f"model.unimodal_logits: heads (it is {model.unimodal_logits!r})")
        return None

    def __init__(self, options: CGGMOptions, model, ctx):
        super().__init__(options, model, ctx)
        head = model.fusion_head
        if not (isinstance(head, ConcatHead) and head.is_linear) or model.slice_unimodal:
            raise ValueError("cggm needs a linear concat fusion head and separate unimodal heads")

    def losses(self, out, labels):
        """The fusion loss and the heads' losses on detached features (``step`` adds the direction loss)."""
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}

    def step(self, batch: Batch) -> StepResult:
        o, opt, labels = self.options, self.ctx.optimizer, batch.labels
        names = self.model.modalities
        heads = self.model.unimodal_heads
        opt.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            out = self.model(batch.inputs)
            detached = {m: out.features[m].detach() for m in names}
            before = {m: heads[m](detached[m]).float() for m in names}
        fused = self.fused_loss(out, labels)
        probes = {f"probe:{m}": F.cross_entropy(before[m], labels) for m in names}

        # 1. the auxiliary classifiers' own update: only the heads hold gradients for this step
        torch.stack(list(probes.values())).sum().backward()
        self.clip_and_step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad(), self.ctx.autocast():
            after = {m: heads[m](detached[m]).float() for m in names}
        deltas = torch.stack([batch_accuracy(after[m], labels) - batch_accuracy(before[m].detach(), labels)
                              for m in names])
        fused_logits = out.fused_logits.float()
        g_uni = {m: linear_head_gradient(before[m].detach(), labels, detached[m].float()) for m in names}
        g_fus = {m: linear_head_gradient(fused_logits, labels, out.features[m].float()) for m in names}
        # data-parallel: the global batch's statistics, in one all-reduce
        whole = self.batch_mean({"deltas": deltas, **{f"uni:{m}": g_uni[m] for m in names},
                                 **{f"fus:{m}": g_fus[m] for m in names}})
        deltas = whole["deltas"]

        # 2. magnitude coefficients; 3. direction loss
        coeff, guarded = cggm_coefficients(deltas, o.eps)
        cos = torch.stack([gradient_cosine(whole[f"uni:{m}"], self.global_value(g_fus[m], whole[f"fus:{m}"]))
                           for m in names])
        l_dir = direction_loss(coeff, cos, o.lam)

        # 4. main backward, encoder m's gradients times rho * coeff_m, clipped step
        (fused + l_dir).backward()
        scale = dict(zip(names, o.rho * coeff))
        for group in self.model.param_groups():
            if group.role != "encoder":
                continue
            for p in group.params:
                if p.grad is not None:
                    p.grad.mul_(scale[group.modality].to(p.grad.dtype))
        self.clip_and_step()

        logs = {f"loss.{FUSED}": fused.detach(), "loss.direction": l_dir.detach(),
                **{f"loss.{k}": v.detach() for k, v in probes.items()}}
        for i, m in enumerate(names):
            logs[f"cggm.coeff.{m}"] = coeff[i].detach()
            logs[f"cggm.delta.{m}"] = deltas[i].detach()
            logs[f"cggm.cos.{m}"] = cos[i].detach()
        logs["cggm.guarded"] = guarded.float()
        total = (fused + l_dir).detach() + sum(v.detach() for v in probes.values())
        return StepResult(total, out.fused_logits.detach(), logs)


METHOD = CGGM
