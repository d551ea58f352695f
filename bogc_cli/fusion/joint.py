"""``joint``: the fusion loss only (plain late-fusion training, the usual baseline)."""

from __future__ import annotations

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED


class Joint(Method):
    name = "joint"
    summary = "fusion loss L_0 only; unimodal heads trained as probes on detached features"
    fidelity = "OGM-GE_CVPR2022 main.py --modulation Normal (one joint loss); equal"
    tasks = ("classification", "multilabel", "regression")
    task_note = "the fusion loss is the task's loss (CE, BCE with logits, L1/MSE); nothing else depends on it"

    def losses(self, out, labels):
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}


METHOD = Joint
