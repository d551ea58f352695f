"""``greedy``: the balanced multimodal learning algorithm against the greedy nature of learning.

Wu, Jastrzebski, Cho & Geras, "Characterizing and overcoming the greedy nature of learning in
multi-modal deep neural networks", ICML 2022. Reference code: nyukat/greedy_multimodal_learning,
``src/callbacks.py`` (``Bias_Mitigation_Strong``: the guided algorithm, ``configs/training_guided.gin``;
``Bias_Mitigation_Random``: ``training_random.gin``), ``src/model.py``, ``src/balanced_mmtm.py``, ``train.py``.
(GeWu-Lab/BalanceBenchmark's ``Greedy_trainer.py`` ports it, but its MMTM clears the running averages
it then reads, so it cannot run; not followed.)

Model (``adapt_model``): each modality's branch is its encoder and its own linear classifier
(``model.unimodal_heads``); MMTMs (:mod:`bogc_cli.models.mmtm`, installed as ``model.coupling``) pass
information between the branches after their last stages; the prediction is the mean of the branches'
logits (:class:`~bogc_cli.models.late_fusion.UnimodalMean`). The loss is ``sum_m CE(o_m, y)`` (the
reference's ``blend_loss``).

The rule. After each backward, the *conditional learning speed* of modality m is the gradient-to-weight
ratio ``||g||^2 / ||w||^2`` of its MMTM parameters (its excitation layers, plus the shared squeeze layer,
counted for every modality: the "bypass") and of its branch (encoder and classifier: "main"),
accumulated over the steps (``M_bypass,m``, ``M_main,m``). The *balance* ``BDR_m = log10(M_bypass,m /
M_main,m)``; with two modalities ``d = BDR_0 - BDR_1``. From the reference's epoch ``start_epoch`` (2,
counted from 1, ``epoch_base`` 1), when not curating: if ``|d| > epsilon`` the next ``window`` (5) steps
are *re-balancing steps* for the modality with the larger BDR (``caring``: 0 if ``d > 0`` else 1), in
which its MMTM excitations are replaced by their running averages, so its branch learns from its own
input alone; no BDR is computed (or accumulated) during them. Before ``start_epoch`` the BDR is computed
and accumulated every step and nothing is curated. ``selection: random`` is ``Bias_Mitigation_Random``:
from ``start_epoch`` on, each step picks uniformly among no curation and curating each modality (no BDR).

M > 2 (a generalisation): the spread ``max_m BDR_m - min_m BDR_m`` against ``epsilon``, curating the
modality with the largest BDR (for two modalities exactly the reference's rule); MMTMs squeeze all
modalities.

Hyper-parameters (``method.*``): ``epsilon`` (0.01), ``window`` (5), ``start_epoch`` (2), ``selection``
(``guided``), ``ratio`` (4: the MMTM squeeze width ``int(2 * sum(channels) / ratio)``).

Deviations: the running averages are updated by training forwards only (the reference's also by
validation and test forwards) and each modality's from its own excitations (the reference's second
modality's average reads the first's: ``running_avg_weight_skeleton`` is built from ``vis_out``); the
MMTMs follow the last ``K`` stages of each encoder, ``K = min_m stages - 1`` (two ResNet-18 give the
reference's three, after ``layer2``-``layer4``); ratios are taken on the global batch's gradients before
the clip (the reference has no clip). A step whose gradient is not finite changes no accumulator and no
curation state.

Reference protocol (ModelNet40, two views; it has no audio-visual script): ResNet-18 branches, SGD lr
0.1, no momentum or weight decay, batch 8, ReduceLROnPlateau, up to 300 epochs. Data-parallel: the
ratios come from the averaged gradients and the running averages from the global batch's means (one
small all-reduce per MMTM and step), so every process curates the same way.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.models.encoder_options import encoder_names
from bogc_cli.models.late_fusion import UnimodalMean
from bogc_cli.models.mmtm import MMTMCoupling
from bogc_cli.schema import StrictModel

CHOICE_SEED = 4_256_233  # the random selection's generator offset from the run seed, apart from the others


class GreedyOptions(StrictModel):
    epsilon: float = Field(0.01, ge=0, description="threshold on the BDR gap that starts re-balancing steps")
    window: int = Field(5, ge=1, description="re-balancing steps after each trigger")
    start_epoch: int = Field(2, ge=1, description="first epoch (counted from 1) that may re-balance")
    selection: Literal["guided", "random"] = Field(
        "guided", description="which modality to care for: by the BDR gap (guided), or drawn each step (random)")
    ratio: float = Field(4.0, gt=0, description="MMTM squeeze width: int(2 * sum of channels / ratio)")


def square_sums(params) -> torch.Tensor:
    """``[sum ||g||^2, sum ||w||^2]`` (float64) over the parameters that have a gradient."""
    pairs = [torch.stack([p.grad.detach().double().square().sum(), p.detach().double().square().sum()])
             for p in params if p.grad is not None]
    return torch.stack(pairs).sum(0) if pairs else torch.zeros(2, dtype=torch.float64)


def balance(bypass: list[float], main: list[float]) -> list[float]:
    """``BDR_m = log10(M_bypass,m / M_main,m)`` from the accumulated ratios (-inf where the bypass ratio is 0,
    inf where the main one is, NaN where both are, as numpy's ``log10`` in the reference)."""
    out = []
    for b, m in zip(bypass, main):
        try:
            out.append(math.log10(b / m))
        except (ValueError, ZeroDivisionError):
            out.append(-math.inf if m > 0 else (math.inf if b > 0 else math.nan))
    return out


def caring_modality(bdr: list[float], epsilon: float) -> int | None:
    """The modality to re-balance for, or None: the largest BDR when ``max - min > epsilon`` (two modalities:
    ``|BDR_0 - BDR_1| > epsilon``, 0 if the gap is positive, else 1)."""
    if any(math.isnan(b) for b in bdr):
        return None
    if len(bdr) == 2:
        d = bdr[0] - bdr[1]
        if math.isnan(d) or not abs(d) > epsilon:
            return None
        return 0 if d > 0 else 1
    spread = max(bdr) - min(bdr)
    return bdr.index(max(bdr)) if spread > epsilon else None


class Greedy(Method):
    name = "greedy"
    summary = ("branches joined by MMTMs; when the conditional-learning-speed gap (BDR) exceeds epsilon, re-balancing "
               "steps train the slower modality's branch on its own input")
    Options = GreedyOptions
    min_modalities = 2
    modality_note = "M > 2: curates the largest BDR when max - min > epsilon; MMTMs squeeze all modalities"
    fidelity = ("follows nyukat/greedy_multimodal_learning src/callbacks.py Bias_Mitigation_Strong (epsilon 0.01, "
                "window 5, from epoch 2), MMTMs after the last stages, loss sum of branch CEs, mean prediction; "
                "deviations: running "
                "averages from training forwards, each modality's own (the reference's second reads the first's)")
    epoch_base = 1  # the reference's `for epoch in range(1, epochs + 1)`

    @classmethod
    def check_config(cls, options: GreedyOptions, recipe) -> str | None:
        m = recipe.model
        if m.unimodal_logits != "heads":
            return ("method greedy trains a classifier per branch and predicts with their mean: set "
                    f"model.unimodal_logits: heads (it is {m.unimodal_logits!r})")
        named = encoder_names(m.encoders)  # entries may be blocks {name, weights, ...}
        if "transformer" in named:
            return ("method greedy places MMTMs between encoder stages, which transformer encoders do not have: use "
                    "resnet18, cnn-small or mlp encoders")
        return None

    @classmethod
    def adapt_model(cls, options: GreedyOptions, model) -> None:
        if model.slice_unimodal:
            raise UserError("method greedy needs model.unimodal_logits: heads (one classifier per branch)")
        try:
            like = next(model.parameters())
            model.coupling = MMTMCoupling(model.encoders, model.modalities, options.ratio).to(like.device, like.dtype)
        except ValueError as exc:
            raise UserError(f"method greedy: {exc} (set model.encoders, or model.mlp_layers >= 2 / more "
                            "model.cnn_channels)") from None
        model.fusion_head = UnimodalMean(model.unimodal_heads, model.modalities)

    def __init__(self, options: GreedyOptions, model, ctx):
        super().__init__(options, model, ctx)
        n = len(model.modalities)
        self.bypass_speed = [0.0] * n  # the reference's M_bypass_modal_m
        self.main_speed = [0.0] * n  # M_main_modal_m
        self.curating: int | None = None  # the caring modality's index during re-balancing steps
        self.curation_step = 0
        self.generator = torch.Generator().manual_seed((torch.initial_seed() + CHOICE_SEED) % 2**63)
        self.coupling.reduce = self._reduce

    @property
    def coupling(self) -> MMTMCoupling:
        return self.model.coupling

    def _reduce(self, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.batch_mean(means)

    def losses(self, out, labels):
        """The reference's ``blend_loss``: the sum over branches of ``CE(o_m, y)``."""
        return {m: F.cross_entropy(z.float(), labels) for m, z in out.unimodal_logits.items()}

    def _groups(self) -> tuple[list[list], list[list]]:
        """Per modality (model order): its bypass parameters (its MMTM excitation layers and the shared
        squeeze layers) and its main parameters (encoder and classifier)."""
        names = self.model.modalities
        shared = [p for mmtm in self.coupling.mmtm for p in mmtm.fc_squeeze.parameters()]
        bypass = [[p for mmtm in self.coupling.mmtm for p in mmtm.fc_excite[i].parameters()] + shared
                  for i in range(len(names))]
        main = [list(self.model.encoders[m].parameters()) + list(self.model.unimodal_heads[m].parameters())
                for m in names]
        return bypass, main

    def speeds(self) -> tuple[list[float], list[float]]:
        """This step's ``(bypass ratios, main ratios)`` ``||g||^2 / ||w||^2`` per modality, from ``p.grad``."""
        bypass, main = self._groups()
        sums = torch.stack([square_sums(ps).to(self.ctx.device) for ps in bypass + main]).tolist()  # one sync
        ratios = [g / w if w > 0 else math.nan for g, w in sums]
        n = len(bypass)
        return ratios[:n], ratios[n:]

    def step(self, batch: Batch) -> StepResult:
        o, opt = self.options, self.ctx.optimizer
        names = self.model.modalities
        opt.zero_grad(set_to_none=True)
        self.coupling.caring = None if self.curating is None else names[self.curating]
        try:
            with self.ctx.autocast():
                out = self.model(batch.inputs)
                losses = self.losses(out, batch.labels)
        finally:
            self.coupling.caring = None  # validation and eval use the MMTMs as they are
        curated = self.curating
        total = torch.stack([v.float() for v in losses.values()]).sum()
        total.backward()
        unlocked = self.in_epoch_window(o.start_epoch, None)
        measure = o.selection == "guided" and (self.curating is None or not unlocked)
        if measure:
            if self.ctx.distributed is not None:  # the ratios of the global batch's gradients
                self.batch_mean({}, gradients=True)
            speeds = self.speeds()
        self.clip_and_step()
        if not self.ctx.skipped_step:
            if o.selection == "random":
                self._draw(unlocked)
            else:
                self._advance(unlocked, speeds if measure else None)
        logs = {f"loss.{k}": v.detach() for k, v in losses.items()}
        bdr = balance(self.bypass_speed, self.main_speed)
        for i, m in enumerate(names):
            logs[f"greedy.curating.{m}"] = total.new_tensor(float(curated == i)).detach()
            if math.isfinite(bdr[i]):
                logs[f"greedy.bdr.{m}"] = total.new_tensor(bdr[i]).detach()
        return StepResult(total.detach(), out.fused_logits.detach(), logs)

    def _advance(self, unlocked: bool, speeds: tuple[list[float], list[float]] | None) -> None:
        """``Bias_Mitigation_Strong.on_backward_end`` after a step that was taken."""
        o = self.options
        if unlocked and self.curating is not None:
            self.curation_step += 1
            if self.curation_step == o.window:
                self.curating = None
            return
        b, m = speeds
        if not all(math.isfinite(x) for x in b + m):
            return  # a gradient ratio that is not finite: keep the accumulators clean
        self.bypass_speed = [x + y for x, y in zip(self.bypass_speed, b)]
        self.main_speed = [x + y for x, y in zip(self.main_speed, m)]
        if unlocked:
            self.curating = caring_modality(balance(self.bypass_speed, self.main_speed), o.epsilon)
            self.curation_step = 0

    def _draw(self, unlocked: bool) -> None:
        """``Bias_Mitigation_Random.on_backward_end``: from ``start_epoch`` on, no curation or one modality's,
        uniformly."""
        if not unlocked:
            self.curating = None
            return
        choice = int(torch.randint(len(self.model.modalities) + 1, (1,), generator=self.generator))
        self.curating = None if choice == 0 else choice - 1

    def state_dict(self):
        return {"bypass_speed": torch.tensor(self.bypass_speed, dtype=torch.float64),
                "main_speed": torch.tensor(self.main_speed, dtype=torch.float64),
                "curating": self.curating, "curation_step": self.curation_step,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        if "bypass_speed" in state:  # float64 tensors: python floats exactly
            self.bypass_speed = [float(x) for x in state["bypass_speed"]]
            self.main_speed = [float(x) for x in state["main_speed"]]
        self.curating = state.get("curating")
        self.curation_step = state.get("curation_step", 0)
        if "generator" in state:
            self.generator.set_state(state["generator"])


METHOD = Greedy
