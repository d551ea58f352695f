"""``ogm_ge``: On-the-fly Gradient Modulation with Generalization Enhancement.

Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022.
Each step, the discrepancy ratio of modality m is ``rho_m = s_m / s_other`` (for M > 2,
``s_m / min_j s_j``), where ``s_m = sum_i softmax(unimodal logits_m)_{y_i}`` (computed as the
batch mean, ``s_m / B``: the ratio is the same, and means of shards combine into the global
batch's). The dominant modality's encoder gradients are scaled by ``k_m = 1 - tanh(alpha * rho_m)``
when ``rho_m > 1`` (else 1). With ``ge`` (Generalization Enhancement), Gaussian noise with the
gradient's own standard deviation is added to every modulated tensor. Only inside the epoch
window ``[start_epoch, end_epoch]``.

The noise comes from the method's own generator (seeded from the run seed, kept in
``state_dict``), not the global one, so a resumed run draws the same noise. Data-parallel, each
process first averages the gradients (with the scores in the same all-reduce, so no collective
is added), then every process modulates the global batch's gradients and adds the same noise,
with the std of the global gradient: the step one process would take on the whole batch.

The loss is the fusion loss; the unimodal logits are slices of a linear concat head
(``model.unimodal_logits: fusion-slices``, as in the paper) or, with separate heads, probes
trained on detached features.

Hyper-parameters (``method.*``): ``alpha`` (0.8 for CREMA-D; 0.1 for VGGSound), ``ge`` (true;
false gives plain OGM), ``start_epoch`` (0), ``end_epoch`` (50), ``modulate`` (``conv``: the
encoders' convolution kernels, as in the paper; ``weights``: every weight matrix or kernel,
for MLP encoders that have no convolutions).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class OGMGEOptions(StrictModel):
    alpha: float = Field(0.8, gt=0, description="modulation strength")
    ge: bool = Field(True, description="add gradient-scaled Gaussian noise (Generalization Enhancement)")
    start_epoch: int = Field(0, ge=0, description="first epoch (1-based) with modulation")
    end_epoch: int = Field(50, ge=0, description="last epoch with modulation")
    modulate: Literal["conv", "weights"] = Field("conv", description="which encoder tensors are modulated")


NOISE_SEED = 1_299_709  # the noise generator's offset from the run seed, apart from the other generators


def ogm_coefficients(scores: dict[str, torch.Tensor], alpha: float, eps: float = 1e-8
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Discrepancy ratios and modulation coefficients ``(rho, k)`` per modality from scores ``s_m``.

    Two modalities: ``rho_m = s_m / s_other``; more: ``rho_m = s_m / min_j s_j``. The
    denominator is guarded by ``eps`` so a modality scoring ~0 cannot make a ratio explode.
    """
    names = list(scores)
    if len(names) == 2:
        a, b = names
        rho = {a: scores[a] / scores[b].clamp_min(eps), b: scores[b] / scores[a].clamp_min(eps)}
    else:
        low = torch.stack([scores[m] for m in names]).min().clamp_min(eps)
        rho = {m: scores[m] / low for m in names}
    k = {m: torch.where(r > 1, 1 - torch.tanh(alpha * r), torch.ones_like(r)) for m, r in rho.items()}
    return rho, k


class OGMGE(Method):
    name = "ogm_ge"
    summary = "scale the dominant modality's encoder gradients by 1 - tanh(alpha * ratio), plus GE noise"
    Options = OGMGEOptions
    min_modalities = 2
    modality_note = "M > 2: rho_m = s_m / min_j s_j (the paper has two)"

    @classmethod
    def check_config(cls, options: OGMGEOptions, recipe) -> str | None:
        encoders = recipe.model.encoders
        named = [encoders] if isinstance(encoders, str) else list((encoders or {}).values())
        if options.modulate == "conv" and named and all(e == "mlp" for e in named):
            return ("method.modulate 'conv' scales convolution kernels, but model.encoders is mlp (no "
                    "convolutions: nothing would be modulated); set method.modulate: weights")
        return None

    def __init__(self, options: OGMGEOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.noise = torch.Generator(device=ctx.device).manual_seed((torch.initial_seed() + NOISE_SEED) % 2**63)

    def losses(self, out, labels):
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}

    def _modulated(self, p: torch.nn.Parameter) -> bool:
        return p.dim() == 4 if self.options.modulate == "conv" else p.dim() >= 2

    def after_backward(self, out, batch) -> dict[str, torch.Tensor]:
        o = self.options
        if not o.start_epoch <= self.ctx.epoch <= o.end_epoch:
            return {}
        labels = batch.labels.view(-1, 1)
        scores = {m: torch.softmax(logits.detach().float(), dim=1).gather(1, labels).mean()
                  for m, logits in out.unimodal_logits.items()}
        # data-parallel: the global batch's scores and gradients (one all-reduce, instead of clip_and_step's)
        scores = self.batch_mean(scores, gradients=True)
        rho, k = ogm_coefficients(scores, o.alpha)
        for group in self.model.param_groups():
            if group.role != "encoder":
                continue
            for p in group.params:
                if p.grad is None or not self._modulated(p):
                    continue
                g = p.grad
                if o.ge:
                    noise = torch.randn(g.shape, generator=self.noise, device=g.device, dtype=g.dtype)
                    noise = noise * (g.std().nan_to_num(0.0) + 1e-8)
                    p.grad = g * k[group.modality].to(g.dtype) + noise
                else:
                    p.grad = g * k[group.modality].to(g.dtype)
        logs = {f"ogm.k.{m}": v for m, v in k.items()}
        logs.update({f"ogm.rho.{m}": v for m, v in rho.items()})
        return logs

    def state_dict(self):
        return {"noise": self.noise.get_state()}

    def load_state_dict(self, state):
        if "noise" in state:  # a checkpoint from before the generator: keep the fresh stream
            self.noise.set_state(state["noise"])


METHOD = OGMGE
