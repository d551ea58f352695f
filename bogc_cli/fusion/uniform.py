"""``uniform``: fusion loss plus every unimodal loss with equal, fixed weights.

``L = L_0 + sum_m L_m``: the fixed-weight sum that gradient-calibration methods replace.
"""

from __future__ import annotations

from bogc_cli.fusion.base import Method


class Uniform(Method):
    name = "uniform"
    tasks = ("classification", "multilabel", "regression")
    task_note = "L_0 + sum_m L_m with each loss the task's loss (a sum of per-modality losses)"
    summary = "L_0 + sum_m L_m (fusion + unimodal losses, fixed equal weights)"
    fidelity = "MMPareto_ICML2024 uniform_baseline.py (fusion + unimodal losses, separate heads); equal"

    def losses(self, out, labels):
        return self.source_losses(out, labels)


METHOD = Uniform
