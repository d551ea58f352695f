"""``mbsd``: Modality-Balanced Self-Distillation between the modalities' predictions.

Reference code: GeWu-Lab/BalanceBenchmark, ``balancemm/trainer/MBSD_trainer.py`` (with
``configs/trainer_config.yaml``), described in Xu et al., "BalanceBenchmark: A Survey for
Multimodal Imbalance Learning", arXiv:2502.10816, 2025 (the toolkit names no other code for it;
its two- and three-modality branches are what was read). Each modality's classifier learns from
the labels and, on the samples where at least one modality is right, the weaker modality's
prediction is pulled towards the stronger one's, in proportion to how far apart they are.

One step, inside the epoch window, with unimodal logits ``o_m`` ``[B, C]``, ``p_m = softmax(o_m)``
and ``q_m = p_m[y]`` (the probability of the true class), for a pair of modalities ``(a, b)``:

- weight ``w_i = |q_a,i - q_b,i|`` if ``argmax p_a,i == y_i`` or ``argmax p_b,i == y_i``, else 0;
- ``s_i = max(q_a,i, q_b,i)``, ``t_i = min(q_a,i, q_b,i)`` (the stronger and the weaker);
- ``KL_i = t_i (log t_i - s_i)``: the reference's ``F.kl_div(ps, pw, reduction='none')``, whose input is
  a probability where ``kl_div`` expects a log-probability; kept as the code has it;
- ``RS_i = (1/C) sum_c (o_a,ic - o_b,ic)^2``: on the **logits** for two modalities, on the
  **probabilities** ``p`` in the reference's three-modality branch (kept: RS uses logits when M = 2 and
  probabilities when M >= 3);
- ``L_KL = sum_i w_i KL_i / B``, ``L_RS = sum_i w_i RS_i / B``.

Gradients flow through ``w``, ``s`` and ``t`` as well (the reference writes them element by element into
tensors, which keeps their graph). With more than two modalities ``L_KL`` and ``L_RS`` are the means
over the pairs ``a < b`` (the reference's three-modality branch; more modalities extend it). The loss:

    L = CE(f, y) + sum_m CE(o_m, y) + L_RS + L_KL

inside the window, ``CE(f, y)`` outside it (then separate unimodal heads are trained as probes on
detached features, as joint's). The unimodal logits are the reference's slices of the concat head
with ``model.unimodal_logits: fusion-slices`` (its model's ``unimodal_result``; the audio-visual
recipes set it), the separate heads otherwise.

Hyper-parameters (``method.*``): ``start_epoch`` (0) and ``end_epoch`` (80): the window, counted
from 0 as BalanceBenchmark's ``current_epoch`` (``epoch_base`` 0: 0-80 is our epochs 1-81, all of its
30-epoch protocol). The reference has no other.

Deviation: ``log t`` is taken of ``max(t, tiny)``, so a weaker probability that underflows to 0 gives
a finite gradient (the reference's is infinite there); equal otherwise. Per-sample terms averaged
over the batch: data-parallel training needs nothing beyond the usual gradient average. Any M >= 2.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class MBSDOptions(StrictModel):
    start_epoch: int = Field(0, ge=0, description="first epoch (counted from 0) with the MBSD loss")
    end_epoch: int = Field(80, ge=0, description="last epoch (counted from 0) with the MBSD loss")


def pair_terms(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor, rs_on_logits: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w, KL, RS)``, each ``[B]``, for one modality pair's logits ``[B, C]`` and labels ``[B]`` (float32,
    differentiable in every factor)."""
    la, lb = logits_a.float(), logits_b.float()
    pa, pb = torch.softmax(la, dim=1), torch.softmax(lb, dim=1)
    y = labels.view(-1, 1)
    qa, qb = pa.gather(1, y).squeeze(1), pb.gather(1, y).squeeze(1)
    either = (pa.argmax(1) == labels) | (pb.argmax(1) == labels)
    strong = torch.where(qb > qa, qb, qa)  # Python's max(qa, qb): qa on a tie
    weak = torch.where(qb < qa, qb, qa)
    w = torch.where(either, strong - weak, torch.zeros_like(qa))
    kl = weak * (torch.log(weak.clamp_min(torch.finfo(weak.dtype).tiny)) - strong)
    diff = (la - lb) if rs_on_logits else (pa - pb)
    rs = diff.square().mean(dim=1)
    return w, kl, rs


def mbsd_terms(logits: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_KL, L_RS)`` for ``M x [B, C]`` unimodal logits (M >= 2): per pair ``sum_i w_i KL_i / B`` and
    ``sum_i w_i RS_i / B``, averaged over the pairs; RS on logits for M = 2, on probabilities for M >= 3."""
    on_logits = len(logits) == 2
    kls, rss = [], []
    for a, b in combinations(logits, 2):
        w, kl, rs = pair_terms(a, b, labels, on_logits)
        kls.append((w * kl).mean())
        rss.append((w * rs).mean())
    return torch.stack(kls).mean(), torch.stack(rss).mean()


class MBSD(Method):
    name = "mbsd"
    summary = ("fused and unimodal CE plus, where a modality is right, a confidence-weighted pull of the weaker "
               "modality's true-class probability and logits towards the stronger's")
    Options = MBSDOptions
    min_modalities = 2
    modality_note = "M > 2: the pair terms are averaged over modality pairs (the reference's three-modality branch)"
    fidelity = ("follows GeWu-Lab/BalanceBenchmark MBSD_trainer.py (window 0-80): kl_div(p_strong, p_weak) as "
                "written (a probability as its input), squared logit gap for two modalities and probability gap "
                "for three, gradients through the weights; deviation: log of the weak probability floored at tiny")
    epoch_base = 0  # BalanceBenchmark's current_epoch starts at 0

    def __init__(self, options: MBSDOptions, model, ctx):
        super().__init__(options, model, ctx)
        self._logs: dict[str, torch.Tensor] = {}

    def losses(self, out, labels):
        if not self.in_epoch_window(self.options.start_epoch, self.options.end_epoch):
            return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}
        logits = [out.unimodal_logits[m] for m in self.model.modalities]
        kl, rs = mbsd_terms(logits, labels)
        self._logs = {"mbsd.kl": kl.detach(), "mbsd.rs": rs.detach()}
        unimodal = {m: F.cross_entropy(z.float(), labels) for m, z in zip(self.model.modalities, logits)}
        return {FUSED: self.fused_loss(out, labels), **unimodal, "distill": rs + kl}

    def before_backward(self, out, batch):
        logs, self._logs = self._logs, {}
        return logs


METHOD = MBSD
