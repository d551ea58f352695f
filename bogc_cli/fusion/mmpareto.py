"""``mmpareto``: Pareto-integrated multimodal and unimodal gradients.

Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance",
ICML 2024. Reference code: GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py`` (``train_epoch``)
and ``code/min_norm_solvers.py`` (``MinNormSolver``); the defaults follow it. For each encoder
m, the gradients of the fusion loss (``g_0``) and of its own unimodal loss (``g_m``) are compared
over the whole encoder. If they agree (cosine > 0) they are averaged; otherwise the two-task
minimum-norm (MGDA) combination is used, which does not increase either loss to first order.
Per parameter tensor the update is ``2 (w_0 g_0 + w_m g_m)``, scaled up to at least the norm of
the plain sum ``g_0 + g_m``, times ``gamma``. Heads keep the plain sum. Any M >= 1 (each
encoder pairs ``L_0`` with its own ``L_m``).

The min-norm weight is the reference solver's (``_min_norm_element_from2``): the closed form
``w_0 = g_m . (g_m - g_0) / ||g_0 - g_m||^2`` inside ``(0, 1)``, and at its corners 0.999 (when
``g_0 . g_m >= ||g_0||^2``) or 0.001 (when ``g_0 . g_m >= ||g_m||^2``), never exactly 1 or 0. So
when an encoder's unimodal gradient is exactly zero (cosine 0: the min-norm branch),
``w_0 = 0.001``, the update ``0.002 g_0`` is rescaled to the plain sum's norm and the encoder
steps by ``gamma g_0 = 1.5 g_0``; with ``exact_corners`` (the exact minimiser, 0 or 1) it would
get no update at all for that step.

Deliberate deviation: a tensor whose integrated update has norm 0 while the plain sum's does not
keeps the update 0 (the reference divides by that zero norm and writes NaN into the gradient).

Hyper-parameters (``method.*``): ``gamma`` (1.5, hard-coded in the reference), ``exact_corners``
(false). The reference trains with SGD, lr 2e-3, momentum 0.9, weight decay 1e-4, 50 epochs,
batch 64; its StepLR(30) scheduler is created but never stepped, so the learning rate stays 2e-3.
Cost: one forward and one backward pass per loss (the reference code needs one more for the
plain sum; here it is the sum of the per-loss gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.fusion.calibration import Segments
from bogc_cli.fusion.sources import GradientSources, global_batch_gradients
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class MMParetoOptions(StrictModel):
    gamma: float = Field(1.5, gt=0, description="scale of the integrated encoder gradient")
    exact_corners: bool = Field(False, description="min-norm corners exactly 0/1 instead of the reference "
                                "solver's 0.001/0.999")


SOLVER_CORNER = 0.999  # the reference solver's weight at a corner of [0, 1] (and 1 - it at the other)


def min_norm_weight(g1: torch.Tensor, g2: torch.Tensor, exact_corners: bool = False) -> torch.Tensor:
    """The w in [0, 1] minimising ``||w g1 + (1 - w) g2||`` for flat ``g1``, ``g2`` ``[N]``; scalar tensor.

    As the reference's ``MinNormSolver._min_norm_element_from2``: ``g1 . g2 >= ||g1||^2`` gives 0.999,
    ``g1 . g2 >= ||g2||^2`` gives 0.001, otherwise the closed form ``(||g2||^2 - g1 . g2) / ||g1 - g2||^2``.
    With ``exact_corners`` the corners are 1 and 0 (the exact minimiser)."""
    v11, v12, v22 = g1.dot(g1), g1.dot(g2), g2.dot(g2)
    hi = 1.0 if exact_corners else SOLVER_CORNER
    if v12 >= v11:
        return torch.tensor(hi, dtype=g1.dtype, device=g1.device)
    if v12 >= v22:
        return torch.tensor(1.0 - hi, dtype=g1.dtype, device=g1.device)
    return (v22 - v12) / (v11 + v22 - 2 * v12)


def pareto_update(g0: torch.Tensor, gm: torch.Tensor, seg: Segments, gamma: float, exact_corners: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MMPareto's encoder update from flat ``g0``, ``gm`` ``[N]`` (tensors given by ``seg``).

    Returns ``(update [N], cosine, w0)`` where ``w0`` is the weight of the fusion loss.
    """
    cos = F.cosine_similarity(g0, gm, dim=0)
    if cos > 0:
        w0 = torch.tensor(0.5, dtype=g0.dtype, device=g0.device)
    else:
        w0 = min_norm_weight(g0, gm, exact_corners)
    new = 2 * (w0 * g0 + (1 - w0) * gm)
    plain_norm = seg.sum((g0 + gm).square()).sqrt()
    new_norm = seg.sum(new.square()).sqrt()
    ratio = torch.where(new_norm > 0, plain_norm / new_norm.clamp_min(torch.finfo(new.dtype).tiny),
                        torch.ones_like(new_norm))
    return new * seg.expand(ratio.clamp_min(1.0)) * gamma, cos, w0


class MMPareto(Method):
    name = "mmpareto"
    tasks = ("classification", "multilabel", "regression")
    task_note = ("MGDA on the gradients of L_0 and L_m, whatever loss they are: the task's loss (CE, BCE with "
                 "logits, L1/MSE)")
    summary = "per encoder, Pareto (MGDA) integration of fusion and unimodal gradients when they conflict"
    Options = MMParetoOptions
    fidelity = ("MMPareto_ICML2024 MMPareto.py/min_norm_solvers.py: solver corners 0.001/0.999 (a zero unimodal "
                "gradient steps the encoder by 1.5 g_0; exact_corners: no step). Ours: a zero-norm integrated "
                "tensor keeps 0 where the reference writes NaN")

    def __init__(self, options: MMParetoOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.sources = GradientSources(model)

    def losses(self, out, labels):
        return self.source_losses(out, labels)

    def step(self, batch: Batch) -> StepResult:
        self.ctx.optimizer.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            out = self.model(batch.inputs)
            losses = self.losses(out, batch.labels)
        flats = self.sources.gradients(losses)
        if self.ctx.distributed is not None:  # the min-norm rule is not linear: combine the global gradients
            flats = global_batch_gradients(flats, self.ctx.distributed.share)
            self.ctx.grads_synced = True
        logs: dict[str, torch.Tensor] = {}
        for block in self.sources.blocks:
            grads = self.sources.stack(flats, block)
            encoder = [n.split(":", 1)[1] for n in block.names if n.startswith("encoder:")]
            if len(block.sources) == 2 and FUSED in block.sources and encoder:
                g0 = grads[block.sources.index(FUSED)]
                gm = grads[1 - block.sources.index(FUSED)]
                update, cos, w0 = pareto_update(g0, gm, block.segments, self.options.gamma, self.options.exact_corners)
                logs[f"mmpareto.cos.{encoder[0]}"] = cos.detach()
                logs[f"mmpareto.w_fused.{encoder[0]}"] = w0.detach()
            else:
                update = grads.sum(dim=0)
            self.sources.assign(block, update)
        self.clip_and_step()
        logs.update({f"loss.{k}": v.detach() for k, v in losses.items()})
        total = torch.stack([v.detach().float() for v in losses.values()]).sum()
        return StepResult(total, out.fused_logits.detach(), logs)


METHOD = MMPareto
