"""``gblending``: Gradient-Blending, per-head loss weights from generalisation and overfitting.

Wang, Tran & Feiszli, "What Makes Training Multi-modal Classification Networks Hard?",
CVPR 2020. Each head k (the fusion head and every unimodal head) has a loss L_k; the model is
trained on ``sum_k w_k L_k``. Online G-Blend re-estimates the weights every super-epoch of N
epochs from losses measured on the rows trained on (T) and on a part of TRAIN held out from
training (V, never the validation or test split):

    G_k  = L^V_k(n) - L^V_k(n+N)                                   generalisation gain
    dO_k = (L^V_k(n+N) - L^T_k(n+N)) - (L^V_k(n) - L^T_k(n))       overfitting growth
    w_k  = (G_k / dO_k^2) / Z,   Z = sum_j G_j / dO_j^2           (weights sum to 1)

The first super-epoch trains with equal weights 1/K. Guards: ``dO_k^2`` is floored at ``eps``
(a head that did not overfit at all would otherwise get an infinite weight); a head whose
held-out loss rose (``G_k <= 0``) gets weight 0; if no head gained, the previous weights are
kept. Losses are measured in eval mode without gradient at the start of every super-epoch
(one pass over train and held-out rows every N epochs).

Hyper-parameters (``method.*``): ``super_epoch`` (N = 10 in the paper's online variant),
``holdout_fraction`` (0.1 of train, stratified, seeded by ``dataset.split_seed``), ``eps``
(1e-8). Works for any number of modalities: there is one weight per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.engine.evaluate import predict
from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.recipe import StrictModel


class GBlendingOptions(StrictModel):
    super_epoch: int = Field(10, ge=1, description="epochs between weight re-estimates")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="part of train held out to measure generalisation")
    eps: float = Field(1e-8, gt=0, description="floor of the squared overfitting growth")


def blend_weights(train_start: dict[str, float], holdout_start: dict[str, float], train_end: dict[str, float],
                  holdout_end: dict[str, float], eps: float = 1e-8) -> tuple[dict[str, float] | None, dict, dict]:
    """G-Blend weights from per-head losses at the start and end of a super-epoch.

    Returns ``(weights or None when no head gained, gain G_k, overfitting growth dO_k)``.
    """
    gain = {k: holdout_start[k] - holdout_end[k] for k in train_start}
    growth = {k: (holdout_end[k] - train_end[k]) - (holdout_start[k] - train_start[k]) for k in train_start}
    raw = {k: max(gain[k], 0.0) / max(growth[k] ** 2, eps) for k in train_start}
    z = sum(raw.values())
    if z <= 0:
        return None, gain, growth
    return {k: v / z for k, v in raw.items()}, gain, growth


class GBlending(Method):
    name = "gblending"
    summary = "loss weights per head w_k ~ G_k / dO_k^2 from a held-out part of train, re-estimated each super-epoch"
    Options = GBlendingOptions
    min_modalities = 2
    modality_note = "one weight per head, any M"

    @classmethod
    def holdout_fraction(cls, options: GBlendingOptions) -> float:
        return options.holdout_fraction

    def __init__(self, options, model, ctx):
        super().__init__(options, model, ctx)
        heads = [FUSED, *model.modalities]
        self.weights = {k: 1.0 / len(heads) for k in heads}
        self.start: tuple[dict, dict] | None = None  # (train, held-out) losses at the super-epoch's start
        self._epoch_logs: dict[str, float] = {}

    def head_losses(self, loader) -> dict[str, float]:
        """Mean cross-entropy of every head over a loader, in eval mode: ``{head: loss}``."""
        was_training = self.model.training
        p = predict(self.model, loader, self.ctx.device, self.ctx.autocast)
        self.model.train(was_training)
        labels = torch.from_numpy(p.labels).long()
        logits = {FUSED: p.fused, **p.unimodal}
        return {k: float(F.cross_entropy(torch.from_numpy(logits[k]), labels)) for k in self.weights}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._epoch_logs = {}
        if (epoch - 1) % self.options.super_epoch or self.ctx.holdout is None or self.ctx.train_eval is None:
            return
        now = (self.head_losses(self.ctx.train_eval), self.head_losses(self.ctx.holdout))
        if self.start is not None:
            weights, gain, growth = blend_weights(*self.start, *now, eps=self.options.eps)
            if weights is not None:
                self.weights = weights
            self._epoch_logs.update({f"method.gblend.gain.{k}": v for k, v in gain.items()})
            self._epoch_logs.update({f"method.gblend.overfit.{k}": v for k, v in growth.items()})
        self.start = now

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {**self._epoch_logs, **{f"method.gblend.w.{k}": w for k, w in self.weights.items()}}

    def losses(self, out, labels):
        return {k: self.weights[k] * loss for k, loss in self.source_losses(out, labels).items()}

    def state_dict(self):
        return {"weights": dict(self.weights), "start": self.start, "epoch_logs": dict(self._epoch_logs)}

    def load_state_dict(self, state):
        self.weights = dict(state["weights"])
        self.start = state["start"]
        self._epoch_logs = dict(state.get("epoch_logs", {}))  # this epoch's re-estimate, for a mid-epoch resume


METHOD = GBlending
