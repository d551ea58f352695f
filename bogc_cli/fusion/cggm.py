"""``cggm``: Classifier-Guided Gradient Modulation.

Guo, Jin, Chen & Zhao, "Classifier-guided Gradient Modulation for Enhanced Multimodal
Learning", NeurIPS 2024. Each modality m has an auxiliary classifier trained on its *detached*
features; how fast each classifier's accuracy improves decides how strongly each encoder is
trained (magnitude), and a loss pulls the fusion head towards the classifiers (direction).

Defaults follow the reference code (zrguo/CGGM, ``src/foodtrain.py`` and ``src/msatrain.py``,
flags in ``run/*_run.py``); where the paper's text differs, its form is an option. One step, for
a batch with labels ``y`` and features ``z_m`` ``[B, d_m]``:

1. Auxiliary classifiers: the model's unimodal heads (``model.unimodal_heads``, linear
   ``d_m -> C``) on ``z_m.detach()``. ``acc_m`` = head m's accuracy on this batch *before* its
   update. Their summed cross-entropy is back-propagated (only the heads hold gradients) and
   they take their own step:
   ``classifier_optim: own`` (default, the reference's ``cls_optimizer``): a separate optimiser of
   the recipe's kind (``optim.name``; SGD keeps ``optim.momentum``) with lr ``classifier_lr``
   (5e-4, all reference scripts but BraTS) and weight decay ``classifier_weight_decay`` (3e-3,
   the Food-101 script; the MOSI/IEMOCAP ones use 0), no schedule and **no gradient clipping**
   (the reference clips only the model's parameters); its state is checkpointed with the method.
   ``classifier_optim: model``: the model's optimiser (recipe lr and schedule), clipped by
   ``optim.grad_clip`` like every step of it.
2. ``Delta_m``: ``delta: consecutive`` (default, the reference) = ``acc_m`` of this batch minus
   ``acc_m`` of the previous batch (the heads' accuracy change between consecutive batches; 0
   before the first batch, and carried across epochs, as the reference's ``acc1``).
   ``delta: same-batch`` = the head's accuracy on this batch after its update minus before it
   (the one-step improvement without batch-to-batch sampling noise; needs no state, but with a
   small classifier step it is mostly 0, so the guard below fires and the magnitude rule idles:
   on avdigits, 114 steps with SGD 1e-3 and the model's optimiser for the heads, the guard fired
   on 99 steps against 7 with the defaults; with AdamW 2e-3, 43 against 9).
3. Magnitude: ``coeff_m = (S - Delta_m) / S`` with ``S = sum_j Delta_j`` (the coefficients sum to
   ``M - 1``; a modality whose classifier improves more than its share gets less). Not clipped:
   it can be negative or large, as in the paper and the reference. **Guard**: when ``|S| < eps``
   every coefficient is 1 for that step (no modulation) and ``cggm.guarded`` logs the fraction
   of such steps. The reference instead divides by ``S + 1e-8``: when the accuracy changes
   cancel (``S = 0``, which batch accuracies, multiples of 1/B, do often) its coefficients are
   ``-Delta_m * 1e8``, so one encoder's gradient is multiplied by ~1e7 and, after the clip,
   drowns every other gradient of the step. Deliberate deviation; ``eps`` (1e-6) is below 1/B
   for any batch size, so only an exact cancellation triggers it.
4. Direction: ``direction: weights`` (default, the reference) uses
   ``L_dir = lam * (sum_m |coeff_m| - sum_m coeff_m cos(W_m^cls, W_m^fus)) / M`` with
   ``W_m^cls`` head m's weight (before its update) and ``W_m^fus`` modality m's block of the
   linear concat fusion head's weight, both ``[C, d_m]`` (the reference compares each
   classifier's output layer with the fusion model's output layer, which there has the same
   shape; here the block that reads ``z_m``). It is formed at this step and back-propagated at
   the **next** step, added to that step's fusion loss: its gradient reaches only the fusion
   head's weight (the classifiers' part is discarded, as the reference zeroes their gradients
   before their own backward), evaluated at the weights it was formed with (kept in the
   method's state, so a resumed run continues exactly). No direction loss at the first step.
   ``direction: gradients`` (the paper's text): the cosine is between the gradients
   ``G_m^cls = (softmax(h_m(z_m)) - onehot(y))^T z_m / B`` and ``G_m^fus`` (the same closed form
   of the fusion loss w.r.t. modality m's block, differentiable in ``z_m``), and ``L_dir`` enters
   this step's backward, training the encoders and the fusion head.
5. The fusion loss (plus the direction loss) is back-propagated, every gradient of encoder m is
   multiplied by ``rho * coeff_m``, then the model's clip (``optim.grad_clip``) and step.

Hyper-parameters (``method.*``): ``rho`` (1.3), ``lam`` (0.1; the reference uses 0.05 for
Food-101, 0.2 for CMU-MOSI/IEMOCAP, 0.1 for BraTS), ``eps`` (1e-6), ``delta`` (``consecutive``),
``direction`` (``weights``), ``classifier_optim`` (``own``), ``classifier_lr`` (5e-4),
``classifier_weight_decay`` (3e-3). The reference clips the model's gradient norm at 0.8
(``--clip 0.8``) every step: a recipe setting (``optim.grad_clip: 0.8``), not part of the method.
Under Adam-type optimisers a scale held constant over steps cancels in the update; what acts is
its variation across steps and modalities, and the clip, which sees the scaled gradients.

Other differences from the reference: its classifiers are two transformer layers and an MLP on
each modality's token sequence; here they are the linear unimodal heads on the pooled features.
Cost: one more forward of the heads and one heads-only optimiser step per batch (~1.1x). Needs a
linear concat fusion head and separate unimodal heads (refused at recipe validation otherwise).
Any M >= 2, as in the paper (up to four modalities in the reference's BraTS script).

Task types: classification and regression, as the reference (``src/msatrain.py`` trains CMU-MOSI with
``criterion = L1Loss`` and one output). For regression the classifiers and the fusion head have one output,
every loss is the run's regression loss (``train.regression_loss``, L1 by default as the reference), and
``acc_m`` is the reference's ``train_eval_senti``: the fraction of the batch whose sign is right, positive
(``> 0``) against not positive, zero-labelled rows included. ``direction: gradients`` uses the softmax
cross-entropy's closed-form gradient, so it is classification only (refused otherwise).

Data-parallel: ``acc_m`` (and ``G_m^cls``, ``G_m^fus`` for ``direction: gradients``) are the
global batch's (each process's batch means, weighted by its share, in one all-reduce); the
heads' gradients are averaged before their own step; the weights are the same on every process,
so the direction loss needs no collective and every process scales by the same coefficients.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch
from bogc_cli.fusion.base import Method, StepResult, linear_concat_reason
from bogc_cli.models.fusion_heads import ConcatHead
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class CGGMOptions(StrictModel):
    rho: float = Field(1.3, gt=0, description="scale of every modulated encoder gradient (rho * coeff_m)")
    lam: float = Field(0.1, ge=0, description="weight of the gradient-direction loss")
    eps: float = Field(1e-6, gt=0, description="guard: coefficients are 1 when |sum_j Delta_j| < eps (the reference "
                       "divides by sum + 1e-8 and blows up)")
    delta: Literal["consecutive", "same-batch"] = Field(
        "consecutive", description="accuracy change: between consecutive batches (reference code) or made by this "
        "step's classifier update on this batch")
    direction: Literal["weights", "gradients"] = Field(
        "weights", description="direction loss: cosine of the classifiers' and fusion head's weights, applied at the "
        "next step (reference code), or of their gradients, this step (paper)")
    classifier_optim: Literal["own", "model"] = Field(
        "own", description="the classifiers' optimiser: their own, unclipped (reference code), or the model's")
    classifier_lr: float = Field(5e-4, gt=0, description="learning rate of the classifiers' own optimiser")
    classifier_weight_decay: float = Field(3e-3, ge=0, description="weight decay of the classifiers' own optimiser")


def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor, task: str = "classification") -> torch.Tensor:
    """Classification: the fraction of ``[B, C]`` logits whose argmax is the ``[B]`` label. Regression: the
    fraction of ``[B, 1]`` outputs whose sign agrees with the ``[B]`` target's, positive (``> 0``) against not
    (zrguo/CGGM ``src/eval_metrics.py`` ``train_eval_senti``). Scalar float tensor."""
    if task == "regression":
        return ((logits.reshape(-1) > 0) == (labels > 0)).float().mean()
    return (logits.argmax(dim=1) == labels).float().mean()


def cggm_coefficients(deltas: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``coeff_m = (S - Delta_m) / S`` with ``S = sum_j Delta_j``, from ``deltas`` ``[M]``.

    Returns ``(coeff [M], guarded)``: when ``|S| < eps`` the denominator is ~0 and every
    coefficient is 1, with ``guarded`` a scalar bool tensor saying so (the reference's
    ``S + 1e-8`` would give ``-Delta_m * 1e8`` there). Otherwise the coefficients sum to ``M - 1``.
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
    """Cosine between two tensors of the same shape (flattened); scalar, 0 if either is ~0 (eps 1e-8)."""
    return F.cosine_similarity(g_uni.flatten(), g_fus.flatten(), dim=0, eps=1e-8)


def direction_loss(coeff: torch.Tensor, cos: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * (sum_m |coeff_m| - sum_m coeff_m cos_m) / M`` from ``coeff`` and ``cos`` ``[M]``; scalar, >= 0."""
    return lam * (coeff.abs().sum() - (coeff * cos).sum()) / coeff.numel()


def previous_direction_gradient(state: dict, lam: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference's previous-step direction loss and its gradient w.r.t. each fusion-weight block.

    ``state``: ``coeff`` ``[M]``; ``classifier`` and ``fusion``: ``{m: [C, d_m]}`` weights in the model's
    modality order, all as they were when the loss was formed. Returns ``(loss, [dL/dW_m^fus at those
    weights], in that order)``."""
    with torch.enable_grad():
        leaves = [w.detach().clone().requires_grad_(True) for w in state["fusion"].values()]
        cos = torch.stack([gradient_cosine(c, f) for c, f in zip(state["classifier"].values(), leaves)])
        loss = direction_loss(state["coeff"], cos, lam)
        return loss.detach(), list(torch.autograd.grad(loss, leaves))


class CGGM(Method):
    name = "cggm"
    summary = "encoder m's gradients x rho * coeff_m from classifier accuracy gains, plus a gradient-direction loss"
    Options = CGGMOptions
    min_modalities = 2
    modality_note = "any M >= 2, as in the paper (coefficients sum to M - 1)"
    fidelity = ("follows zrguo/CGGM src/foodtrain.py: consecutive-batch accuracy change, previous-step direction "
                "loss on output-layer weights, own unclipped classifier optimiser (lr 5e-4, wd 3e-3); options give "
                "the paper's gradient cosine (direction: gradients) and the same-batch change; deviation: "
                "coefficients 1 when |sum Delta| < eps instead of the reference's 1e8 blow-up; linear classifiers")

    tasks = ("classification", "regression")
    task_note = ("regression as the reference's CMU-MOSI script: one output, the regression loss for every head, "
                 "acc_m = sign accuracy (> 0) of each classifier; direction: gradients is classification only")

    @classmethod
    def check_task(cls, options: CGGMOptions, task: str) -> str | None:
        if options.direction == "gradients" and task != "classification":
            return ("method cggm with direction: gradients compares closed-form softmax cross-entropy gradients, "
                    f"which a {task} run does not have; use direction: weights (the reference's)")
        return super().check_task(options, task)

    @classmethod
    def check_config(cls, options: CGGMOptions, recipe) -> str | None:
        model = recipe.model
        reason = linear_concat_reason("cggm", "compares each classifier with its block of a linear concat fusion head",
                                      model)
        if reason:
            return reason
        if model.unimodal_logits != "heads":
            return ("method cggm trains the unimodal heads as its auxiliary classifiers: set "
                    f"model.unimodal_logits: heads (it is {model.unimodal_logits!r})")
        return None

    def __init__(self, options: CGGMOptions, model, ctx):
        super().__init__(options, model, ctx)
        head = model.fusion_head
        if not (isinstance(head, ConcatHead) and head.is_linear) or model.slice_unimodal:
            raise ValueError("cggm needs a linear concat fusion head and separate unimodal heads")
        self.classifier_optimizer = self._own_optimizer() if options.classifier_optim == "own" else None
        self.previous_accuracy: torch.Tensor | None = None  # [M] of the last batch (consecutive deltas)
        self.pending: dict | None = None  # the direction loss formed at the last step (direction: weights)

    def _own_optimizer(self) -> torch.optim.Optimizer:
        """The reference's ``cls_optimizer``: the model optimiser's kind, its own lr and weight decay."""
        opt, o = self.ctx.optimizer, self.options
        kwargs = {"lr": o.classifier_lr, "weight_decay": o.classifier_weight_decay}
        if isinstance(opt, torch.optim.SGD):
            kwargs["momentum"] = opt.defaults.get("momentum", 0.0)
        if opt.defaults.get("fused"):
            kwargs["fused"] = True
        return type(opt)(self.model.unimodal_heads.parameters(), **kwargs)

    def losses(self, out, labels):
        """The fusion loss and the heads' losses on detached features (``step`` adds the direction loss)."""
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}

    # ------------------------------------------------------------ pieces of the step
    def _fusion_blocks(self) -> list[torch.Tensor]:
        """Modality m's block ``[C, d_m]`` of the fusion head's weight, for every m (views)."""
        head = self.model.fusion_head
        blocks, start = [], 0
        for d in head.dims:
            blocks.append(head.net.weight[:, start:start + d])
            start += d
        return blocks

    def _classifier_step(self) -> bool:
        """The classifiers' own update from the gradients they hold; False if a gradient was not finite."""
        if self.classifier_optimizer is None:
            self.clip_and_step()
            return not self.ctx.skipped_step
        grads = [p.grad for p in self.model.unimodal_heads.parameters() if p.grad is not None]
        if self.ctx.distributed is not None:
            self.ctx.distributed.average_gradients(grads)
        if not all(torch.isfinite(g).all() for g in grads):
            self.ctx.skipped_step = True
            return False
        self.classifier_optimizer.step()  # unclipped, as the reference's cls_optimizer
        return True

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
        probes = {f"probe:{m}": self.task_loss(before[m], labels) for m in names}
        task = self.model.task.task
        accuracy = torch.stack([batch_accuracy(before[m].detach(), labels, task) for m in names])
        classifier_weights = {m: heads[m].weight.detach().clone() for m in names}  # before their update

        # 1. the auxiliary classifiers' own update: only the heads hold gradients for this step
        torch.stack(list(probes.values())).sum().backward()
        if not self._classifier_step():
            opt.zero_grad(set_to_none=True)
            return StepResult(fused.detach(), out.fused_logits.detach(), {})
        opt.zero_grad(set_to_none=True)
        if self.classifier_optimizer is not None:
            self.classifier_optimizer.zero_grad(set_to_none=True)
        stats = {"accuracy": accuracy}
        if o.delta == "same-batch":
            with torch.no_grad(), self.ctx.autocast():
                after = torch.stack([batch_accuracy(heads[m](detached[m]).float(), labels, task) for m in names])
            stats["after"] = after
        fused_logits = out.fused_logits.float()
        if o.direction == "gradients":
            g_uni = {m: linear_head_gradient(before[m].detach(), labels, detached[m].float()) for m in names}
            g_fus = {m: linear_head_gradient(fused_logits, labels, out.features[m].float()) for m in names}
            stats.update({f"uni:{m}": g_uni[m] for m in names})
            stats.update({f"fus:{m}": g_fus[m] for m in names})
        whole = self.batch_mean(stats)  # data-parallel: the global batch's statistics, in one all-reduce

        # 2. accuracy changes and 3. magnitude coefficients
        if o.delta == "same-batch":
            deltas = whole["after"] - whole["accuracy"]
        else:
            previous = self.previous_accuracy if self.previous_accuracy is not None else torch.zeros_like(accuracy)
            deltas = whole["accuracy"] - previous.to(accuracy.device)
            self.previous_accuracy = whole["accuracy"].detach().clone()
        coeff, guarded = cggm_coefficients(deltas, o.eps)

        # 4. direction loss, 5. main backward, encoder m's gradients times rho * coeff_m, clipped step
        if o.direction == "gradients":
            cos = torch.stack([gradient_cosine(whole[f"uni:{m}"], self.global_value(g_fus[m], whole[f"fus:{m}"]))
                               for m in names])
            l_dir = direction_loss(coeff, cos, o.lam)
            (fused + l_dir).backward()
        else:
            fused.backward()
            l_dir = torch.zeros((), device=fused.device)
            if self.pending is not None:  # the direction loss formed at the previous step
                l_dir, grads = previous_direction_gradient(self.pending, o.lam)
                for block, g in zip(self._fusion_blocks_grad(), grads):
                    block.add_(g.to(block.device, block.dtype))
            fusion = {m: b.detach().clone() for m, b in zip(names, self._fusion_blocks())}  # before this step's update
            cos = torch.stack([gradient_cosine(classifier_weights[m], fusion[m]) for m in names])
            self.pending = {"coeff": coeff.detach().clone(), "classifier": classifier_weights, "fusion": fusion}
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

    def _fusion_blocks_grad(self) -> list[torch.Tensor]:
        """Modality m's block of the fusion head's weight gradient (views, created as zeros if absent)."""
        weight = self.model.fusion_head.net.weight
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        blocks, start = [], 0
        for d in self.model.fusion_head.dims:
            blocks.append(weight.grad[:, start:start + d])
            start += d
        return blocks

    # ------------------------------------------------------------ state
    def state_dict(self):
        return {"previous_accuracy": self.previous_accuracy, "pending": self.pending,
                "classifier_optimizer": (self.classifier_optimizer.state_dict()
                                         if self.classifier_optimizer is not None else None)}

    def load_state_dict(self, state):
        self.previous_accuracy = state.get("previous_accuracy")
        self.pending = state.get("pending")
        if self.classifier_optimizer is not None and state.get("classifier_optimizer") is not None:
            self.classifier_optimizer.load_state_dict(state["classifier_optimizer"])


METHOD = CGGM
