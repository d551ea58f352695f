"""``reconboost``: modality-alternating boosting with reconcilement (ReconBoost).

Hua, Xu, Bao, Yang & Huang, "ReconBoost: Boosting Can Achieve Modality Reconcilement", ICML 2024.
Reference code: huacong/ReconBoost, ``train.py`` (``main``: phase 1 and phase 2 of each stage),
``models/dynamic_net.py`` (``DynamicNet``, ``Head``), ``schedule.py`` (``fixed_mode``); the defaults follow
``train.py`` and its README commands.

The model is an ensemble of one learner per modality, ``f_m(x_m) = h(phi_m(x_m))``, all sharing one head
``h`` (the reference's ``common_space`` ``Head``: linear, or one hidden layer of ``model.fusion_hidden``
units, 256 in the reference), and the prediction is ``F(x) = rho * sum_{m in ensemble} f_m(x_m)`` with a
learnt boost rate ``rho`` (``boost_rate``, initially 1). ``adapt_model`` replaces the fusion head with this
ensemble and the unimodal heads with views of ``h``, so validation, ``eval`` and ``missing-modality``
predict with ``F`` and report each ``f_m`` as the modality's unimodal logits.

Training runs in stages; stage ``s`` belongs to modality ``a = order[s mod M]`` (the model's modality order:
audio, then visual, as the reference's ``fixed_mode``) and lasts ``epochs_per_stage + correct_epoch`` epochs:

1. Alternating boosting (``epochs_per_stage`` epochs): only ``phi_a`` and ``h`` are trained, on the boosting
   loss against the ensemble of the others, ``F_{-a} = rho * sum_{m != a} f_m`` (no gradient, as the
   reference's ``net_ensemble.forward(mask_model=a)``):

       L_boost = mean_i (w1 - w2 q_i) / C * CE(f_a(x_i), y_i),   q_i = softmax(F_{-a}(x_i))_{y_i}

   the reference's ``-w1 mean_c(y log p_a) + w2 mean_c(y softmax(F_{-a}) log p_a)``: a sample the others
   already fit gets less weight (gradient boosting's residual; the paper's KL reconcilement with the
   historical models). With no other learner yet in the ensemble ``q_i = 1`` (the reference's constant
   ``c0``). From the second stage on it adds the memory-consolidation term
   ``alpha * MSE(softmax f_a, softmax f_p)`` against the learner ``p`` of the previous stage. In the
   reference both softmaxes are detached, so the term changes the loss value but never the update
   (``consolidation: detached``, the default); ``consolidation: gradient`` lets it reach ``f_a``, the
   paper's intent.
2. Global rectification (``correct_epoch`` epochs): every learner in the ensemble, ``h`` and ``rho`` are trained
   on ``CE(F(x), y)``.

A modality joins the ensemble when its first turn starts (the reference adds it after its first phase 1,
which changes nothing its phase 1 sees; it only decides what a validation inside that phase predicts), so
before every modality has had a turn ``F`` sums the learners that have; an encoder is not run before its
turn. The reference builds a fresh ``SGD`` for each phase; here the run's optimiser (the recipe's kind and
learning rate, stepped on the parameters that got a gradient) forgets its state at the start of each phase
(``reset_optimizer``), as a fresh one would. ``epoch_base`` 0: stages and their epochs count from 0.

Hyper-parameters (``method.*``, the defaults those of ``train.py`` and its CREMA-D command):
``epochs_per_stage`` (4), ``correct_epoch`` (4), ``weight1`` (5.0), ``weight2`` (1.0), ``alpha`` (0.5),
``boost_rate`` (1.0, the initial rho), ``consolidation`` (``detached``), ``reset_optimizer`` (true),
``warm_start`` ({}: the README commands' ``--use_pretrain``, unimodal encoders trained first: run directories
of this tool's ``unimodal`` runs, ``{seed}`` substituted; a warm-started modality is in the ensemble from the
start). The reference protocol (CREMA-D README command): SGD lr 0.01 (both phases), momentum 0.9, weight
decay 5e-4, batch 64, the learning rate x0.1 every 30 stages (240 epochs), its best checkpoint at stage 99
(``recipes/cremad/reconboost.yaml``).

Deviations: the reference forwards the previous learner twice per boosting step (for the ensemble and for
the consolidation term), so its BatchNorm statistics move twice per batch; here once. Its last partial
batch is dropped (``drop_last``); here it is kept. BalanceBenchmark's ``ReconBoost_trainer.py`` runs one
boosting and one rectification epoch per modality turn with one optimiser throughout (``T_epochs: 1``, boost
rate 0.01, a linear head); recipes that train few epochs use ``epochs_per_stage: 1, correct_epoch: 1``.

M > 2: the modalities take turns in order and the previous stage's learner is the consolidation partner (as
the reference's three-modality ``train_MSA.py``). Data-parallel: every term is a mean over samples, so the
averaged gradients are the global batch's (no statistic of the batch is taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.data.loader import Batch
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.fusion.shared_head import SharedHeadView, feature_size_reason, shared_feature_size
from bogc_cli.fusion.warm_start import load_unimodal_encoders, runs_problem
from bogc_cli.models.fusion_heads import ConcatHead
from bogc_cli.schema import StrictModel

class ReconBoostOptions(StrictModel):
    epochs_per_stage: int = Field(4, ge=1, description="alternating-boosting epochs of each stage (phase 1)")
    correct_epoch: int = Field(4, ge=0, description="global-rectification epochs of each stage (phase 2)")
    weight1: float = Field(5.0, gt=0, description="w1: weight of the learner's own cross-entropy")
    weight2: float = Field(1.0, ge=0, description="w2: weight of the reconcilement with the other learners")
    alpha: float = Field(0.5, ge=0, description="weight of the memory-consolidation (MSE) term")
    boost_rate: float = Field(1.0, description="initial boost rate rho of the ensemble (learnt in phase 2)")
    consolidation: Literal["detached", "gradient"] = Field(
        "detached", description="memory consolidation as the reference code (both sides detached: no effect on "
        "the update) or with its gradient into the active learner (the paper's intent)")
    reset_optimizer: bool = Field(True, description="forget the optimiser's state at each phase start, as the "
                                  "reference's fresh SGD per phase")
    warm_start: dict[str, str] = Field(
        default_factory=dict, description="{modality: RUN_DIR} of unimodal runs whose best.pt encoder starts that "
        "learner ('{seed}' becomes the run's seed); such a learner is in the ensemble from the start")


@dataclass(frozen=True)
class Turn:
    """Where an epoch falls in the schedule: ``stage`` (from 0), ``boosting`` (phase 1) or not (phase 2),
    ``active`` (index of the stage's modality) and ``first`` (the first epoch of its phase)."""

    stage: int
    boosting: bool
    active: int
    first: bool


def turn_of(epoch: int, epochs_per_stage: int, correct_epoch: int, modalities: int) -> Turn:
    """The schedule at reference epoch ``epoch`` (counted from 0)."""
    stage, within = divmod(epoch, epochs_per_stage + correct_epoch)
    boosting = within < epochs_per_stage
    return Turn(stage, boosting, stage % modalities, within in (0, epochs_per_stage))


def boosting_loss(own: torch.Tensor, others: torch.Tensor | None, labels: torch.Tensor, weight1: float,
                  weight2: float) -> torch.Tensor:
    """``mean_i (w1 - w2 q_i) / C * CE(own_i, y_i)``; ``own``: the active learner's logits ``[B, C]``; ``others``: the
    ensemble of the other learners' logits ``[B, C]`` (``q_i`` = its softmax at ``y_i``; None: ``q_i = 1``)."""
    ce = F.cross_entropy(own.float(), labels, reduction="none")
    q = (torch.ones_like(ce) if others is None else
         F.softmax(others.detach().float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1))
    return ((weight1 - weight2 * q) * ce).mean() / own.shape[1]


class BoostEnsemble(nn.Module):
    """The shared learner head ``h`` and the ensemble ``F = rho * sum_{members} h(z_m)``; replaces the fusion head.

    ``forward(feats)``: the model's ordered features ``M x [B, d]`` -> ``[B, C]`` (zeros before any member).
    ``members``: a bool buffer ``[M]`` (checkpointed with the model, so ``eval`` predicts with the same ensemble)."""

    def __init__(self, dim: int, num_classes: int, modalities: int, hidden: int = 0, boost_rate: float = 1.0):
        super().__init__()
        self.learner = (nn.Linear(dim, num_classes) if not hidden else
                        nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)))
        self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))
        self.register_buffer("members", torch.zeros(modalities, dtype=torch.bool))
        self.num_classes = num_classes

    def ensemble(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """``rho * sum`` of learner logits ``[B, C]`` (those of the members, or any chosen set)."""
        return self.boost_rate * torch.stack(logits).sum(0)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        chosen = [self.learner(z) for z, member in zip(feats, self.members.tolist()) if member]
        if not chosen:
            return feats[0].new_zeros(feats[0].shape[0], self.num_classes)
        return self.ensemble(chosen)


class ReconBoost(Method):
    name = "reconboost"
    summary = ("modalities take turns: the active learner fits the others' residual (boosting loss, w1 - w2 q), then "
               "the ensemble rho * sum_m h(z_m) is rectified jointly")
    Options = ReconBoostOptions
    min_modalities = 2
    modality_note = "the modalities take turns in order; the consolidation partner is the previous stage's learner"
    fidelity = ("follows huacong/ReconBoost train.py + models/dynamic_net.py: stages of 4 boosting + 4 rectification "
                "epochs, audio first, w1 5, w2 1, shared head, learnt boost rate 1.0, consolidation term detached "
                "(no effect, as the code), fresh optimiser state per phase; deviations: one forward of the previous "
                "learner per step, last partial batch kept; consolidation: gradient is the paper's form")
    epoch_base = 0  # stages and their epochs count from 0 in the reference

    @classmethod
    def check_config(cls, options: ReconBoostOptions, recipe) -> str | None:
        m = recipe.model
        if m.unimodal_logits != "heads":
            return ("method reconboost's unimodal logits are its shared learner head h(z_m): set "
                    f"model.unimodal_logits: heads (it is {m.unimodal_logits!r})")
        if m.fusion != "concat":
            return ("method reconboost replaces the fusion head with its ensemble of one shared learner head "
                    f"(model.fusion_hidden sets its hidden layer): leave model.fusion: concat (it is {m.fusion!r})")
        reason = feature_size_reason("reconboost", m)
        if reason:
            return reason
        return runs_problem("method.warm_start", options.warm_start, recipe)

    @classmethod
    def adapt_model(cls, options: ReconBoostOptions, model) -> None:
        built = model.fusion_head  # the recipe's concat head: its hidden layer, if any, sizes the learner head's
        hidden = built.net[0].out_features if isinstance(built, ConcatHead) and not built.is_linear else 0
        head = BoostEnsemble(shared_feature_size("reconboost", model), model.num_classes, len(model.modalities),
                             hidden, options.boost_rate)
        model.fusion_head = head
        model.unimodal_heads = nn.ModuleDict({m: SharedHeadView(head.learner) for m in model.modalities})

    @classmethod
    def before_training(cls, options: ReconBoostOptions, model, recipe, classes) -> None:
        if options.warm_start:
            load_unimodal_encoders("method.warm_start", options.warm_start, model, recipe.seed, classes)

    @property
    def head(self) -> BoostEnsemble:
        return self.model.fusion_head

    # ------------------------------------------------------------ the schedule
    def turn(self, epoch: int | None = None) -> Turn:
        o = self.options
        return turn_of(self.reference_epoch(epoch), o.epochs_per_stage, o.correct_epoch, len(self.model.modalities))

    def members(self, turn: Turn) -> list[bool]:
        """Which learners are in the ensemble during ``turn``: those whose first turn has started, and the
        warm-started ones."""
        started = min(turn.stage, len(self.model.modalities) - 1)
        return [j <= started or m in self.options.warm_start for j, m in enumerate(self.model.modalities)]

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        turn = self.turn(epoch)
        self.head.members.copy_(torch.tensor(self.members(turn)))
        if self.options.reset_optimizer and turn.first:
            self.reset_optimizer_state()

    def on_epoch_resume(self, epoch: int) -> None:
        super().on_epoch_resume(epoch)
        self.head.members.copy_(torch.tensor(self.members(self.turn(epoch))))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        turn = self.turn(epoch)
        return {"method.reconboost.stage": float(turn.stage), "method.reconboost.boosting": float(turn.boosting),
                "method.reconboost.active": float(turn.active)}

    # ------------------------------------------------------------ training
    def _learner(self, m: str, batch: Batch, grad: bool) -> torch.Tensor:
        """Learner m's logits ``[B, C]`` (its feature tracked for ``mean-feature`` fills when trained)."""
        with torch.set_grad_enabled(grad):
            z = self.model.encoders[m](batch.inputs[m])
            if grad and self.model.training:
                self.model._track_mean(m, z, None)
            return self.head.learner(z)

    def losses(self, out, labels):
        """What the rectification phase minimises: ``CE(F(x), y)`` (boosting steps use ``boosting_loss``)."""
        return {"fused": self.fused_loss(out, labels)}

    def step(self, batch: Batch) -> StepResult:
        turn = self.turn()
        modalities = self.model.modalities
        members = [m for m, inside in zip(modalities, self.members(turn)) if inside]
        self.ctx.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        with self.ctx.autocast():
            if turn.boosting:
                active = modalities[turn.active]
                own = self._learner(active, batch, grad=True)
                rest = {m: self._learner(m, batch, grad=False) for m in members if m != active}
                others = self.head.ensemble(list(rest.values())).detach() if rest else None
                loss = boosting_loss(own, others, batch.labels, self.options.weight1, self.options.weight2)
                logs["loss.boost"] = loss.detach()
                previous = modalities[(turn.stage - 1) % len(modalities)]
                if turn.stage > 0 and previous in rest:
                    p_own = F.softmax(own.float(), dim=1)
                    if self.options.consolidation == "detached":
                        p_own = p_own.detach()
                    consolidation = F.mse_loss(p_own, F.softmax(rest[previous].float(), dim=1))
                    logs["loss.consolidation"] = consolidation.detach()
                    loss = loss + self.options.alpha * consolidation
                fused = self.head.ensemble([own.detach(), *rest.values()])
            else:
                fused = self.head.ensemble([self._learner(m, batch, grad=True) for m in members])
                loss = F.cross_entropy(fused.float(), batch.labels)
                logs["loss.fused"] = loss.detach()
        loss.backward()
        self.clip_and_step()
        logs["reconboost.boost_rate"] = self.head.boost_rate.detach().clone()
        return StepResult(loss.detach(), fused.detach(), logs)


METHOD = ReconBoost
