"""``uniform``: fusion loss plus every unimodal loss with equal, fixed weights.

``L = L_0 + sum_m L_m``: the fixed-weight sum that gradient-calibration methods replace.
"""

from __future__ import annotations

import torch.nn.functional as F

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED


class Uniform(Method):
    name = "uniform"
    summary = "L_0 + sum_m L_m (fusion + unimodal losses, fixed equal weights)"

    def losses(self, out, labels):
        losses = {FUSED: self.fused_loss(out, labels)}
        for m, logits in out.unimodal_logits.items():
            losses[m] = F.cross_entropy(logits.float(), labels)
        return losses
