"""``pmr``: Prototypical Modal Rebalance.

Fan, Xu, Wang, Wang & Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning",
CVPR 2023. Reference code: fanyunfeng-bit/Modal-Imbalance-PMR, ``main_Prototype_grad.py``
(``train_epoch``, ``calculate_prototype``, ``EU_dist``) with the CREMA-D concat command of its
``bash.sh``; the defaults follow it. Each modality m keeps one prototype per class, ``c_{m,k}`` =
the mean encoder feature of class k. The prototypes make a non-parametric classifier per
modality, with logits ``-d(z_m, c_{m,k})``; it measures how far each encoder has learnt without
any head, and its cross-entropy (the prototypical cross-entropy, PCE) pulls the features of a
lagging modality towards their class prototypes.

One step, for a batch with labels ``y`` and features ``z_m`` ``[B, d_m]``, once prototypes
exist and inside the epoch window ``[start_epoch, end_epoch]`` (counted from 0 as the reference's
loop, ``Method.epoch_base``: the default 0-70 is our epochs 1-71):

1. Prototype logits ``P_m = -||z_m - c_{m,k}||`` ``[B, C]``, the plain Euclidean distance
   (``distance: euclidean``, the reference's ``EU_dist``); ``distance: squared`` uses
   ``-||z_m - c_{m,k}||^2``, whose scores saturate on 512-d features (see below).
2. Scores ``s_m = sum_i softmax(P_m)_{i, y_i}`` (detached) and ratios
   ``rho_m = s_m / max_{j != m} s_j`` (two modalities: ``s_m / s_other``, as the reference).
3. Coefficients (``coefficient: constant``, the reference): the PCE weight ``gamma_m = alpha`` for a
   modality behind the best one (``rho_m < 1``), else 0 (a tie: none), and the entropy weight
   ``beta_m = mu`` for the leader (``rho_m > 1``). ``coefficient: ratio`` (the paper's graded form),
   with ``f(x) = clip(x, 0, 1)``: ``gamma_m = alpha * f(1/rho_m - 1)``, ``beta_m = mu * f(rho_m - 1)``.
4. Loss ``L_0 + sum_m gamma_m PCE_m - [first entropy_epochs epochs] sum_m beta_m H_m`` where
   ``PCE_m = CE(P_m, y)`` and ``H_m`` is the batch-mean entropy of ``softmax(P_m)``. The
   reference code has no entropy term: ``mu`` defaults to 0 (none); the paper's prototypical
   entropy regularisation, which keeps the dominant modality from converging early, is on with
   ``mu > 0`` (the paper gives no value).

Why the defaults matter: with squared distances and the ratio coefficient, the prototype scores of
512-d features round to 1 in float32, ``1/rho - 1`` to 0, and the PCE gradient vanishes where the
reference's is clearly non-zero (tests/test_pmr.py pins a hand case).

Before the first prototypes exist (the first epoch, with ``prototypes: train-features``) and
outside the window the loss is ``L_0``. With separate unimodal heads
(``model.unimodal_logits: heads``) the heads are trained as probes on detached features; they
take no part in the rule (the reference reads its unimodal logits off the fusion head's slices:
``fusion-slices``).

Prototypes (``prototypes``):

- ``eval-pass`` (default): as the reference, a no-grad eval-mode pass at the start of every epoch
  (including the first, before any step) over a random ``proto_fraction`` of the train split's
  rows, drawn afresh each epoch (at least one row; 0.1: the reference takes the first tenth of
  the batches of its shuffled train loader). Needs the trainer to lend a training-set loader
  (``ctx.train_eval``, which ``bogc train`` provides); refused at the epoch start otherwise.
- ``train-features``: the per-class mean of the features the training steps of the previous
  epoch computed (train mode, before each optimiser step), made at the start of each epoch. No
  extra pass, but features drift during the epoch they are gathered over.

In both, ``c <- (1 - momentum) * mean + momentum * c_old`` (``momentum`` 0: the plain mean, as
the reference's scripts). A class with no feature in a pass keeps its previous prototype, or,
before it has one, gets the mean of all features (uninformative but finite; the reference
divides by a zero count). Counts are clamped at 1, ratios and ``1/rho`` are computed with
denominators clamped at ``eps`` (1e-8), and the Euclidean root of a squared distance clamped at
``eps``, so a ~0 score or a feature on its prototype cannot produce a NaN (the reference can).
With ``momentum > 0`` the reference mixes from its third pass on (its ``epoch <= 0`` test holds
twice); here from the second.

Hyper-parameters (``method.*``): ``alpha`` (2.0: the official CREMA-D/AVE concat runs; 1.0 for
CG-MNIST), ``coefficient`` (``constant``), ``mu`` (0) and ``entropy_epochs`` (10: a placeholder
for the paper's "early training stage"), ``momentum`` (0), ``distance`` (``euclidean``),
``start_epoch`` (0), ``end_epoch`` (70, as the official scripts), ``prototypes``
(``eval-pass``), ``proto_fraction`` (0.1).

Data-parallel: each step's scores and (``train-features``) per-class feature sums and counts
are summed over every process's rows in one all-reduce (M scalars plus ``M (C d + C)`` numbers),
so every process holds the global batch's coefficients and the same accumulated prototypes (a
mid-epoch checkpoint, written by process 0, then holds every process's rows). The ``eval-pass``
runs over the same rows on every process (the same generator), so its prototypes agree without a
collective.

M > 2 (the paper has two modalities): each modality is compared with the best of the others,
so every modality behind the leader gets the PCE term and only the leader is
entropy-regularised.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader

from bogc_cli.data.loader import Batch, to_device
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

EPS = 1e-8
DRAW_SEED = 32_452_843  # the eval pass's row generator's offset from the run seed, apart from the other generators


class PMROptions(StrictModel):
    alpha: float = Field(2.0, ge=0, description="weight of the prototypical cross-entropy of a lagging modality")
    coefficient: Literal["constant", "ratio"] = Field(
        "constant", description="constant: alpha (the official code); ratio: alpha * clip(1/rho - 1, 0, 1) (paper)")
    mu: float = Field(0.0, ge=0, description="weight of the leader's prototype entropy bonus (0: none, as the code)")
    entropy_epochs: int = Field(10, ge=0, description="the entropy term applies in the first this many epochs")
    momentum: float = Field(0.0, ge=0, lt=1, description="EMA momentum of the prototypes (0: plain mean)")
    distance: Literal["euclidean", "squared"] = Field(
        "euclidean", description="prototype logits -||z - c|| (the official code) or -||z - c||^2")
    start_epoch: int = Field(0, ge=0, description="first epoch with the PMR terms, counted from 0 as the reference")
    end_epoch: int = Field(70, ge=0, description="last epoch with the PMR terms, counted from 0 (70: our epochs 1-71)")
    prototypes: Literal["eval-pass", "train-features"] = Field(
        "eval-pass", description="an eval pass over train each epoch, or class means of last epoch's training features")
    proto_fraction: float = Field(0.1, gt=0, le=1, description="eval-pass: random fraction of the train rows used "
                                  "each epoch (the reference: a tenth)")


# ---------------------------------------------------------------- the rule, hand-testable
def prototype_logits(z: torch.Tensor, protos: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """``-||z_i - c_k||`` (or ``-||z_i - c_k||^2`` for ``squared``) from ``z`` ``[B, d]`` and ``protos`` ``[C, d]``.

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


def pmr_coefficients(scores: dict[str, torch.Tensor], alpha: float, mu: float, form: str = "constant",
                     eps: float = EPS) -> tuple[dict, dict, dict]:
    """``(rho, gamma, beta)`` per modality from prototype scores ``s_m`` (scalars).

    ``rho_m = s_m / max_{j != m} s_j``; ``constant`` form (the reference's ``beta``/``lam``): ``gamma_m =
    alpha`` where ``rho_m < 1`` (PCE weight of a lagging modality), ``beta_m = mu`` where ``rho_m > 1``
    (entropy weight of the leader), else 0; ``ratio`` form: ``gamma_m = alpha * clip(1/rho_m - 1, 0, 1)``,
    ``beta_m = mu * clip(rho_m - 1, 0, 1)``. Every denominator is clamped at ``eps``."""
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
    summary = "class prototypes per modality; the lagging modality adds alpha * CE(-||z - c_k||)"
    Options = PMROptions
    min_modalities = 2
    modality_note = "M > 2: rho_m = s_m / max_{j!=m} s_j; every modality behind the leader gets the PCE term"
    fidelity = ("Modal-Imbalance-PMR main_Prototype_grad.py: Euclidean distance, constant alpha on the lagging "
                "modality, no entropy term (mu 0), prototypes from a random tenth of train each epoch, window 0-70 "
                "counted from 0 (our epochs 1-71). Options: distance: squared, coefficient: ratio, mu > 0 (paper)")
    epoch_base = 0  # the reference's `for epoch in range(args.epochs)`

    def __init__(self, options: PMROptions, model, ctx):
        super().__init__(options, model, ctx)
        # the rows of each eval pass: the same on every data-parallel process, continued on resume
        self.draws = torch.Generator().manual_seed((torch.initial_seed() + DRAW_SEED) % 2**63)
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

    def _pass_batches(self, loader):
        """This epoch's eval-pass batches: a fresh random ``proto_fraction`` of a DataLoader's rows (at least one),
        in batches of its size, or of the batches of any other iterable; all of them when the fraction is 1."""
        if self.options.proto_fraction >= 1:
            return loader
        if not isinstance(loader, DataLoader):  # e.g. a list of batches (benchmarks): pick whole batches
            batches = list(loader)
            k = max(1, int(len(batches) * self.options.proto_fraction))
            return [batches[i] for i in torch.randperm(len(batches), generator=self.draws)[:k].sort().values]
        n = len(loader.dataset)
        rows = torch.randperm(n, generator=self.draws)[:max(1, int(n * self.options.proto_fraction))]
        rows = rows.sort().values.tolist()  # in storage order: reads of memory-mapped arrays stay sequential
        size = getattr(loader.batch_sampler, "batch_size", None) or 256
        return DataLoader(loader.dataset, batch_sampler=[rows[i:i + size] for i in range(0, len(rows), size)],
                          collate_fn=loader.collate_fn)

    @torch.no_grad()
    def _eval_pass(self) -> None:
        loader = self.ctx.train_eval
        if loader is None:
            raise UserError("method.prototypes 'eval-pass' needs a pass over the train split, which this "
                            "caller did not provide (ctx.train_eval); use method.prototypes: train-features")
        was_training = self.model.training
        self.model.eval()
        try:
            for raw in self._pass_batches(loader):
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
        return bool(self.protos) and self.in_epoch_window(o.start_epoch, o.end_epoch)

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
            entropy_on = o.mu > 0 and self.in_epoch_window(0, o.entropy_epochs - 1)  # the first entropy_epochs
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
        return {"draws": self.draws.get_state(), "protos": {m: c.cpu() for m, c in self.protos.items()},
                "sums": {m: s.cpu() for m, s in self._sums.items()},
                "counts": {m: c.cpu() for m, c in self._counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        dev = self.ctx.device
        if "draws" in state:  # a checkpoint from before the generator: keep the fresh stream
            self.draws.set_state(state["draws"])
        self.protos = {m: c.to(dev) for m, c in state.get("protos", {}).items()}
        self._sums = {m: s.to(dev) for m, s in state.get("sums", {}).items()}
        self._counts = {m: c.to(dev) for m, c in state.get("counts", {}).items()}


METHOD = PMR
