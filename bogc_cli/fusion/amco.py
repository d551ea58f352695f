"""``amco``: Adaptive Mask Co-optimisation of the dependent modality.

Zhou, Liang, Zheng, Xuan & Kumada, "Adaptive Mask Co-optimization for Modal Dependence in Multimodal
Learning", ICASSP 2023 (IEEE Xplore 10096641; listed as "ICASSP 2024" in some baseline tables). The paper
(whose full text could not be read here: only its abstract is public) puts a plug-in *adaptive mask* on the
modality the model depends on, making it harder to learn so the model fits the others, and *co-optimises*
every modality's own loss so the masked one does not degrade. The authors' code was not found; the rule and
every default follow GeWu-Lab/BalanceBenchmark, ``balancemm/trainer/AMCo_trainer.py`` (``AMCoTrainer``) with
``balancemm/models/avclassify_model.py`` (``BaseClassifierAMCoModel``) and ``configs/trainer_config.yaml``
(``AMCo``).

Model (``adapt_model``): the linear concat head's per-modality slices ``o_m = z_m W_m^T + b / M`` ``[B, C]``
(``C`` classes) are summed and passed through one more ``C x C`` linear layer, the reference's
``linear_star``: ``f = star(sum_m o_m)`` (:class:`StarConcatHead`; also at validation, ``eval`` and
``missing-modality``, unmasked).

The rule, per step in the epoch window ``start_epoch <= e <= end_epoch`` (``e`` counted from 0 as the
reference's ``current_epoch``: ``epoch_base`` 0):

1. Mask ratio: ``p_t = sin(pi/2 * min(eps, l_t) / eps)`` with ``l_t`` the epoch's progress, 0 at every epoch
   start and increased by ``e / 10`` after each step (so nothing is masked in epoch 0, and from epoch ``e >= 1``
   ``p_t`` reaches 1 after ``ceil(10 eps / e)`` steps). A mask ``mask_t`` ``[C]`` holds ``N = int(p_t C)``
   zeros at positions drawn uniformly at random and ones elsewhere (drawn every step, from the method's
   generator, seeded from the run seed and kept in ``state_dict``).
2. Masking: every modality marked *dependent* (below) has its slice multiplied by the mask, ``o_m <- mask_t *
   o_m``, before the sum; ``f = star(sum_m o_m)``.
3. Co-optimisation: ``L = CE(f, y) + sum_m CE(o_m, y)`` (the masked ``o_m`` where masked).
4. Dependence, from this step's (masked) slices: the softmax over the concatenation ``[o_1 | ... | o_M]``
   ``[B, M C]``, and modality m's share ``s_m`` = the sum of its block over the batch divided by ``B``; m is
   dependent for the *next* step iff ``s_m > sigma``. Every mark is cleared at each epoch start.

Outside the window: ``L = CE(f, y)`` and nothing is masked (the mask is still drawn and ``l_t`` still grows, as
in the reference). Separate unimodal heads (``model.unimodal_logits: heads``) are probes on detached features,
as joint's; the rule always reads the fusion head's slices, as the reference's ``unimodal_result`` does.

The reference's fault, and what is done instead. ``AMCo_trainer.py`` expands the ``[C]`` mask to ``[2, C]``
(``mask_t.unsqueeze(0).expand(2, -1)``) and the model multiplies it with the ``[B, C]`` slice; the product
broadcasts only when ``B = 2``: any other batch size fails (``B = 1`` silently makes a ``[2, C]`` slice and the
loss then fails), so the code as written cannot train with its own batch size of 32 on one device. It runs on
the set-up it was written for, ``nn.DataParallel`` on two GPUs (its ``MultiModalParallel``): the forward's
keyword arguments are scattered along dimension 0, so each GPU receives one ``[1, C]`` row of the (identical)
expanded mask, which broadcasts over that GPU's rows. What the reference computes there, and what the paper's
one mask per step describes, is therefore the same ``[C]`` mask broadcast over every row of the batch: that is
the default here (the only behaviour; a ``[2, C]`` mask is not offered since it cannot run at other batch
sizes). An earlier version of the same file (2024-09) masked the encoder *features* with a ``U = 512``-long
mask and rescaled them by ``1 / (1 - p_t)``; the current version, followed here, masks the class logits and
does not rescale, and reads neither ``U`` (512), ``alpha`` (0.1) nor ``method`` (``"None"``) from its config:
they are not options.

Hyper-parameters (``method.*``): ``sigma`` (0.5: the share above which a modality is dependent), ``eps``
(0.3: the progress at which the mask ratio reaches 1), ``start_epoch`` (0) and ``end_epoch`` (80) (the
reference's ``modulation_starts`` / ``modulation_ends``).

M > 2: the reference's loop already covers any M (its three-modality configs): each modality's share of the
``M C`` softmax against ``sigma``, every dependent modality masked by the same ``mask_t``. Any M >= 2. The shares
sum to 1, so an even share is ``1 / M``: with three modalities ``sigma`` 0.5 is crossed rarely (mfeat weak3,
``recipes/mfeat/amco.yaml``, seed 0: epoch-mean shares about 0.40/0.40/0.20 at epoch 15; some steps masked in
14 of its 30 epochs, none before epoch 9), as the reference's fixed 0.5 does; lower ``sigma`` towards ``1 / M`` to
mask more.

Other deviations: a step whose gradient is not finite (skipped) leaves the dependence marks as they were
(the mask ratio still advances: it counts batches); the positions are drawn with the method's own torch
generator (seeded from the run seed, in ``state_dict``, so a resume draws the same masks), not numpy's global
one. Data-parallel, every process draws the same mask (same generator) and the shares are the global batch's
(``batch_mean``), so every process masks the same modalities. Reference
protocol (BalanceBenchmark ``configs/global_config.yaml``): AdamW lr 1e-3, weight decay 0.01, step decay
x0.1 every 10 epochs, 30 epochs, batch 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepResult, linear_concat_reason
from bogc_cli.models.fusion_heads import ConcatHead
from bogc_cli.models.multimodal import FUSED, Outputs
from bogc_cli.schema import StrictModel

MASK_SEED = 2_621_441  # the mask generator's offset from the run seed, apart from the other generators


class AMCoOptions(StrictModel):
    sigma: float = Field(0.5, ge=0, le=1, description="softmax share above which a modality is dependent (masked)")
    eps: float = Field(0.3, gt=0, description="epoch progress l_t at which the mask ratio reaches 1")
    start_epoch: int = Field(0, ge=0, description="first epoch (counted from 0) with masking and unimodal losses")
    end_epoch: int = Field(80, ge=0, description="last epoch (counted from 0) with masking and unimodal losses")


def mask_ratio(progress: float, eps: float) -> float:
    """``p_t = sin(pi/2 * min(eps, l_t) / eps)`` in [0, 1] for the epoch progress ``l_t >= 0``."""
    return math.sin(math.pi / 2 * (min(eps, progress) / eps))


def draw_mask(num_classes: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A ``[C]`` float32 mask with ``int(ratio * C)`` zeros at uniformly drawn positions, ones elsewhere
    (the reference's shuffled ``np.pad(np.ones(C - N), (0, N))``)."""
    zeros = int(ratio * num_classes)
    mask = torch.ones(num_classes)
    mask[torch.randperm(num_classes, generator=generator)[:zeros]] = 0.0
    return mask


def modality_shares(slices: list[torch.Tensor]) -> torch.Tensor:
    """Each modality's share of the softmax over the concatenated logits: ``M x [B, C]`` -> ``[M]`` (float32),
    ``s_m = sum_{i, c} softmax([o_1 | ... | o_M])_{i, (m, c)} / B``; the shares sum to 1."""
    probs = torch.softmax(torch.cat([s.detach().float() for s in slices], dim=1), dim=1)
    return probs.view(probs.shape[0], len(slices), -1).sum(dim=2).mean(dim=0)


class StarConcatHead(ConcatHead):
    """AMCo's fusion head (the reference's concat head plus ``linear_star``): ``forward(feats)`` =
    ``star(sum_m o_m)`` for the ordered features ``M x [B, d_m]`` -> ``[B, C]``, with ``o_m`` the slices of the
    linear concat layer (``slice_logits``) and ``star`` an ``nn.Linear(C, C)``."""

    def __init__(self, dims: list[int], num_classes: int):
        super().__init__(dims, num_classes, hidden=0)
        self.star = nn.Linear(num_classes, num_classes)

    def combine(self, slices: list[torch.Tensor]) -> torch.Tensor:
        """``star(sum_m o_m)``: ``M x [B, C]`` -> ``[B, C]``."""
        return self.star(torch.stack(slices).sum(0))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.combine(self.slice_logits(feats))

    def final_linears(self) -> list[nn.Linear]:
        return [self.star]


class AMCo(Method):
    name = "amco"
    summary = ("adaptive mask on the dependent modality's logits (share of the joint softmax > sigma), ratio rising "
               "as sin(pi/2 l_t/eps), co-optimised with every modality's own CE")
    Options = AMCoOptions
    min_modalities = 2
    modality_note = "any M >= 2: each modality's share of the M x C softmax against sigma, one mask for all"
    fidelity = ("follows GeWu-Lab/BalanceBenchmark AMCo_trainer.py + BaseClassifierAMCoModel (sigma 0.5, eps 0.3, "
                "window 0-80, linear_star head, logit mask); fix: its [2, C] mask (only batch 2 runs on one device) "
                "is one [C] mask broadcast over the batch, what its 2-GPU DataParallel scatter computes")
    epoch_base = 0  # BalanceBenchmark's current_epoch starts at 0

    @classmethod
    def check_config(cls, options: AMCoOptions, recipe) -> str | None:
        return linear_concat_reason("amco", "masks the per-modality slices of a linear concat head", recipe.model)

    @classmethod
    def adapt_model(cls, options: AMCoOptions, model) -> None:
        head = model.fusion_head
        if not (isinstance(head, ConcatHead) and head.is_linear):
            raise UserError("method amco needs model.fusion: concat with model.fusion_hidden: 0")
        like = head.net.weight
        model.fusion_head = StarConcatHead(head.dims, model.num_classes).to(like.device, like.dtype)

    def __init__(self, options: AMCoOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.generator = torch.Generator().manual_seed((torch.initial_seed() + MASK_SEED) % 2**63)
        self.progress = 0.0  # l_t
        self.dependent = {m: False for m in model.modalities}

    def modulating(self) -> bool:
        return self.in_epoch_window(self.options.start_epoch, self.options.end_epoch)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.progress = 0.0
        self.dependent = {m: False for m in self.model.modalities}

    def losses(self, out: Outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}
        if self.modulating():
            losses.update({m: F.cross_entropy(o.float(), labels) for m, o in out.unimodal_logits.items()})
        return losses

    def step(self, batch: Batch) -> StepResult:
        opt = self.ctx.optimizer
        opt.zero_grad(set_to_none=True)
        ratio = mask_ratio(self.progress, self.options.eps)
        mask = draw_mask(self.model.num_classes, ratio, self.generator).to(self.ctx.device)
        self.progress += self.reference_epoch() / 10
        modulating = self.modulating()
        masked = [m for m in self.model.modalities if modulating and self.dependent[m]]
        head = self.model.fusion_head
        with self.ctx.autocast():
            feats = self.model.encode(batch.inputs)
            slices = head.slice_logits([feats[m] for m in self.model.modalities])
            slices = [o * mask.to(o.dtype) if m in masked else o for m, o in zip(self.model.modalities, slices)]
            out = Outputs(head.combine(slices), dict(zip(self.model.modalities, slices)), feats)
            losses = self.losses(out, batch.labels)
        total = torch.stack([v.float() for v in losses.values()]).sum()
        total.backward()
        shares = self.batch_mean({"shares": modality_shares(slices)})["shares"] if modulating else None
        self.clip_and_step()
        if shares is not None and not self.ctx.skipped_step:
            self.dependent = {m: bool(s > self.options.sigma) for m, s in zip(self.model.modalities, shares.tolist())}
        logs = {f"loss.{k}": v.detach() for k, v in losses.items()}
        logs["amco.mask_ratio"] = total.new_tensor(ratio if masked else 0.0)
        for m in self.model.modalities:
            logs[f"amco.masked.{m}"] = total.new_tensor(float(m in masked))
            if shares is not None:
                logs[f"amco.share.{m}"] = shares[self.model.modalities.index(m)].detach()
        return StepResult(total.detach(), out.fused_logits.detach(), logs)

    def state_dict(self):
        return {"generator": self.generator.get_state(), "progress": self.progress, "dependent": dict(self.dependent)}

    def load_state_dict(self, state):
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.progress = float(state.get("progress", self.progress))
        self.dependent = {m: bool(state.get("dependent", {}).get(m, False)) for m in self.model.modalities}


METHOD = AMCo
