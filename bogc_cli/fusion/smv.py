"""``smv``: sample-level modality valuation, and re-sampling towards each sample's weak modality.

Wei, Feng, Wang & Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation", CVPR 2024.
Reference code: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py``
(``execute_modulation``, ``train_epoch``) with ``code/datasets/dataloader.py``
(``AV_KS_Dataset_sample_level``) and ``code/models/models.py`` (``exec_drop``, the ``drop`` argument of
``forward``); the defaults follow it.

Valuation. At the start of every epoch after the warm-up the model, in eval mode and without
gradient, values each training sample's modalities with a Shapley value over the players = modalities,
the value of a coalition S being ``v(S) = |S| * 1[argmax f(z_S) = y]``: the fusion head's prediction from
the features of S with every other modality's encoder feature zeroed (the reference's ``exec_drop``), scored
``|S|`` when right (the reference's ``value_all = 2`` for both modalities, 1 for one) and 0 when wrong;
``v(empty) = 0``. Then

    phi_m = sum_{S not containing m} |S|! (M - |S| - 1)! / M!  [v(S + m) - v(S)]

which for two modalities is the reference's ``contrib_a = (value_a + value_all - value_v) / 2``
(values -0.5, 0, 0.5, 1, 1.5). A sample all of whose coalitions are right has ``phi_m = 1`` for every m, for
any M, so the thresholds below keep their meaning past two modalities.

Re-sampling. The epoch then trains on every row once plus, for each row i and modality m, extra copies
of row i in which only modality m's feature is kept (every other modality's encoder feature zeroed
in the forward, as the reference's ``drop`` flags; for two modalities: the other one dropped): with
``bounds = [b0, b1, b2]`` and ``copies = [c0, c1, c2]``, ``phi < b0`` gives ``c0`` copies, ``b0 < phi < b1``
``c1``, ``b1 < phi < b2`` ``c2``, and anything else (``phi >= b2``, or exactly on a bound) none; the
reference's ``[-0.1, 0.4, 1]`` and ``[3, 2, 1]`` give a modality worth 1 or more no copy, 0.5 one, 0 two, -0.5
three. The loss is the fusion head's cross-entropy over all entries (the copies included, as the
reference's enlarged dataset); separate unimodal heads are probes on the encoders' own (never zeroed)
features, as in ``joint``. The epoch is longer than the train split by the copies' count (logged as
``method.smv.entries``). The entries are shuffled by the run's batch-order generator
(``Method.training_entries``), so the order is a function of the seed, and a stop inside a re-sampled
epoch resumes into the same batches (the copies are part of the method's checkpointed state).

Schedule. The reference trains ``warmup`` epochs (counted from 0: its 0-4) on the plain set, values the
samples after every epoch from its 4th (0-based) and trains each later epoch on the set re-sampled from
the values after the epoch before. Here the valuation runs at the start of each epoch past the warm-up, on
the model as the previous epoch left it: the same thing (``epoch_base`` 0: ``warmup_epochs: 5`` re-samples
our epochs 6 on).

Hyper-parameters (``method.*``): ``warmup_epochs`` (5, the reference's ``--warmup``), ``bounds``
([-0.1, 0.4, 1.0]), ``copies`` ([3, 2, 1]). The reference protocol (Kinetics-Sounds, ``sample_level.py``
defaults): Adam lr 5e-5, weight decay 1e-4, StepLR 30 x0.1, 60 epochs, batch 64 (``recipes/*/smv.yaml``).

Deviations, deliberate: the valuation pass reads the training rows un-augmented (the reference's valuation
loader is its training dataset with random crops and flips, so its values are of one random view);
values are computed once per row (the reference, too, values every row once per epoch). BalanceBenchmark's
``Sample_trainer.py`` (``Calculate_Shapley_Sample``) values a coalition 1 when right, not ``|S|``, which moves a
sample whose coalitions are all right from 1 to 0.5 (one copy per modality); its inputs are zero-padded rather
than its features zeroed; here the authors' rule is kept.

M > 2: exact Shapley values over all ``2^M - 1`` non-empty coalitions (one encoder pass and ``2^M - 1``
fusion-head evaluations per row), and a copy keeps only its modality (as BalanceBenchmark's M-modality
form). Data-parallel: every process values every training row (the same model, so the same entries) and
the entries are sharded like any global batch.
"""

from __future__ import annotations

from itertools import combinations
from math import factorial

import torch
from pydantic import Field, field_validator

from bogc_cli.data.loader import Batch, resampled_entries, to_device
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.models.multimodal import FUSED, Outputs
from bogc_cli.schema import StrictModel


class SMVOptions(StrictModel):
    warmup_epochs: int = Field(5, ge=0, description="epochs (from the first) trained on the plain set before "
                               "re-sampling starts")
    bounds: list[float] = Field([-0.1, 0.4, 1.0], min_length=3, max_length=3,
                                description="Shapley-value bounds b0 < b1 < b2 of the copy bins")
    copies: list[int] = Field([3, 2, 1], min_length=3, max_length=3,
                              description="extra copies for phi < b0, b0 < phi < b1, b1 < phi < b2 (none above b2)")

    @field_validator("bounds")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if not v[0] < v[1] < v[2]:
            raise ValueError(f"bounds must increase (b0 < b1 < b2), got {v}")
        return v

    @field_validator("copies")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError(f"copies must be >= 0, got {v}")
        return v


def coalitions(m: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(m)``, smallest first."""
    return [c for k in range(1, m + 1) for c in combinations(range(m), k)]


def shapley_values(correct: dict[tuple[int, ...], torch.Tensor], m: int) -> torch.Tensor:
    """Per-sample Shapley values ``[N, M]`` with ``v(S) = |S| * correct[S]`` and ``v(empty) = 0``.

    ``correct``: for every non-empty coalition (a sorted tuple of modality indices) a bool ``[N]`` (the
    prediction from S's features was right)."""
    def value(s: tuple[int, ...]) -> torch.Tensor:
        return len(s) * correct[s].double() if s else torch.zeros_like(next(iter(correct.values())), dtype=torch.double)

    out = []
    for j in range(m):
        others = [i for i in range(m) if i != j]
        phi = 0
        for k in range(m):
            weight = factorial(k) * factorial(m - k - 1) / factorial(m)
            for s in combinations(others, k):
                phi = phi + weight * (value(tuple(sorted((*s, j)))) - value(s))
        out.append(phi)
    return torch.stack(out, dim=1)


def copy_counts(phi: torch.Tensor, bounds: list[float], copies: list[int]) -> torch.Tensor:
    """Extra copies per sample and modality, ``phi`` ``[N, M]`` -> int64 ``[N, M]``: ``copies[0]`` below ``bounds[0]``,
    ``copies[1]`` strictly between ``bounds[0]`` and ``bounds[1]``, ``copies[2]`` strictly between ``bounds[1]`` and
    ``bounds[2]``, else 0 (the reference's strict tests)."""
    b0, b1, b2 = bounds
    out = torch.zeros(phi.shape, dtype=torch.long)
    out[phi < b0] = copies[0]
    out[(b0 < phi) & (phi < b1)] = copies[1]
    out[(b1 < phi) & (phi < b2)] = copies[2]
    return out


def keep_only(feats: dict[str, torch.Tensor], variant: torch.Tensor, modalities: list[str]) -> dict[str, torch.Tensor]:
    """Features with, for each sample of variant ``v >= 1``, every modality but ``modalities[v - 1]`` zeroed.

    ``feats[m]``: ``[B, d_m]``; ``variant``: ``[B]`` int (0: the sample as it is)."""
    variant = variant.to(next(iter(feats.values())).device)
    out = {}
    for j, m in enumerate(modalities):
        drop = (variant > 0) & (variant != j + 1)
        out[m] = torch.where(drop.view(-1, 1), torch.zeros_like(feats[m]), feats[m])
    return out


class SMV(Method):
    name = "smv"
    summary = ("per-sample Shapley value of each modality (v(S) = |S| if the prediction from S is right); each epoch "
               "re-samples extra copies of a sample that train its low-value modality alone")
    Options = SMVOptions
    min_modalities = 2
    modality_note = "exact Shapley values over all 2^M - 1 coalitions; a copy keeps only its modality's feature"
    fidelity = ("follows Valuate-and-Enhance-Multimodal-Cooperation code/sample_level.py: v(S) = |S| x correct, "
                "features of left-out modalities zeroed, bins [-0.1, 0.4, 1] -> 3/2/1 copies keeping one modality, "
                "5 warm-up epochs; deviations: the valuation reads un-augmented rows (the reference: randomly "
                "cropped ones)")
    epoch_base = 0  # the reference's `epoch < warmup` counts from 0

    def __init__(self, options: SMVOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.copies: torch.Tensor | None = None  # [M, rows] extra copies of this epoch (None: no re-sampling)
        self._epoch_logs: dict[str, float] = {}

    # ------------------------------------------------------------ valuation
    @torch.no_grad()
    def valuate(self, loader) -> torch.Tensor:
        """Shapley values ``[rows, M]`` of every row of ``loader`` (the train split, in order), eval mode."""
        model, modalities = self.model, self.model.modalities
        was_training = model.training
        model.eval()
        subsets = coalitions(len(modalities))
        values = []
        try:
            for raw in loader:
                batch = to_device(raw, self.ctx.device) if isinstance(raw, dict) else raw
                with self.ctx.autocast():
                    feats = model.encode(batch.inputs)
                    correct = {}
                    for s in subsets:
                        kept = [feats[m] if j in s else torch.zeros_like(feats[m]) for j, m in enumerate(modalities)]
                        logits = model.fusion_head(kept)
                        correct[s] = (logits.float().argmax(1) == batch.labels).cpu()
                values.append(shapley_values(correct, len(modalities)))
        finally:
            model.train(was_training)
        return torch.cat(values)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._epoch_logs = {}
        self.copies = None
        if self.reference_epoch(epoch) < self.options.warmup_epochs:
            return
        if self.ctx.train_eval is None:
            raise UserError("method smv values the training rows at each epoch start and needs the training loader "
                            "(bogc train lends it)")
        phi = self.valuate(self.ctx.train_eval)
        counts = copy_counts(phi, self.options.bounds, self.options.copies)
        self.copies = counts.T.contiguous()
        for j, m in enumerate(self.model.modalities):
            self._epoch_logs[f"method.smv.value.{m}"] = float(phi[:, j].mean())
            self._epoch_logs[f"method.smv.copies.{m}"] = float(counts[:, j].sum())

    def training_entries(self) -> torch.Tensor | None:
        return None if self.copies is None else resampled_entries(self.copies)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        rows = len(self.ctx.train_eval.dataset) if self.ctx.train_eval is not None else 0
        extra = int(self.copies.sum()) if self.copies is not None else 0
        return {**self._epoch_logs, "method.smv.entries": float(rows + extra)}

    # ------------------------------------------------------------ training
    def losses(self, out, labels):
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}

    def step(self, batch: Batch) -> StepResult:
        opt, model = self.ctx.optimizer, self.model
        opt.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            feats = model.encode(batch.inputs)
            if batch.variant is not None and bool((batch.variant > 0).any()):
                out = model.heads(keep_only(feats, batch.variant, model.modalities))
            else:
                out = model.heads(feats)
            losses = {FUSED: self.fused_loss(out, batch.labels),
                      **self.probe_losses(Outputs(out.fused_logits, out.unimodal_logits, feats), batch.labels)}
        total = torch.stack([v.float() for v in losses.values()]).sum()
        total.backward()
        self.clip_and_step()
        variant = batch.variant if batch.variant is not None else torch.zeros(len(batch), dtype=torch.long)
        logs = {f"loss.{k}": v.detach() for k, v in losses.items()}
        logs["smv.copy_share"] = (variant > 0).double().mean().to(total.device)
        return StepResult(total.detach(), out.fused_logits.detach(), logs)

    # ------------------------------------------------------------ state
    def state_dict(self):
        return {"copies": self.copies, "epoch_logs": dict(self._epoch_logs)}

    def load_state_dict(self, state):
        self.copies = state.get("copies")
        self._epoch_logs = dict(state.get("epoch_logs", {}))


METHOD = SMV
