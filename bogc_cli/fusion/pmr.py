"""``pmr``: Prototypical Modal Rebalance.

Fan, Xu, Wang, Wang & Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning",
CVPR 2023. Each modality m keeps one prototype per class, ``c_{m,k}`` = the mean encoder
feature of class k. The prototypes make a non-parametric classifier per modality, with
logits ``-d(z_m, c_{m,k})``; it measures how far each encoder has learnt without any head,
and its cross-entropy (the prototypical cross-entropy, PCE) pulls the features of a lagging
modality towards their class prototypes.

One step, for a batch with labels ``y`` and features ``z_m`` ``[B, d_m]``, once prototypes
exist and inside the epoch window ``[start_epoch, end_epoch]``:

1. Prototype logits ``P_m = -||z_m - c_{m,k}||^2`` ``[B, C]`` (``distance: squared``; the
   reference code uses the plain Euclidean distance, ``distance: euclidean``).
2. Scores ``s_m = sum_i softmax(P_m)_{i, y_i}`` (detached) and ratios
   ``rho_m = s_m / max_{j != m} s_j`` (two modalities: ``s_m / s_other``, as in the paper).
3. Coefficients with ``f(x) = clip(x, 0, 1)``: the PCE weight ``gamma_m = alpha * f(1/rho_m - 1)``
   (non-zero only for a modality behind the best one) and the entropy weight
   ``beta_m = mu * f(rho_m - 1)`` (non-zero only for the best modality). With
   ``coefficient: constant`` (the official code) ``gamma_m = alpha`` if ``rho_m < 1`` and
   ``beta_m = mu`` if ``rho_m > 1``, else 0.
4. Loss ``L_0 + sum_m gamma_m PCE_m - [epoch <= entropy_epochs] sum_m beta_m H_m`` where
   ``PCE_m = CE(P_m, y)`` and ``H_m`` is the batch-mean entropy of ``softmax(P_m)``: the
   prototypical entropy regularisation keeps the dominant modality from converging early.

Before the first prototypes exist (the first epoch, with ``prototypes: train-features``) and
outside the window the loss is ``L_0``. With separate unimodal heads
(``model.unimodal_logits: heads``) the heads are trained as probes on detached features; they
take no part in the rule.

Prototypes (``prototypes``):

- ``train-features``: the per-class mean of the features the training steps of the
  previous epoch computed (train mode, before each optimiser step), made at the start of each
  epoch. No extra pass, but features drift during the epoch they are gathered over.
- ``eval-pass`` (default): as the paper and the reference code, a no-grad eval-mode pass over the
  training set at the start of every epoch (including the first, before any step), over the
  first ``proto_fraction`` of its batches (the reference: 0.1). Needs the trainer to lend a
  training-set loader (``ctx.train_eval``, which ``bogc train`` provides); refused at the epoch
  start otherwise.

In both, ``c <- (1 - momentum) * mean + momentum * c_old`` (``momentum`` 0: the plain mean).
A class with no feature in a pass keeps its previous prototype, or, before it has one, gets the
mean of all features (uninformative but finite). Counts are clamped at 1, ratios and ``1/rho``
are computed with denominators clamped at ``eps`` (1e-8) so a ~0 score cannot explode them.

Hyper-parameters (``method.*``): ``alpha`` (2.0: the official CREMA-D/AVE concat runs; 1.0 for
CG-MNIST), ``coefficient`` (``ratio``), ``mu`` (0.01) and ``entropy_epochs`` (10): not
confirmed from the paper's text (the official code has no entropy term; these are placeholders
for "the early training stage"), ``momentum`` (0), ``distance`` (``squared``), ``start_epoch``
(0), ``end_epoch`` (70, as the official scripts), ``prototypes`` (``train-features``),
``proto_fraction`` (1.0).

Data-parallel: each step's scores and (``train-features``) per-class feature sums and counts
are summed over every process's rows in one all-reduce (M scalars plus ``M (C d + C)`` numbers),
so every process holds the global batch's coefficients and the same accumulated prototypes (a
mid-epoch checkpoint, written by process 0, then holds every process's rows). The ``eval-pass``
runs over the whole train split on every process, so its prototypes agree without a collective.

M > 2 (the paper has two modalities): each modality is compared with the best of the others,
so every modality behind the leader is accelerated in proportion to its lag and only the
leader is entropy-regularised.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch, to_device
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

EPS = 1e-8


class PMROptions(StrictModel):
    alpha: float = Field(2.0, ge=0, description="weight of the prototypical cross-entropy of a lagging modality")
    coefficient: Literal["ratio", "constant"] = Field(
        "ratio", description="ratio: alpha * clip(1/rho - 1, 0, 1); constant: alpha (the official code)")
    mu: float = Field(0.01, ge=0, description="weight of the dominant modality's prototype entropy bonus")
    entropy_epochs: int = Field(10, ge=0, description="the entropy term applies up to this epoch (1-based)")
    momentum: float = Field(0.0, ge=0, lt=1, description="EMA momentum of the prototypes (0: plain mean)")
    distance: Literal["squared", "euclidean"] = Field(
        "squared", description="prototype logits -||z - c||^2 (squared) or -||z - c|| (the official code)")
    start_epoch: int = Field(0, ge=0, description="first epoch (1-based) with the PMR terms")
    end_epoch: int = Field(70, ge=0, description="last epoch with the PMR terms")
    prototypes: Literal["train-features", "eval-pass"] = Field(
        "eval-pass", description="an eval pass over train each epoch, or class means of last epoch's training features")
    proto_fraction: float = Field(1.0, gt=0, le=1, description="eval-pass: fraction of the train batches used")


# ---------------------------------------------------------------- the rule, hand-testable
def prototype_logits(z: torch.Tensor, protos: torch.Tensor, distance: str = "squared") -> torch.Tensor:
    """``-||z_i - c_k||^2`` (or ``-||z_i - c_k||`` for ``euclidean``) from ``z`` ``[B, d]`` and ``protos`` ``[C, d]``.

    Returns ``[B, C]`` in float32, computed with autocast off (the expanded square would lose
    its small differences in half precision). The Euclidean root is taken of the squared
    distance clamped at ``EPS``, so its gradient stays finite at a feature lying on its prototype."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, protos = z.float(), protos.float().to(z.device)
        sq = (z.square().sum(1, keepdim=True) - 2 * z @ protos.T + protos.square().sum(1)).clamp_min(0.0)
    return -(sq if distance == "squared" else sq.clamp_min(EPS).sqrt())


def class_sums(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums ``[C, d]`` (float32) and counts ``[C]`` from ``z`` ``[B, d]`` and ``labels`` ``[B]``."""
    z = z.detach().float()
    sums = torch.zeros(num_classes, z.shape[1], device=z.device).index_add_(0, labels, z)
    counts = torch.zeros(num_classes, device=z.device).index_add_(0, labels, torch.ones_like(labels, dtype=z.dtype))
    return sums, counts


def new_prototypes(sums: torch.Tensor, counts: torch.Tensor, old: torch.Tensor | None, momentum: float
                   ) -> torch.Tensor:
    """Prototypes ``[C, d]`` from per-class ``sums`` ``[C, d]`` and ``counts`` ``[C]``.

    ``(1 - momentum) * mean + momentum * old``; a class with no count keeps ``old`` (or, with no
    ``old``, gets the mean of every feature). Counts are clamped at 1 against division by 0."""
    mean = sums / counts.clamp_min(1.0).unsqueeze(1)
    seen = counts > 0
    if old is None:
        fallback = sums.sum(0) / counts.sum().clamp_min(1.0)
        return torch.where(seen.unsqueeze(1), mean, fallback.expand_as(mean))
    old = old.to(mean)
    return torch.where(seen.unsqueeze(1), (1 - momentum) * mean + momentum * old, old)


def prototype_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``s = sum_i softmax(logits)_{i, y_i}`` from ``logits`` ``[B, C]`` and ``labels`` ``[B]``; detached scalar."""
    return torch.softmax(logits.detach().float(), dim=1).gather(1, labels.view(-1, 1)).sum()


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of the entropy of ``softmax(logits)``, ``logits`` ``[B, C]``; differentiable scalar."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def pmr_coefficients(scores: dict[str, torch.Tensor], alpha: float, mu: float, form: str = "ratio",
                     eps: float = EPS) -> tuple[dict, dict, dict]:
    """``(rho, gamma, beta)`` per modality from prototype scores ``s_m`` (scalars).

    ``rho_m = s_m / max_{j != m} s_j``; ``ratio`` form: ``gamma_m = alpha * clip(1/rho_m - 1, 0, 1)``
    (PCE weight of a lagging modality), ``beta_m = mu * clip(rho_m - 1, 0, 1)`` (entropy weight of
    the leader); ``constant`` form: ``alpha`` / ``mu`` where ``rho_m`` is below / above 1. Every
    denominator is clamped at ``eps``."""
    rho, gamma, beta = {}, {}, {}
    for m, s in scores.items():
        best_other = torch.stack([v for k, v in scores.items() if k != m]).max()
        r = s / best_other.clamp_min(eps)
        inv = best_other / s.clamp_min(eps)
        zero = torch.zeros_like(r)
        if form == "ratio":
            g = alpha * (inv - 1).clamp(0.0, 1.0)
            b = mu * (r - 1).clamp(0.0, 1.0)
        else:
            g = torch.where(r < 1, torch.full_like(r, alpha), zero)
            b = torch.where(r > 1, torch.full_like(r, mu), zero)
        rho[m], gamma[m], beta[m] = r, g, b
    return rho, gamma, beta


# ---------------------------------------------------------------- the method
class PMR(Method):
    name = "pmr"
    summary = ("class prototypes per modality; the lagging modality adds alpha * CE(-||z - c_k||^2), "
               "the leader an entropy bonus early on")
    Options = PMROptions
    min_modalities = 2
    modality_note = "M > 2: rho_m = s_m / max_{j!=m} s_j; every modality behind the leader gets the PCE term"

    def __init__(self, options: PMROptions, model, ctx):
        super().__init__(options, model, ctx)
        self.protos: dict[str, torch.Tensor] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor] = {}
        self._logs: dict[str, torch.Tensor] = {}  # this step's coefficients, from losses to before_backward

    # ------------------------------------------------------------ prototypes
    def _accumulate(self, sums: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]) -> None:
        """Add per-class feature sums ``{m: [C, d_m]}`` and counts ``{m: [C]}`` to the pass in progress."""
        for m in sums:
            if m in self._sums:
                self._sums[m] += sums[m]
                self._counts[m] += counts[m]
            else:
                self._sums[m], self._counts[m] = sums[m], counts[m]

    def _class_sums(self, feats: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[dict, dict]:
        pairs = {m: class_sums(z, labels, self.model.num_classes) for m, z in feats.items()}
        return {m: s for m, (s, _) in pairs.items()}, {m: c for m, (_, c) in pairs.items()}

    def _finish_prototypes(self) -> None:
        for m in self._sums:
            self.protos[m] = new_prototypes(self._sums[m], self._counts[m], self.protos.get(m), self.options.momentum)
        self._sums, self._counts = {}, {}

    @torch.no_grad()
    def _eval_pass(self) -> None:
        loader = self.ctx.train_eval
        if loader is None:
            raise UserError("method.prototypes 'eval-pass' needs a pass over the train split, which this "
                            "caller did not provide (ctx.train_eval); use method.prototypes: train-features")
        n = max(1, int(len(loader) * self.options.proto_fraction))
        was_training = self.model.training
        self.model.eval()
        try:
            for i, raw in enumerate(loader):
                if i >= n:
                    break
                batch = raw if isinstance(raw, Batch) else to_device(raw, self.ctx.device)
                with self.ctx.autocast():
                    feats = self.model.encode(batch.inputs)
                self._accumulate(*self._class_sums(feats, batch.labels))
        finally:
            self.model.train(was_training)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.options.prototypes == "eval-pass":
            self._sums, self._counts = {}, {}
            self._eval_pass()
        self._finish_prototypes()

    # ------------------------------------------------------------ training
    def _active(self) -> bool:
        o = self.options
        return bool(self.protos) and o.start_epoch <= self.ctx.epoch <= o.end_epoch

    def _batch_statistics(self, logits: dict[str, torch.Tensor], feats: dict[str, torch.Tensor],
                          labels: torch.Tensor) -> tuple[dict, dict, dict]:
        """``(scores {m: scalar}, sums {m: [C, d_m]}, counts {m: [C]})`` over the global batch (one
        all-reduce data-parallel): the scores of the prototype ``logits`` ``{m: [B, C]}`` (none when
        inactive) and, with ``train-features``, the per-class sums and counts of ``feats`` (else none)."""
        scores = {m: prototype_score(p, labels) for m, p in logits.items()}
        sums, counts = self._class_sums(feats, labels) if self.options.prototypes == "train-features" else ({}, {})
        parts = {"score": scores, "sums": sums, "counts": counts}
        flat = self.batch_sum({f"{kind}:{m}": v for kind, per in parts.items() for m, v in per.items()})
        return tuple({m: flat[f"{kind}:{m}"] for m in per} for kind, per in parts.items())

    def losses(self, out, labels) -> dict[str, torch.Tensor]:
        """The fused loss, PMR's prototype terms and the probes; the coefficients wait in
        ``self._logs`` for ``before_backward`` to log them. With ``train-features`` the step's
        features join the next prototypes here."""
        o = self.options
        losses = {FUSED: self.fused_loss(out, labels)}
        logs: dict[str, torch.Tensor] = {}
        active = self._active()
        logits = ({m: prototype_logits(z, self.protos[m], o.distance) for m, z in out.features.items()}
                  if active else {})
        scores, sums, counts = self._batch_statistics(logits, out.features, labels)
        self._accumulate(sums, counts)
        if active:
            rho, gamma, beta = pmr_coefficients(scores, o.alpha, o.mu, o.coefficient)
            entropy_on = self.ctx.epoch <= o.entropy_epochs
            for m, p in logits.items():  # zero-weighted terms stay in, so every step logs the same keys
                losses[f"pce:{m}"] = gamma[m] * F.cross_entropy(p, labels)
                if entropy_on:
                    losses[f"entropy:{m}"] = -beta[m] * mean_entropy(p)
                logs[f"pmr.rho.{m}"] = rho[m]
                logs[f"pmr.gamma.{m}"] = gamma[m]
                logs[f"pmr.beta.{m}"] = beta[m] if entropy_on else torch.zeros_like(beta[m])
        losses.update(self.probe_losses(out, labels))
        self._logs = logs
        return losses

    def before_backward(self, out, batch) -> dict[str, torch.Tensor]:
        return self._logs

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"protos": {m: c.cpu() for m, c in self.protos.items()},
                "sums": {m: s.cpu() for m, s in self._sums.items()},
                "counts": {m: c.cpu() for m, c in self._counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        dev = self.ctx.device
        self.protos = {m: c.to(dev) for m, c in state.get("protos", {}).items()}
        self._sums = {m: s.to(dev) for m, s in state.get("sums", {}).items()}
        self._counts = {m: c.to(dev) for m, c in state.get("counts", {}).items()}


METHOD = PMR
