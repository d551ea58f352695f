"""``opm``: On-the-fly Prediction Modulation.

Wei, Hu, Du & Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI 2024
(the journal extension of OGM-GE). Reference code: GeWu-Lab/BML_TPAMI2024, ``code/main.py``,
``code/models/Classifier.py`` (``Modality_drop``, ``calcu_q``), ``code/config.py`` and
``code/scripts/train_opm.sh``; the defaults follow it. The dominant modality's encoder features
are dropped at random before the fusion head, so the fused prediction has to lean on the other
modalities.

One step, for a batch with labels ``y``:

1. ``z_m = encoder_m(x_m)`` ``[B, d_m]``; unimodal logits on these unmasked features give the
   scores ``s_m = sum_i softmax(unimodal logits_m)_{i, y_i}`` and the discrepancy ratios as in
   OGM-GE: ``rho_m = s_m / s_other`` (M > 2: ``s_m / min_j s_j``; shared with ``ogm_ge``).
2. Drop probability ``q_m = clip(q_base * (1 + lam * tanh(rho_m - 1)), 0, 1)`` if
   ``rho_m > 1`` else 0 (a tie drops nothing, as the reference's ``calcu_q``).
3. With probability ``p_exe`` (once per batch): per sample and modality a Bernoulli keep-mask
   ``k_{i,m} ~ B(1 - q_m)``; dropped features are zero and every kept feature is divided by one
   shared ``1 - theta``, ``theta = sum_m d_m q_m / sum_m d_m`` (``scale: shared``, the reference
   code: the drop rate of the concatenated feature). ``scale: modality`` instead divides modality
   m's kept features by its own ``1 - q_m`` (textbook inverted dropout, ``E[k z / (1 - q)] = z``;
   this tool's earlier default, kept as an option: with ``q = 0.6`` on one of two modalities of equal size it
   scales that modality's kept rows x1.75 and the other's x0.70 relative to the reference).
   ``1 - q`` is clamped at 1e-6.
4. Samples with every modality dropped leave the loss; the fusion loss is the cross-entropy of
   ``model.heads(masked features)`` over the kept samples. A batch with no sample kept makes
   no update (as the reference code, which skips it).

No dropping during the first ``warmup_epochs`` epochs: the reference's ``warm_up = epoch <= 5``
over its 0-based epochs, i.e. 6 epochs (``Method.epoch_base``: dropping starts at the reference's
epoch ``warmup_epochs``, our epoch ``warmup_epochs + 1``). The unimodal logits come from slices of
a linear concat head (``model.unimodal_logits: fusion-slices``, as the reference, where they
receive no loss of their own) or from separate heads (``heads``: trained as probes on the
detached, unmasked features; not the reference's scoring). The fused logits returned for the
training accuracy are those of the unmasked features, so the accuracy is defined for every sample.

The reference computes ``q`` and uses it in the same step (the paper's figure draws
``q_{t+1}`` from step t); here too the same step.

The masks and the once-per-batch choice come from the method's own generator (seeded from the
run seed, kept in ``state_dict``). Data-parallel, the scores are the global batch's (one small
all-reduce before the masks), every process draws the masks of the whole global batch and keeps
its rows', and the fusion loss is the sum over this process's kept samples divided by the global
kept count (scaled by 1 / its share, which the gradient averaging undoes): the step one process
takes on the whole batch.

Deliberate deviations: the ratio's denominator is clamped at 1e-8 (shared with ``ogm_ge``).

Hyper-parameters (``method.*``): ``q_base`` (0.5), ``lam`` (0.5), ``p_exe`` (0.7), all as
``train_opm.sh``; ``warmup_epochs`` (6), ``scale`` (``shared``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.fusion.ogm_ge import ogm_coefficients
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

KEEP_EPS = 1e-6
DRAW_SEED = 15_485_863  # the mask generator's offset from the run seed, apart from the other generators


class OPMOptions(StrictModel):
    q_base: float = Field(0.5, ge=0, le=1, description="base drop probability of the dominant modality")
    lam: float = Field(0.5, ge=0, description="how much the drop probability grows with tanh(rho - 1)")
    p_exe: float = Field(0.7, ge=0, le=1, description="probability that a batch is masked at all")
    warmup_epochs: int = Field(6, ge=0, description="epochs without dropping (the reference's epoch <= 5, from 0: 6)")
    scale: Literal["shared", "modality"] = Field(
        "shared", description="kept features divided by one 1-theta (reference code) or each by its own 1-q_m")


# ---------------------------------------------------------------- the rule, hand-testable
def unimodal_scores(unimodal_logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``s_m = sum_i softmax(logits_m)_{i, y_i}`` from ``{m: [B, C]}`` and ``labels`` ``[B]``; detached scalars."""
    idx = labels.view(-1, 1)
    return {m: torch.softmax(x.detach().float(), dim=1).gather(1, idx).sum() for m, x in unimodal_logits.items()}


def drop_probabilities(rho: dict[str, torch.Tensor], q_base: float, lam: float) -> dict[str, torch.Tensor]:
    """``q_m = clip(q_base (1 + lam tanh(rho_m - 1)), 0, 1)`` where ``rho_m > 1``, else 0 (scalars)."""
    return {m: torch.where(r > 1, (q_base * (1 + lam * torch.tanh(r - 1))).clamp(0.0, 1.0), torch.zeros_like(r))
            for m, r in rho.items()}


def keep_masks(q: dict[str, torch.Tensor], batch_size: int, device: torch.device,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample keep masks ``{m: bool [B]}``, ``True`` with probability ``1 - q_m``."""
    out = {}
    for m, qm in q.items():
        u = torch.rand(batch_size, device=device, generator=generator)
        out[m] = u >= qm.to(device)
    return out


def mask_features(feats: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], q: dict[str, torch.Tensor],
                  scale: str = "shared") -> dict[str, torch.Tensor]:
    """Zero the dropped samples of each ``feats[m]`` ``[B, d_m]`` and scale the kept ones; returns ``{m: [B, d_m]}``.

    ``shared`` (the reference's ``Modality_drop.execute_drop``): every modality by ``1 / (1 - theta)`` with
    ``theta = sum_m d_m q_m / sum_m d_m``; ``modality``: by ``1 / (1 - q_m)``. ``1 - q`` is clamped at
    ``KEEP_EPS``."""
    if scale == "shared":
        dims = {m: z.shape[1] for m, z in feats.items()}
        theta = sum(dims[m] * q[m] for m in feats) / sum(dims.values())
        factors = {m: 1.0 / (1 - theta).clamp_min(KEEP_EPS) for m in feats}
    else:
        factors = {m: 1.0 / (1 - q[m]).clamp_min(KEEP_EPS) for m in feats}
    return {m: z * (keep[m].to(z.dtype) * factors[m].to(z.dtype)).unsqueeze(1) for m, z in feats.items()}


def kept_samples(keep: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bool ``[B]``: samples with at least one modality kept (the others leave the loss)."""
    return torch.stack(list(keep.values())).any(dim=0)


# ---------------------------------------------------------------- the method
class OPM(Method):
    name = "opm"
    summary = "drop the dominant modality's features per sample with prob q_base (1 + lam tanh(rho - 1))"
    Options = OPMOptions
    min_modalities = 2
    modality_note = "M > 2: rho_m = s_m / min_j s_j (as ogm_ge); every modality above the weakest may be dropped"
    fidelity = ("BML_TPAMI2024 Classifier.py/main.py: one shared scale 1/(1-theta) (scale: modality: "
                "per-modality 1/(1-q_m), textbook inverted dropout); 6 warm-up epochs (its epoch <= 5, from 0); "
                "fusion-slices scores. Ours: ratio denominator clamped at 1e-8")
    epoch_base = 0  # the reference's `for epoch in range(start_epoch + 1, cfg.epochs)`, start_epoch = -1

    def __init__(self, options: OPMOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.draws = torch.Generator(device=ctx.device).manual_seed((torch.initial_seed() + DRAW_SEED) % 2**63)

    def losses(self, out, labels):
        """Without masking: the fusion loss and the probes (the step masks the features itself)."""
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}

    def step(self, batch: Batch) -> StepResult:
        o = self.options
        labels = batch.labels
        self.ctx.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        with self.ctx.autocast():
            feats = self.model.encode(batch.inputs)
            clean = self.model.heads(feats)
            # means, not sums (the same ratios), so that shards' scores combine into the global batch's
            scores = {m: s / len(batch) for m, s in unimodal_scores(clean.unimodal_logits, labels).items()}
            rho, _ = ogm_coefficients(self.batch_mean(scores), alpha=1.0)
            dropping = self.in_epoch_window(o.warmup_epochs, None)  # after the warm-up, to the end
            if dropping:
                q = drop_probabilities(rho, o.q_base, o.lam)
            else:
                q = {m: torch.zeros_like(r) for m, r in rho.items()}
            execute = dropping and bool(
                torch.rand((), generator=self.draws, device=self.draws.device) < o.p_exe)
            losses = {}
            if execute:
                start, stop, rows = self.batch_part(len(batch))
                everyone = keep_masks(q, rows, labels.device, self.draws)           # the global batch's masks
                total_kept = kept_samples(everyone).sum()
                keep = {m: k[start:stop] for m, k in everyone.items()}
                kept = kept_samples(keep)
                masked = self.model.heads(mask_features(feats, keep, q, o.scale))
                if bool(total_kept > 0):
                    share = (stop - start) / rows
                    ce = F.cross_entropy(masked.fused_logits[kept].float(), labels[kept], reduction="sum")
                    losses[FUSED] = ce / (total_kept * share)
                logs["opm.kept"] = kept.float().mean()
            else:
                losses[FUSED] = self.fused_loss(clean, labels)
                logs["opm.kept"] = torch.ones((), device=labels.device)
            if FUSED in losses:
                losses.update(self.probe_losses(clean, labels))
        logs["opm.executed"] = torch.tensor(float(execute), device=labels.device)
        logs.update({f"opm.q.{m}": v.detach() for m, v in q.items()})
        logs.update({f"opm.rho.{m}": v.detach() for m, v in rho.items()})
        if losses:
            total = torch.stack([v.float() for v in losses.values()]).sum()
            total.backward()
            self.clip_and_step()
        else:  # every sample fully dropped: no update, as the reference skips the batch
            total = torch.zeros((), device=labels.device)
        logs.update({f"loss.{k}": v.detach() for k, v in losses.items()})
        return StepResult(total.detach(), clean.fused_logits.detach(), logs)


    def state_dict(self):
        return {"draws": self.draws.get_state()}

    def load_state_dict(self, state):
        if "draws" in state:  # a checkpoint from before the generator: keep the fresh stream
            self.draws.set_state(state["draws"])


METHOD = OPM
