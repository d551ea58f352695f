"""``cml``: Calibrating Multimodal Learning.

Ma, Zhang, Zhang, Wu, Fu, Zhou & Hu, "Calibrating Multimodal Learning", ICML 2023
(arXiv:2306.01265). The rule: a prediction should not grow *more* confident when a modality is
removed, so confidence increases under removal are penalised. The authors' code (QingyangZhang/CML, ``cpm/CPM_Nets.py`` ``rank_loss``,
``miwae/train.py``) applies it to imputation models on multi-view data; the defaults here follow the
form GeWu-Lab/BalanceBenchmark gives it for late-fusion classifiers
(``balancemm/trainer/CML_trainer.py``, ``configs/trainer_config.yaml``), which this project's models
are.

One step, inside the epoch window, with fused logits ``f_0`` ``[B, C]``: the modalities are removed
one at a time in an order drawn at random once per epoch (the reference shuffles the modality list
at the start of each epoch and pops from its end); ``f_i`` is the fusion head's output with the first
``i`` removed modalities' features set to zero (for the reference's linear concat head this is its
``f_{i-1} - o_removed + b / M``: the removed slices gone, the full bias kept), for ``i = 1 .. M-1``.
With ``conf_i = max_c softmax(f_i)`` per sample:

    L = (1/M) sum_{i=0}^{M-1} CE(f_i, y)  +  lam * sum_{i=1}^{M-1} max(0, sum_batch (conf_i - conf_{i-1}))

The hinge is taken over the **batch sum** (the reference's ``max(0, torch.sub(conf_x, conf).sum())``),
not per sample as in the paper's regulariser and the authors' ``rank_loss``, and its "trick 1"
(``sign``, which exempts samples that become correct under removal) is computed there but never
used; both as in BalanceBenchmark. Outside the window the loss is ``CE(f_0, y)`` alone. The unimodal
heads, when separate, are trained as probes on detached features (as joint's).

Hyper-parameters (``method.*``): ``lam`` (0.1), ``start_epoch`` (0) and ``end_epoch`` (80): the
window, counted from 0 as BalanceBenchmark's ``current_epoch`` (``epoch_base`` 0: 0-80 is our epochs
1-81, all of its 30-epoch protocol).

The removal order comes from the method's own generator (seeded from the run seed, kept in
``state_dict``), so a resumed run removes in the same order. Data-parallel, the batch sum inside the
hinge is the global batch's (``batch_mean`` of each process's mean, times the global batch size,
back-propagated through ``global_value``). Any M >= 2 (BalanceBenchmark runs two and three).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

ORDER_SEED = 7_368_787  # the removal-order generator's offset from the run seed, apart from the other generators


class CMLOptions(StrictModel):
    lam: float = Field(0.1, ge=0, description="weight of the confidence-increase penalty")
    start_epoch: int = Field(0, ge=0, description="first epoch (counted from 0) with the CML loss")
    end_epoch: int = Field(80, ge=0, description="last epoch (counted from 0) with the CML loss")


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability per row: ``[B, C]`` -> ``[B]`` (float32, differentiable)."""
    return torch.softmax(logits.float(), dim=1).max(dim=1).values


def removal_logits(model, feats: dict[str, torch.Tensor], order: list[str]) -> list[torch.Tensor]:
    """Fused logits with ``order``'s modalities removed one after another, cumulatively: ``len(order) x [B, C]``.

    A removed modality's features ``[B, d_m]`` are zeros for the fusion head (``model.fusion_head``)."""
    feats = dict(feats)
    out = []
    for m in order:
        feats[m] = torch.zeros_like(feats[m])
        out.append(model.fusion_head([feats[k] for k in model.modalities]))
    return out


def cml_loss(chain: list[torch.Tensor], labels: torch.Tensor, lam: float, batch_sums=None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(classification, penalty, total)`` for the removal chain ``[f_0, f_1, ...]`` (``M x [B, C]``).

    classification = mean over the chain of ``CE(f_i, y)``; penalty = ``sum_i max(0, sum_batch(conf_i -
    conf_{i-1}))``; total = classification + ``lam`` penalty. ``batch_sums`` (optional) maps the per-sample
    increases ``[conf_i - conf_{i-1}]`` (``M - 1 x [B]``) to the batch sums the hinge sees (data-parallel: the
    global batch's); default: each one's sum."""
    ce = torch.stack([F.cross_entropy(f.float(), labels) for f in chain]).mean()
    conf = [confidence(f) for f in chain]
    increases = [conf[i] - conf[i - 1] for i in range(1, len(chain))]
    sums = batch_sums(increases) if batch_sums is not None else [d.sum() for d in increases]
    penalty = torch.stack([torch.relu(x) for x in sums]).sum() if sums else ce.new_zeros(())
    return ce, penalty, ce + lam * penalty


class CML(Method):
    name = "cml"
    summary = ("CE over the fused logits with modalities removed one by one, plus a penalty when removal raises "
               "confidence")
    Options = CMLOptions
    min_modalities = 2
    modality_note = "any M >= 2: modalities removed cumulatively in a per-epoch random order (M - 1 removals)"
    fidelity = ("follows GeWu-Lab/BalanceBenchmark CML_trainer.py (lam 0.1, window 0-80): cumulative removal in a "
                "per-epoch random order, hinge on the batch sum of confidence increases, CE averaged over the chain; "
                "the authors' QingyangZhang/CML applies a per-sample hinge to imputation models; removal = zeroed "
                "features (equal to the reference's slice subtraction for a linear concat head)")
    epoch_base = 0  # BalanceBenchmark's current_epoch starts at 0

    def __init__(self, options: CMLOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.generator = torch.Generator().manual_seed((torch.initial_seed() + ORDER_SEED) % 2**63)
        self.order: list[str] = self._draw_order()
        self._logs: dict[str, torch.Tensor] = {}

    def _draw_order(self) -> list[str]:
        """The modalities in the order they are removed this epoch (the shuffled list popped from its end)."""
        perm = torch.randperm(len(self.model.modalities), generator=self.generator).tolist()
        shuffled = [self.model.modalities[i] for i in perm]
        return list(reversed(shuffled))[: len(shuffled) - 1]

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.order = self._draw_order()

    def _active(self) -> bool:
        return self.in_epoch_window(self.options.start_epoch, self.options.end_epoch)

    def _global_sums(self, increases: list[torch.Tensor]) -> list[torch.Tensor]:
        """The global batch's sums of the per-sample increases ``M - 1 x [B]`` (one all-reduce), each with
        this process's rows' gradient. One process: their sums."""
        if self.ctx.distributed is None:
            return [d.sum() for d in increases]
        means = [d.mean() for d in increases]
        whole = self.batch_mean({str(i): v for i, v in enumerate(means)})
        rows = self.batch_part(increases[0].shape[0])[2]
        return [rows * self.global_value(v, whole[str(i)]) for i, v in enumerate(means)]

    def losses(self, out, labels):
        probes = self.probe_losses(out, labels)
        if not self._active():
            return {FUSED: self.fused_loss(out, labels), **probes}
        with self.ctx.autocast():
            chain = [out.fused_logits] + removal_logits(self.model, out.features, self.order)
        ce, penalty, _ = cml_loss(chain, labels, self.options.lam, self._global_sums)
        self._logs = {"cml.penalty": penalty.detach(),
                      **{f"cml.removed_first.{m}": penalty.new_tensor(float(m == self.order[0]))
                         for m in self.model.modalities}}
        return {FUSED: ce, "confidence": self.options.lam * penalty, **probes}

    def before_backward(self, out, batch):
        logs, self._logs = self._logs, {}
        return logs

    def state_dict(self):
        return {"generator": self.generator.get_state(), "order": list(self.order)}

    def load_state_dict(self, state):
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if "order" in state:
            self.order = list(state["order"])


METHOD = CML
