"""``gblending``: Gradient-Blending, per-head loss weights from generalisation and overfitting.

Wang, Tran & Feiszli, "What Makes Training Multi-modal Classification Networks Hard?",
CVPR 2020. Each head k (the fusion head and every modality's unimodal head) has a loss L_k; the
model is trained on ``sum_k w_k L_k``. Online G-Blend re-estimates the weights at the start of
every super-epoch of N epochs (epochs 1, N+1, 2N+1, ...: the reference's 0-based
``epoch % N == 0``) from losses on the training rows (T) and on held-out rows (V):

    G_k = L^V_k(end) - L^V_k(start)                                  generalisation change
    O_k = (L^V_k(end) - L^T_k(end)) - (L^V_k(start) - L^T_k(start))   overfitting change
    w_k = (|G_k| / O_k^2) / Z,   Z = sum_j |G_j| / O_j^2               (weights sum to 1)

Defaults follow the reference implementation named for this tool, GeWu-Lab/BalanceBenchmark
(``balancemm/trainer/GBlending_trainer.py``, ``super_epoch_origin``; the paper's authors
released none):

- ``estimate: single-head`` (default): for every head k a copy of the current model is trained
  alone for the N epochs of a super-epoch (an estimation run), from a fresh optimiser of the
  recipe's kind and initial learning rate (no schedule, no clip), on one loss: the fusion
  head's cross-entropy, where for a modality's head the other modalities' inputs are zeroed
  (the reference's ``padding``). "start" is measured after the copy's first epoch, "end" after
  its last (so N >= 2): ``L^T`` the mean training loss of the batches of that epoch, ``L^V`` the
  held-out loss after it (eval mode). The copies are then discarded; the run's own model is
  untouched. The first super-epoch trains with estimated weights too (estimated from the
  initial model), as the reference does.
- A head whose held-out loss rose keeps a positive weight ``|G_k| / O_k^2`` (the reference's
  ``abs``); the paper's intent would give it none.
- ``estimate: joint`` (the cheaper earlier form): the losses are read off the jointly trained
  heads in eval mode at the start of consecutive super-epochs (no extra training;
  ``start``/``end`` = super-epoch n and n+1), so the first super-epoch trains with equal weights
  1/K.

Deviations from the reference, each deliberate:

- V is a part of **train** held out from training (``holdout_fraction`` 0.1, stratified, seeded
  by ``dataset.split_seed``), never the validation or test split: BalanceBenchmark measures on its
  validation loader, which for CREMA-D and Kinetics-Sounds (``validation: false`` in its
  ``configs/dataset_config.yaml``) is the test split, so the weights would be fitted to the data
  the model is scored on.
- Losses are means (per batch for T, per row for V); the reference adds up per-batch means, so its
  ``O_k`` compares a sum over len(train)/B batches with one over len(V)/B batches and scales with
  the split sizes. Measured on avdigits' first estimate (35 train and 4 held-out batches of 64):
  weights (fused, audio, image) 0.22 / 0.58 / 0.20 with means, 0.26 / 0.50 / 0.24 with the
  reference's sums.
- ``O_k^2`` is floored at ``eps`` (the reference divides by it unguarded: inf or nan when a copy's
  overfitting does not change); if every ``|G_k|`` is 0 the previous weights are kept.
- Estimation runs see un-augmented batches (``train.augment`` and ``train.modality_dropout`` act
  on the run's own training steps only).

Cost: each estimation covers (M + 1) heads x N epochs per N epochs of training, so with two
modalities the run trains about 4x the epochs of ``joint`` (README "Methods" gives a measured
figure; ``method.gblend.estimate_time_s`` logs the seconds per epoch that starts a super-epoch).

Hyper-parameters (``method.*``): ``super_epoch`` (N = 10, BalanceBenchmark's online default),
``estimate`` (``single-head``), ``holdout_fraction`` (0.1), ``eps`` (1e-8). Works for any number of
modalities: there is one weight per head. Data-parallel: each process trains its copies on its
shard of every global batch with averaged gradients and averaged BatchNorm statistics, so every
process estimates the same weights.
"""

from __future__ import annotations

import copy
import inspect
import time
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from pydantic import Field

from bogc_cli.data.loader import make_loader, to_device
from bogc_cli.engine.evaluate import predict
from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class GBlendingOptions(StrictModel):
    super_epoch: int = Field(10, ge=1, description="epochs between weight re-estimates (N)")
    estimate: Literal["single-head", "joint"] = Field(
        "single-head", description="train a copy of the model on each head alone for a super-epoch (reference) or "
        "read the losses off the jointly trained heads (no extra training)")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="part of train held out to measure generalisation")
    eps: float = Field(1e-8, gt=0, description="floor of the squared overfitting change")


def blend_weights(train_start: dict[str, float], holdout_start: dict[str, float], train_end: dict[str, float],
                  holdout_end: dict[str, float], eps: float = 1e-8) -> tuple[dict[str, float] | None, dict, dict]:
    """G-Blend weights from per-head losses at the start and end of an estimation.

    ``w_k = (|G_k| / max(O_k^2, eps)) / Z`` with ``G_k = V_end - V_start`` and
    ``O_k = (V_end - T_end) - (V_start - T_start)``. Returns ``(weights or None when every G_k is 0,
    G_k, O_k)``.
    """
    gain = {k: holdout_end[k] - holdout_start[k] for k in train_start}
    growth = {k: (holdout_end[k] - train_end[k]) - (holdout_start[k] - train_start[k]) for k in train_start}
    raw = {k: abs(gain[k]) / max(growth[k] ** 2, eps) for k in train_start}
    z = sum(raw.values())
    if z <= 0:
        return None, gain, growth
    return {k: v / z for k, v in raw.items()}, gain, growth


def fresh_optimizer(like: torch.optim.Optimizer, params) -> torch.optim.Optimizer:
    """A new optimiser of ``like``'s kind and constructor settings (its initial lr, not a scheduled one),
    with no state: the reference's ``temp_optimizer`` reset to ``temp_optimizer_origin``. ``params``:
    parameters, or parameter groups (dicts, e.g. with an ``lr`` of their own)."""
    accepted = inspect.signature(type(like).__init__).parameters
    return type(like)(params, **{k: v for k, v in like.defaults.items() if k in accepted and k != "params"})


def twin_optimizer(like: torch.optim.Optimizer, model: nn.Module, twin: nn.Module) -> torch.optim.Optimizer:
    """``fresh_optimizer`` for ``twin``, a deep copy of ``model``, with ``like``'s parameter groups: each group
    holds the copies of its parameters at that group's initial lr (``optim.backbone_lr``'s group keeps its
    rate); parameters in no group (frozen pretrained blocks) stay out."""
    copies = dict(zip((id(p) for p in model.parameters()), twin.parameters()))
    return fresh_optimizer(like, [{"params": [copies[id(p)] for p in g["params"]], "lr": g.get("initial_lr", g["lr"])}
                                  for g in like.param_groups])


def head_inputs(inputs: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """The inputs an estimation run for ``head`` sees: all of them for the fusion head, only modality
    ``head`` for a unimodal head (every other modality's input zeroed, as the reference pads them)."""
    if head == FUSED:
        return inputs
    return {m: x if m == head else torch.zeros_like(x) for m, x in inputs.items()}


class GBlending(Method):
    name = "gblending"
    summary = ("loss weights per head w_k ~ |G_k| / O_k^2 from single-head estimation runs, re-estimated each "
               "super-epoch")
    Options = GBlendingOptions
    min_modalities = 2
    modality_note = "one weight per head, any M"
    fidelity = ("follows BalanceBenchmark GBlending_trainer.py: single-head estimation runs (a copy trained per head "
                "for a super-epoch, other inputs zeroed), |G|/O^2, estimated at the first super-epoch too; deviations: "
                "V = held-out part of train (the reference: its val loader, the test split on CREMA-D/KS), mean "
                "losses (not batch sums), O^2 floored at eps, un-augmented estimation batches; estimate: joint is the "
                "cheaper non-reference form")
    epoch_base = 0  # super-epochs start at epochs 0, N, 2N, ... counted from 0 (our 1, N + 1, ...)

    @classmethod
    def holdout_fraction(cls, options: GBlendingOptions) -> float:
        return options.holdout_fraction

    @classmethod
    def check_config(cls, options: GBlendingOptions, recipe) -> str | None:
        if options.estimate == "single-head" and options.super_epoch < 2:
            return ("method gblending with estimate: single-head measures from the end of an estimation run's first "
                    "epoch to the end of its last, so method.super_epoch must be at least 2 (it is 1); use "
                    "estimate: joint to re-estimate every epoch")
        return None

    def __init__(self, options, model, ctx):
        super().__init__(options, model, ctx)
        self.heads = [FUSED, *model.modalities]
        self.weights = {k: 1.0 / len(self.heads) for k in self.heads}
        self.start: tuple[dict, dict] | None = None  # estimate: joint -- (train, held-out) losses, last re-estimate
        self.seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())  # shuffles the estimation runs' batches
        self._epoch_logs: dict[str, float] = {}

    # ------------------------------------------------------------ losses of the heads
    def head_losses(self, loader) -> dict[str, float]:
        """Mean cross-entropy of every head over a loader, in eval mode: ``{head: loss}``."""
        was_training = self.model.training
        p = predict(self.model, loader, self.ctx.device, self.ctx.autocast)
        self.model.train(was_training)
        labels = torch.from_numpy(p.labels).long()
        logits = {FUSED: p.fused, **p.unimodal}
        return {k: float(F.cross_entropy(torch.from_numpy(logits[k]), labels)) for k in self.heads}

    @torch.no_grad()
    def holdout_loss(self, model, head: str) -> float:
        """Mean cross-entropy over the held-out rows of ``model``'s fusion head on ``head``'s inputs (eval mode)."""
        model.eval()
        total, rows = 0.0, 0
        for raw in self.ctx.holdout:
            batch = to_device(raw, self.ctx.device)
            with self.ctx.autocast():
                logits = model(head_inputs(batch.inputs, head)).fused_logits
            total += float(F.cross_entropy(logits.float(), batch.labels, reduction="sum"))
            rows += len(batch)
        return total / rows

    def estimation_run(self, head: str, epoch: int) -> tuple[list[float], list[float]]:
        """Train a copy of the model on ``head`` alone for ``super_epoch`` epochs; returns
        ``([L^T after epoch 1, ..., after N], [L^V after each])``: mean training loss of each epoch's
        batches, held-out loss after it. The run's own model, optimiser and RNG are untouched."""
        ctx, d = self.ctx, self.ctx.distributed
        twin = copy.deepcopy(self.model)
        opt = twin_optimizer(ctx.optimizer, self.model, twin)
        split = ctx.train_eval.dataset.split
        batch_size = ctx.batch_size or ctx.train_eval.batch_sampler.batch_size
        seed = (self.seed + 7919 * epoch + 104729 * self.heads.index(head)) % (2 ** 31 - 1)
        loader = make_loader(split, batch_size, shuffle=True, seed=seed, shard=d.shard if d is not None else None)
        train_losses, holdout_losses = [], []
        for _ in range(self.options.super_epoch):
            twin.train()
            total = torch.zeros((), device=ctx.device, dtype=torch.float64)
            steps = 0
            for i, raw in enumerate(loader):
                batch = to_device(raw, ctx.device)
                if d is not None:
                    d.place(min(batch_size, len(split) - i * batch_size))
                opt.zero_grad(set_to_none=True)
                with ctx.autocast():
                    logits = twin(head_inputs(batch.inputs, head)).fused_logits
                loss = F.cross_entropy(logits.float(), batch.labels)
                loss.backward()
                grads = [p.grad for p in twin.parameters() if p.grad is not None]
                if d is not None:
                    d.average_gradients(grads)
                    loss = self.batch_mean({"loss": loss.detach()})["loss"]
                if not torch.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads):
                    continue  # a non-finite step is skipped, as in training
                opt.step()
                total += loss.detach().double()
                steps += 1
            if d is not None:
                d.average_buffers(twin)
            train_losses.append(float(total) / max(steps, 1))
            holdout_losses.append(self.holdout_loss(twin, head))
        return train_losses, holdout_losses

    # ------------------------------------------------------------ the schedule
    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._epoch_logs = {}
        first_of_super_epoch = self.reference_epoch(epoch) % self.options.super_epoch == 0
        if not first_of_super_epoch or self.ctx.holdout is None or self.ctx.train_eval is None:
            return
        started = time.perf_counter()
        if self.options.estimate == "single-head":
            cuda = [torch.cuda.current_device()] if self.ctx.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # the run's own random draws stay as they were
                runs = {k: self.estimation_run(k, epoch) for k in self.heads}
            start = ({k: t[0] for k, (t, _) in runs.items()}, {k: v[0] for k, (_, v) in runs.items()})
            end = ({k: t[-1] for k, (t, _) in runs.items()}, {k: v[-1] for k, (_, v) in runs.items()})
        else:
            end = (self.head_losses(self.ctx.train_eval), self.head_losses(self.ctx.holdout))
            start, self.start = self.start, end
        if start is not None:
            weights, gain, growth = blend_weights(*start, *end, eps=self.options.eps)
            if weights is not None:
                self.weights = weights
            self._epoch_logs.update({f"method.gblend.G.{k}": v for k, v in gain.items()})
            self._epoch_logs.update({f"method.gblend.O.{k}": v for k, v in growth.items()})
        self._epoch_logs["method.gblend.estimate_time_s"] = time.perf_counter() - started

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {**self._epoch_logs, **{f"method.gblend.w.{k}": w for k, w in self.weights.items()}}

    def losses(self, out, labels):
        return {k: self.weights[k] * loss for k, loss in self.source_losses(out, labels).items()}

    def state_dict(self):
        return {"weights": dict(self.weights), "start": self.start, "epoch_logs": dict(self._epoch_logs),
                "seed": self.seed}

    def load_state_dict(self, state):
        self.weights = dict(state["weights"])
        self.start = state["start"]
        self._epoch_logs = dict(state.get("epoch_logs", {}))  # this epoch's re-estimate, for a mid-epoch resume
        self.seed = int(state.get("seed", self.seed))


METHOD = GBlending
