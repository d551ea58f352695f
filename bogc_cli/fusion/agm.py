"""``agm``: Adaptive Gradient Modulation.

Li, Li, Hu, Lei, Li & Zhou, "Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation", ICCV 2023. Reference code: lihong2303/AGM_ICCV2023, ``run/CREMAD_main.py``
(``train``), ``model/CREMAD_net.py`` (``GradMod``) and ``utils/config.py``; the defaults follow
it. Each step:

1. Shapley split. ``v(S)`` = the fused logits with every modality outside the coalition ``S``
   zeroed at the INPUT, ``v(empty) = 0``, ``v(all)`` = the training forward's fused logits.
   The mono-modal response of modality m is its exact Shapley value
   ``o_m = sum_{S not containing m} |S|! (M-|S|-1)! / M! * (v(S + m) - v(S))``, so
   ``sum_m o_m = v(all)``; for two modalities ``o_a = (f(a,v) - f(0,v) + f(a,0)) / 2``.
   The ``2^M - 2`` padded coalitions run in ONE batched forward pass (concatenated along the
   batch dimension) in eval mode, as the reference's ``GradMod.forward``: BatchNorm statistics,
   dropout and the model's feature-mean buffers are left alone, and every submodule's train flag
   is restored.
2. Mono score ``s_m`` = mean cross-entropy of ``o_m`` against the labels, each sample's
   probability floored at ``1e-8`` (the reference's guard against ``log 0``).
3. Ratio ``r_m = exp(M/(M-1) * (mean_j s_j - s_m))`` (two modalities: ``r_a = exp(s_v - s_a)``;
   a dominant modality, with the lower loss, has ``r_m > 1``). Its reference value
   ``rbar_m`` is the same formula applied to the running means ``sbar_m`` of the scores, taken
   before this step's update; ``sbar_m`` is the cumulative mean over every step since training
   began (``sbar <- sbar (n-1)/n + s/n`` at step n; before the first step ``sbar = 0`` so
   ``rbar = 1``), kept in ``state_dict``, updated in every epoch, inside the window or not.
4. ``coeff_m = exp(alpha * min(rbar_m - r_m, clip))``, set inside the epoch window
   ``[start_epoch, end_epoch]`` (counted from 1 as the reference's loop, ``Method.epoch_base``;
   default 0-20: our epochs 1-20). After the window the last coefficients stay in force, as the
   reference's backward hooks keep the scale ``update_scale`` last set (before the window: 1).
5. Gradient path (``gradient_path``). ``shapley`` (default, the reference): the loss is the
   cross-entropy of ``sum_m o_m`` (equal in value to the fused loss), the padded passes keep their
   gradients, and the backward through each ``o_m`` is multiplied by ``coeff_m``, so the scale
   reaches the fusion head and every encoder through ``v(all)`` and the padded passes.
   ``features``: the loss is the fused loss, the padded passes run without gradient, and
   ``coeff_m`` multiplies exactly the gradient reaching encoder m's features (cheaper: no
   backward through the padded passes; the fusion head's gradient is not scaled; on mfeat weak3,
   3 seeds: 0.881 ± 0.007 test accuracy against the reference path's 0.873 ± 0.011,
   docs/fidelity.md).
6. The reference's trigger clip (``fusion_grad_clip``, c = 1.0): after backward, if an entry of
   the gradient of the fusion head's weights leaves ``[-c, c]``, the gradient of every parameter
   is clipped to global norm c (``clip_grad_norm_``), in every epoch. Without it a coefficient
   up to ``exp(alpha * clip)`` (7e10 at the defaults) reaches the parameters unchecked. With
   ``gradient_path: features`` the fusion head's gradient is not scaled, so the trigger fires
   less often than in the reference.

Besides the rule's loss, separate unimodal heads are trained as detached probes (the imbalance
signal in reports); with ``model.unimodal_logits: fusion-slices`` there are none, as in the
reference model.

Hyper-parameters (``method.*``): ``alpha`` (2.5), ``clip`` (10, the reference's value for
CREMA-D; its three-modality UR-Funny code uses 7), ``start_epoch`` (0) and ``end_epoch`` (20),
the reference's ``--modulation_starts``/``--modulation_ends`` (``end_epoch: null``: to the end),
``gradient_path`` (``shapley``), ``fusion_grad_clip`` (1.0; UR-Funny: 5.0; null: off).

Reconstruction and deviations:

- ``alpha``: the reference code fixes no CREMA-D value (its argparse default is 1.0; the one
  command it documents, for AV-MNIST, uses 2.5). 2.5 is taken, within the 1.5-2.5 range of
  the paper's experiments.
- The fusion head's weights for the trigger clip: every weight matrix of the fusion head (for
  the linear concat head, the reference's ``fc_out.weight``).
- The reference's "running mean" is of the scores, the reference ratio being formed from
  them (not a running mean of the ratios); implemented as the reference does.
- M > 2: the exact Shapley value with ``v(empty) = 0`` (cost ``2^M - 2`` extra forward rows per
  sample, and their backward on the ``shapley`` path) and the reference's three-modality ratio ``exp(M/(M-1) (mean s - s_m))``, which
  reduces to the two-modality form.

Data-parallel: the scores are the global batch's (each process's batch means, weighted by its
share, in one all-reduce of M numbers per step), so every process scales its backward by the same
coefficients and keeps the same running means; the trigger clip looks at the averaged gradients
(the all-reduce ``clip_and_step`` would make anyway, made earlier); the step is one process's.

No division here can reach 0: ``M - 1 >= 1`` and the step count ``n >= 1``; the logarithm of a
probability is guarded by the ``1e-8`` floor.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

PROB_FLOOR = 1e-8


class AGMOptions(StrictModel):
    alpha: float = Field(2.5, ge=0, description="modulation strength: coeff_m = exp(alpha * min(rbar_m - r_m, clip))")
    clip: float = Field(10.0, gt=0, description="upper clip of rbar_m - r_m inside the exponential")
    start_epoch: int = Field(0, ge=0, description="first epoch that sets coefficients, counted from 1 as the reference")
    end_epoch: int | None = Field(20, ge=0, description="last epoch that sets coefficients, counted from 1 (null: "
                                  "to the end); after it the last ones stay, as in the reference")
    gradient_path: Literal["shapley", "features"] = Field(
        "shapley", description="scale the backward through each Shapley term (reference) or into encoder features")
    fusion_grad_clip: float | None = Field(
        1.0, gt=0, description="when a fusion-weight gradient entry leaves [-c, c], clip all gradients to norm c")


# ---------------------------------------------------------------------------------------- the rule
def proper_coalitions(modalities: list[str]) -> list[frozenset[str]]:
    """Every non-empty coalition except the full one (``2^M - 2`` of them), smallest first."""
    return [frozenset(c) for k in range(1, len(modalities)) for c in itertools.combinations(modalities, k)]


def coalition_values(fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], inputs: dict[str, torch.Tensor],
                     coalitions: list[frozenset[str]]) -> dict[frozenset[str], torch.Tensor]:
    """``v(S)`` for each coalition: ``fn`` on ``inputs`` with modalities outside ``S`` zeroed.

    ``inputs[m]``: ``[B, *shape_m]``; ``fn`` maps such a dict (any batch size) to ``[N, C]``. All
    coalitions go through ``fn`` in one call, stacked along the batch dimension; returns
    ``{S: [B, C]}``."""
    if not coalitions:
        return {}
    batch = next(iter(inputs.values())).shape[0]
    padded = {m: torch.cat([x if m in s else torch.zeros_like(x) for s in coalitions]) for m, x in inputs.items()}
    out = fn(padded)
    return dict(zip(coalitions, out.split(batch)))


def shapley_split(values: dict[frozenset[str], torch.Tensor], modalities: list[str]) -> dict[str, torch.Tensor]:
    """Exact Shapley value of each modality, ``{m: [B, C]}``, from coalition values ``{S: [B, C]}``.

    ``values`` holds every non-empty coalition (the full one included); ``v(empty) = 0``. The
    contributions sum to ``values[frozenset(modalities)]``."""
    n = len(modalities)
    full = values[frozenset(modalities)]
    split = {}
    for m in modalities:
        others = [j for j in modalities if j != m]
        total = torch.zeros_like(full)
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                without = values[s] if s else 0.0
                total = total + weight * (values[s | {m}] - without)
        split[m] = total
    return split


def mono_scores(contributions: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``s_m``: batch mean of ``-log max(softmax(o_m)_y, 1e-8)``; ``o_m`` ``[B, C]``, labels ``[B]`` -> scalars."""
    cap = -math.log(PROB_FLOOR)
    return {m: F.cross_entropy(o.float(), labels, reduction="none").clamp_max(cap).mean()
            for m, o in contributions.items()}


def agm_ratios(scores: torch.Tensor) -> torch.Tensor:
    """``r_m = exp(M/(M-1) * (mean_j s_j - s_m))`` for scores ``[M]`` (M >= 2) -> ``[M]``."""
    m = scores.numel()
    return torch.exp(m / (m - 1) * (scores.mean() - scores))


def agm_coefficients(scores: torch.Tensor, mean_scores: torch.Tensor, alpha: float, clip: float = 10.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r, rbar, coeff)``, each ``[M]``, from this step's scores ``[M]`` and the running means ``[M]``.

    ``coeff_m = exp(alpha * min(rbar_m - r_m, clip))`` with ``rbar = agm_ratios(mean_scores)``."""
    r = agm_ratios(scores)
    rbar = agm_ratios(mean_scores)
    return r, rbar, torch.exp(alpha * (rbar - r).clamp_max(clip))


def scale_backward(z: torch.Tensor, coeff: torch.Tensor | float) -> torch.utils.hooks.RemovableHandle:
    """Multiply every gradient that reaches ``z`` (any shape) by ``coeff``; the forward value is untouched."""
    return z.register_hook(lambda g: g * (coeff.to(g.dtype) if torch.is_tensor(coeff) else coeff))


# ---------------------------------------------------------------------------------------- the method
class AGM(Method):
    name = "agm"
    summary = "Shapley split of the fused output; scale each modality's backward by exp(alpha (rbar_m - r_m))"
    Options = AGMOptions
    min_modalities = 2
    modality_note = "exact Shapley value over the 2^M - 1 coalitions; ratio exp(M/(M-1)(mean s - s_m))"
    fidelity = ("AGM_ICCV2023 CREMAD_main.py/CREMAD_net.py: window 0-20 counted from 1 (our epochs 1-20), last "
                "coefficients kept after; backward scaled through the Shapley terms (gradient_path: features: into "
                "the encoder features only); clip all to norm 1.0 when a fusion-weight gradient entry leaves [-1, 1]")
    epoch_base = 1  # the reference's `for epoch in range(start_epoch, cfgs.EPOCHS + 1)`, start_epoch = 1

    def __init__(self, options: AGMOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.mean_scores = torch.zeros(len(model.modalities), device=ctx.device)
        self.steps = 0
        self.scale = torch.ones(len(model.modalities), device=ctx.device)  # the coefficients in force
        self._inputs: dict[str, torch.Tensor] | None = None  # this step's inputs, for ``losses``
        self._split: dict[str, torch.Tensor] = {}  # this step's Shapley terms, from ``losses`` to ``before_backward``

    def step(self, batch):
        self._inputs = batch.inputs
        try:
            return super().step(batch)
        finally:
            self._inputs, self._split = None, {}

    def losses(self, out, labels):
        """``shapley``: CE of the sum of the Shapley terms (with gradient); ``features``: the fused loss."""
        if self.options.gradient_path == "shapley" and self._inputs is not None:
            self._split = self.contributions(self._inputs, out.fused_logits, grad=True)
            fused = F.cross_entropy(torch.stack(list(self._split.values())).sum(0), labels)
        else:
            fused = self.fused_loss(out, labels)
        return {FUSED: fused, **self.probe_losses(out, labels)}

    def contributions(self, inputs: dict[str, torch.Tensor], fused: torch.Tensor, grad: bool = False
                      ) -> dict[str, torch.Tensor]:
        """Shapley contributions ``{m: [B, C]}`` (float32) of the fused logits ``fused`` ``[B, C]``; the padded
        coalitions run in eval mode, with gradient when ``grad`` (and ``fused``'s own gradient kept)."""
        model = self.model
        flags = [(mod, mod.training) for mod in model.modules()]
        model.eval()
        try:
            with torch.set_grad_enabled(grad), self.ctx.autocast():
                values = coalition_values(lambda x: model(x).fused_logits.float(), inputs,
                                          proper_coalitions(model.modalities))
        finally:
            for mod, flag in flags:
                mod.training = flag
        values[frozenset(model.modalities)] = (fused if grad else fused.detach()).float()
        return shapley_split(values, model.modalities)

    def before_backward(self, out, batch) -> dict[str, torch.Tensor]:
        names = self.model.modalities
        split = self._split or self.contributions(batch.inputs, out.fused_logits)
        detached = {m: o.detach() for m, o in split.items()}
        s = self.batch_mean(mono_scores(detached, batch.labels))  # data-parallel: the global batch's (one all-reduce)
        scores = torch.stack([s[m] for m in names])
        r, _, coeff = agm_coefficients(scores, self.mean_scores, self.options.alpha, self.options.clip)
        if bool(torch.isfinite(scores).all()):  # a NaN batch (whose update is skipped) must not poison the mean
            self.steps += 1
            self.mean_scores = self.mean_scores + (scores - self.mean_scores) / self.steps
        if self.in_epoch_window(self.options.start_epoch, self.options.end_epoch):
            self.scale = coeff.detach()  # the reference's update_scale; outside the window the last one stays
        for i, m in enumerate(names):  # the hooks live and die with this step's graph
            target = split[m] if self._split else out.features[m]
            if target.requires_grad:
                scale_backward(target, self.scale[i])
        logs = {}
        for i, m in enumerate(names):
            logs[f"agm.coeff.{m}"] = self.scale[i].clone()
            logs[f"agm.score.{m}"] = scores[i].detach()
            logs[f"agm.ratio.{m}"] = r[i].detach()
        return logs

    def after_backward(self, out, batch) -> dict[str, torch.Tensor]:
        """The reference's trigger clip: every gradient to norm c when a fusion-weight gradient entry leaves [-c, c]."""
        c = self.options.fusion_grad_clip
        if c is None:
            return {}
        self.batch_mean({}, gradients=True)  # data-parallel: decide on the averaged gradients (clip_and_step's)
        weights = [p.grad for p in self.model.fusion_head.parameters() if p.dim() >= 2 and p.grad is not None]
        fired = bool(weights) and bool(torch.stack([g.abs().max() for g in weights]).max() > c)
        if fired:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], c)
        return {"agm.clipped": torch.tensor(float(fired), device=self.scale.device)}

    def state_dict(self):
        return {"mean_scores": dict(zip(self.model.modalities, self.mean_scores.tolist())), "steps": self.steps,
                "scale": dict(zip(self.model.modalities, self.scale.tolist()))}

    def load_state_dict(self, state):
        device = self.mean_scores.device
        means, scale = state.get("mean_scores", {}), state.get("scale", {})
        self.mean_scores = torch.tensor([float(means.get(m, 0.0)) for m in self.model.modalities], device=device)
        self.scale = torch.tensor([float(scale.get(m, 1.0)) for m in self.model.modalities], device=device)
        self.steps = int(state.get("steps", 0))


METHOD = AGM
