"""``ogm_ge``: On-the-fly Gradient Modulation with Generalization Enhancement.

Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022.
Reference code: GeWu-Lab/OGM-GE_CVPR2022, ``main.py`` (``train_epoch``); the defaults follow it.

Each step, the scores ``s_m = sum_i softmax(unimodal logits_m)_{y_i}`` (computed as the batch
mean ``s_m / B``: the ratio is the same, and means of shards combine into the global batch's)
give the discrepancy ratios ``rho_m = s_m / s_other`` (for M > 2, ``s_m / min_j s_j``). The
dominant modality's encoder gradients are scaled by ``k_m = 1 - tanh(alpha * rho_m)``.

Which encoder is damped, as the reference's ``if ratio_v > 1: ... else: ...``: with two
modalities ``(a, b)`` in the model's order (audio first on the audio-visual sets), ``b`` is damped
when ``rho_b > 1``, otherwise ``a`` is, so on a score tie (``rho = 1``) the first modality gets
``1 - tanh(alpha)`` (the paper's Eq. 10 would damp neither). M > 2 (no reference): every modality
with ``rho_m > 1`` is damped, and when all scores tie the first one is, as the two-modality else
branch does.

With ``ge`` (Generalization Enhancement), Gaussian noise with the standard deviation of the
unscaled gradient (``+ 1e-8``) is added to every modulated tensor, of both encoders. Only inside
the epoch window ``[start_epoch, end_epoch]``, counted from 0 as the reference's loop counts
(``Method.epoch_base``): the default ``0``-``50`` modulates our epochs 1-51, as the reference's.

The noise comes from the method's own generator (seeded from the run seed, kept in
``state_dict``), not the global one, so a resumed run draws the same noise. Data-parallel, each
process first averages the gradients (with the scores in the same all-reduce, so no collective
is added), then every process modulates the global batch's gradients and adds the same noise,
with the std of the global gradient: the step one process would take on the whole batch.

The loss is the fusion loss; the unimodal logits are slices of a linear concat head with half
the bias each (``model.unimodal_logits: fusion-slices``, as the reference code scores them) or,
with separate heads, probes trained on detached features (not the reference's scoring: the
ratio then differs, see docs/fidelity.md).

Deliberate deviations from the reference: a score ``s_m`` of ~0 is clamped at ``1e-8`` in the
ratio's denominator (the reference divides by it and would produce NaN coefficients); the
reference's ``modulate`` is fixed to 4-D convolution kernels, ``weights`` is our option for MLP
encoders that have none.

Hyper-parameters (``method.*``): ``alpha`` (0.8 for CREMA-D, the README's advice; 0.1 for
VGGSound), ``ge`` (true; false gives plain OGM), ``start_epoch`` (0) and ``end_epoch`` (50), the
reference's ``--modulation_starts``/``--modulation_ends`` in its 0-based count, ``modulate``
(``conv``: the encoders' convolution kernels, as the reference; ``weights``: every weight matrix
or kernel, for MLP encoders).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bogc_cli.fusion.base import Method
from bogc_cli.models.encoder_options import encoder_names
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class OGMGEOptions(StrictModel):
    alpha: float = Field(0.8, gt=0, description="modulation strength")
    ge: bool = Field(True, description="add gradient-scaled Gaussian noise (Generalization Enhancement)")
    start_epoch: int = Field(0, ge=0, description="first epoch with modulation, counted from 0 as the reference")
    end_epoch: int = Field(50, ge=0, description="last epoch with modulation, counted from 0 (50: our epochs 1-51)")
    modulate: Literal["conv", "weights"] = Field("conv", description="which encoder tensors are modulated")


NOISE_SEED = 1_299_709  # the noise generator's offset from the run seed, apart from the other generators


def ogm_coefficients(scores: dict[str, torch.Tensor], alpha: float, eps: float = 1e-8
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Discrepancy ratios and modulation coefficients ``(rho, k)`` per modality from scores ``s_m`` (scalars).

    Two modalities ``(a, b)`` (dict order): ``rho_a = s_a / s_b``, ``rho_b = s_b / s_a``; ``b`` is damped
    (``k_b = 1 - tanh(alpha rho_b)``, ``k_a = 1``) when ``rho_b > 1``, else ``a`` is, a tie included: the
    reference's if/else (OGM-GE_CVPR2022 ``main.py``). More: ``rho_m = s_m / min_j s_j``; every ``rho_m > 1``
    is damped, and the first modality when all tie. The denominators are clamped at ``eps`` so a modality
    scoring ~0 cannot make a ratio explode.
    """
    names = list(scores)
    if len(names) == 2:
        a, b = names
        rho = {a: scores[a] / scores[b].clamp_min(eps), b: scores[b] / scores[a].clamp_min(eps)}
        damped = {b: rho[b] > 1, a: ~(rho[b] > 1)}
    else:
        low = torch.stack([scores[m] for m in names]).min().clamp_min(eps)
        rho = {m: scores[m] / low for m in names}
        damped = {m: r > 1 for m, r in rho.items()}
        damped[names[0]] = damped[names[0]] | ~torch.stack(list(damped.values())).any()
    k = {m: torch.where(damped[m], 1 - torch.tanh(alpha * r), torch.ones_like(r)) for m, r in rho.items()}
    return rho, k


class OGMGE(Method):
    name = "ogm_ge"
    summary = "scale the dominant modality's encoder gradients by 1 - tanh(alpha * ratio), plus GE noise"
    Options = OGMGEOptions
    min_modalities = 2
    modality_note = "M > 2: rho_m = s_m / min_j s_j (the paper has two); all tied: the first is damped"
    fidelity = ("OGM-GE_CVPR2022 main.py: tie damps the first (audio) encoder as its else branch; window 0-50 "
                "counted from 0 (our epochs 1-51); score with model.unimodal_logits: fusion-slices as the reference. "
                "Ours: ratio denominator clamped at 1e-8; modulate: weights for MLP encoders")
    epoch_base = 0  # the reference's `for epoch in range(args.epochs)`

    @classmethod
    def check_config(cls, options: OGMGEOptions, recipe) -> str | None:
        named = encoder_names(recipe.model.encoders)
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
        if not self.in_epoch_window(o.start_epoch, o.end_epoch):
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
