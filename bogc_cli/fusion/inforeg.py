"""``inforeg``: Information Acquisition Regulation in the prime learning window.

Huang, Wei, Yang & Hu, "Adaptive Unimodal Regulation for Balanced Multimodal Information Acquisition",
CVPR 2025 (InfoReg). Reference code: GeWu-Lab/InfoReg_CVPR2025, ``main.py`` (``train_epoch``, ``main``,
``--modulation Ours``); the defaults follow it (its paper's method section could not be read here, so where
the code and the paper might differ is not checked).

The model trains on ``L_0 + sum_m L_m``: the fusion loss plus each modality's unimodal cross-entropy (the
reference backpropagates the fused loss and the losses of the fusion head's audio and visual slices:
``model.unimodal_logits: fusion-slices`` in the recipes). On top of it, each step:

1. Scores ``s_m = sum_i softmax(u_m)_{i, y_i}`` over the batch's rows (``u_m``: modality m's unimodal
   logits; a sum, not a mean, as the reference, so the gap below saturates for batches of 64).
2. Inside the prime learning window (below), the leading modality ``l`` (highest score, strictly) is the
   information-sufficient one: its encoder's gradient gets the proximal term ``beta_l (theta - theta_prev)``,
   which pulls it back towards ``theta_prev``, its weights at the start of the epoch (the reference's
   ``global_model``, a copy taken when the epoch starts), with
   ``beta_l = strength_l * exp(tanh(s_l - s_r))``, ``s_r`` the runner-up's score. The other encoders are
   not regulated. A tie regulates none.
3. The Fisher information trace of the monitored encoder (``trace_modality``; the reference's audio, its
   first modality) is accumulated: for every convolution and linear layer, the mean over the weight of the
   squared gradient (the gradient being the one the optimiser is given: after the proximal term, before
   clipping), summed over layers and over the epoch's steps.

The window: with ``T_e`` the trace of epoch ``e`` (counted from 0, ``epoch_base`` 0) and the reference's
moving averages over ``window`` epochs (epochs before the first counting as 0), at the start of epoch
``e > 0`` ``k = (mean(T_{e-window..e-1}) - mean(T_{e-window-1..e-2})) / mean(T_{e-window..e-1})``: the relative
growth of the information acquired; ``k = 1`` in epoch 0. The regulation acts in an epoch when
``k > threshold``. The window is found from the data; there is no fixed epoch window (the reference's
``--modulation_starts/--modulation_ends`` are unused by its ``Ours`` path).

Hyper-parameters (``method.*``): ``strength`` ([0.95, 0.1]: the reference's 0.95 when audio leads, 0.1 when
visual leads, here per modality in the model's order, a modality past the list's end taking its last value);
``threshold`` (0.05); ``window`` (10); ``trace_modality`` (none: the model's first modality). The reference
protocol (``main.py`` defaults): SGD lr 2e-3, momentum 0.9, weight decay 1e-4, StepLR 30 x0.1, 50 epochs,
batch 64 (``recipes/*/inforeg.yaml``).

Deviations: the reference divides by the moving average unguarded (a trace of 0 raises a
ZeroDivisionError); here ``k = 0`` then (not in the window). A step skipped for a non-finite gradient adds
nothing to the trace. The reference's other bookkeeping (per-loss gradient copies, gradient-norm logs,
plots) has no effect on training and is not done.

M > 2 (the reference has two modalities): the single leader is regulated, its gap taken to the runner-up;
for two modalities this is the reference's rule. Data-parallel: the scores are summed over the global batch
and the gradients averaged in one all-reduce before the proximal term and the trace, so every process
regulates and measures as one process would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.data.loader import Batch
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.schema import StrictModel

TRACED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class InfoRegOptions(StrictModel):
    strength: list[float] = Field([0.95, 0.1], min_length=1, description="proximal strength when each modality "
                                  "leads, in the model's modality order (past the end: the last value)")
    threshold: float = Field(0.05, description="the regulation acts while the trace's relative growth k exceeds it")
    window: int = Field(10, ge=1, description="epochs in the trace's moving averages")
    trace_modality: str | None = Field(None, description="encoder whose Fisher trace finds the window "
                                       "(default: the first modality, the reference's audio)")


def window_rate(history: list[float], window: int) -> float:
    """The reference's ``k`` from the traces of the epochs so far: 1 before any; else the relative change of the
    ``window``-epoch moving average, earlier epochs padded with 0; 0 when the latest average is not positive."""
    if not history:
        return 1.0
    padded = [0.0] * window + list(history)
    new = sum(padded[-window:]) / window
    old = sum(padded[-window - 1:-1]) / window
    return (new - old) / new if new > 0 else 0.0


def proximal_strengths(scores: dict[str, float], strength: list[float], modalities: list[str]) -> dict[str, float]:
    """``{m: beta_m}``: ``strength_l * exp(tanh(s_l - s_r))`` for the strict leader ``l`` (``s_r``: the runner-up's
    score), 0 for every other modality (and for all on a tie)."""
    beta = {m: 0.0 for m in modalities}
    ranked = sorted(modalities, key=lambda m: scores[m], reverse=True)
    lead, runner = ranked[0], ranked[1]
    if scores[lead] > scores[runner]:
        beta[lead] = strength[min(modalities.index(lead), len(strength) - 1)] * math.exp(
            math.tanh(scores[lead] - scores[runner]))
    return beta


def layer_fisher(module: nn.Module) -> torch.Tensor:
    """``sum over conv/linear layers of mean(grad(weight)^2)``: one step's share of the Fisher trace (float64)."""
    terms = [m.weight.grad.double().square().mean() for m in module.modules()
             if isinstance(m, TRACED_LAYERS) and m.weight.grad is not None]
    return torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64)


class InfoReg(Method):
    name = "inforeg"
    summary = ("in the prime learning window (Fisher-trace growth > threshold) the leading modality's encoder is "
               "pulled to its epoch-start weights, strength x exp(tanh(score gap)); loss L_0 + sum_m L_m")
    Options = InfoRegOptions
    min_modalities = 2
    modality_note = "the strict leader is regulated with its gap to the runner-up; strengths per modality in order"
    fidelity = ("follows InfoReg_CVPR2025 main.py (--modulation Ours): scores summed over the batch, beta = 0.95 "
                "(first modality) / 0.1 exp(tanh(gap)), pull to the epoch-start weights, k from 10-epoch averages "
                "of the first encoder's Fisher trace > 0.05, loss L_0 + sum L_m; deviations: k = 0 where the "
                "reference divides by a zero trace, skipped steps add no trace")
    epoch_base = 0  # the reference's `if epoch == 0: k = 1` counts from 0

    @classmethod
    def check_modalities(cls, options: InfoRegOptions, modalities: list[str]) -> str | None:
        reason = super().check_modalities(options, modalities)
        if reason is None and options.trace_modality is not None and options.trace_modality not in modalities:
            return (f"method.trace_modality {options.trace_modality!r} is not a modality of this run; choose one of "
                    f"{', '.join(modalities)}")
        return reason

    def __init__(self, options: InfoRegOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.traced = options.trace_modality or model.modalities[0]
        self.history: list[float] = []  # the monitored encoder's Fisher trace of each finished epoch
        self.trace = torch.zeros((), dtype=torch.float64)  # this epoch's, so far
        self.rate = 1.0  # k of this epoch
        self.previous: dict[str, list[torch.Tensor]] = {}  # theta_prev: each encoder at the start of the epoch

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.rate = 1.0 if self.reference_epoch(epoch) == 0 else window_rate(self.history, self.options.window)
        self.trace = torch.zeros((), dtype=torch.float64)
        self.previous = {m: [p.detach().clone() for p in self.model.encoders[m].parameters()]
                         for m in self.model.modalities}

    @property
    def in_window(self) -> bool:
        return self.rate > self.options.threshold

    def losses(self, out, labels):
        return self.source_losses(out, labels)

    def scores(self, out, labels: torch.Tensor) -> dict[str, float]:
        """``s_m = sum_i softmax(u_m)_{i, y_i}`` over the (global) batch, with this step's gradients averaged in the
        same all-reduce when data-parallel."""
        p_true = {m: F.softmax(u.detach().float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
                  for m, u in out.unimodal_logits.items()}
        if self.ctx.distributed is None:
            return {m: float(p.sum()) for m, p in p_true.items()}
        rows = self.batch_part(len(labels))[2]
        means = self.batch_mean({m: p.mean() for m, p in p_true.items()}, gradients=True)
        return {m: float(v) * rows for m, v in means.items()}

    def step(self, batch: Batch) -> StepResult:
        self.ctx.optimizer.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            out = self.model(batch.inputs)
            losses = self.losses(out, batch.labels)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        total.backward()
        scores = self.scores(out, batch.labels)
        beta = (proximal_strengths(scores, self.options.strength, self.model.modalities) if self.in_window
                else {m: 0.0 for m in self.model.modalities})
        with torch.no_grad():
            for m, b in beta.items():
                if b > 0:
                    for p, p0 in zip(self.model.encoders[m].parameters(), self.previous[m]):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - p0, alpha=b)
        fisher = layer_fisher(self.model.encoders[self.traced])
        self.clip_and_step()
        if not self.ctx.skipped_step and torch.isfinite(fisher):
            self.trace = self.trace + fisher.detach().cpu()
        logs = {f"loss.{k}": v.detach() for k, v in losses.items()}
        logs.update({f"inforeg.beta.{m}": torch.tensor(b, device=total.device) for m, b in beta.items()})
        rows = self.batch_part(len(batch))[2]  # the scores are sums over the global batch: their mean per row
        logs.update({f"inforeg.score.{m}": torch.tensor(s / rows, device=total.device) for m, s in scores.items()})
        return StepResult(total.detach(), out.fused_logits.detach(), logs)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.history.append(float(self.trace))
        return {"method.inforeg.k": self.rate, "method.inforeg.in_window": float(self.in_window),
                f"method.inforeg.trace.{self.traced}": self.history[-1]}

    def state_dict(self):
        return {"history": list(self.history), "trace": self.trace, "rate": self.rate, "previous": self.previous}

    def load_state_dict(self, state):
        self.history = list(state.get("history", []))
        self.trace = state.get("trace", torch.zeros((), dtype=torch.float64))
        self.rate = float(state.get("rate", 1.0))
        device = self.ctx.device
        self.previous = {m: [p.to(device) for p in ps] for m, ps in state.get("previous", {}).items()}


METHOD = InfoReg
