"""``mimo``: the multimodal loss plus a smooth maximum of the unimodal losses.

Fernando et al., "Mitigating Modality Imbalance in Multi-modal Learning via Multi-objective
Optimization", arXiv:2511.06686, 2025. The paper poses multimodal learning as a lexicographic
multi-objective problem that gives priority to the worst unimodal objective, and solves a
smoothly penalised version of it with plain gradient steps:

    L = L_0 + lam * T * log sum_m exp(L_m / T)

``T * logsumexp(L_m / T)`` is a smooth maximum: it lies in ``[max_m L_m, max_m L_m + T log M]``,
tends to ``max_m L_m`` as ``T -> 0``, and its gradient weights each ``L_m`` by
``softmax(L / T)_m``, so the worst-learnt modality gets most of the push.

Sources and fidelity: the paper's abstract names its code, https://github.com/heshandevaka/MIMO.
That repository could not be read from this project's build environment (no stored copy of it
was available when this module was revised), so the rule above is reconstructed from the paper's
abstract and published summaries (a smoothly penalised objective: the multi-modal loss plus a
smooth maximum over the uni-modal losses), and the defaults are **not yet checked against the
authors' code**: the penalty's schedule (whether ``lam`` grows during training, as penalty
methods often do), the smoothing's form and its constants, and the authors' optimiser settings
may differ. ``lam`` is constant here. ``docs/fidelity.md`` records this as an open item; whoever
can read the repository should pin ``lam``, ``temperature`` and ``recipes/*/mimo.yaml`` to it.

Hyper-parameters (``method.*``): ``lam`` (1.0), ``temperature`` (1.0). Works for any M >= 2.

Task types: the objective combines per-modality losses only, so each ``L_m`` (and ``L_0``) is the run's task
loss (binary cross-entropy with logits for multilabel, L1 or MSE for regression). ``temperature`` is in the
loss's units: the default was chosen for cross-entropy.

Data-parallel: the smooth max is of the global batch's unimodal losses (each process's batch
means, weighted by its share, in one all-reduce of M numbers per step); each process's rows reach
it through their own losses, weighted by the global ``softmax(L / T)``, so the averaged gradients
are one process's on the whole batch.
"""

from __future__ import annotations

import torch
from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class MIMOOptions(StrictModel):
    lam: float = Field(1.0, ge=0, description="weight of the smooth-max penalty on the unimodal losses")
    temperature: float = Field(1.0, gt=0, description="smooth-max temperature T (T -> 0: the hard max)")


def smooth_max(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T * logsumexp(losses / T)`` over the last dim: ``[..., M]`` -> ``[...]``."""
    return temperature * torch.logsumexp(losses / temperature, dim=-1)


class MIMO(Method):
    name = "mimo"
    summary = "L_0 + lam * smooth-max (log-sum-exp, temperature T) of the unimodal losses"
    Options = MIMOOptions
    min_modalities = 2
    modality_note = "the smooth max runs over any number of unimodal losses"
    tasks = ("classification", "multilabel", "regression")
    task_note = ("L_0 + a smooth max of the L_m, each the task's loss (CE, BCE with logits, L1/MSE); the temperature "
                 "is in loss units, so the default T = 1 set for cross-entropy may need retuning for another loss")
    fidelity = ("reconstructed from the paper's abstract; its code (github.com/heshandevaka/MIMO) could not be "
                "read here, so lam, temperature and the penalty schedule (constant here) are unchecked against it")

    def losses(self, out, labels):
        per_source = self.source_losses(out, labels)
        fused = per_source.pop(FUSED)
        stacked = torch.stack(list(per_source.values()))  # [M]
        stacked = self.global_value(stacked, self.batch_mean({"unimodal": stacked})["unimodal"])
        penalty = self.options.lam * smooth_max(stacked, self.options.temperature)
        self._priority = torch.softmax(stacked.detach() / self.options.temperature, dim=0)
        self._names = list(per_source)
        return {FUSED: fused, "smoothmax": penalty}

    def after_backward(self, out, batch):
        # the share of the penalty's gradient each unimodal loss received this step
        return {f"mimo.priority.{m}": w for m, w in zip(self._names, self._priority)}


METHOD = MIMO
