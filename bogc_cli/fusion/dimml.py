"""``dimml``: Detached and Interactive Multimodal Learning (DI-MML).

Fan, Xu, Wang, Liu & Guo, "Detached and Interactive Multimodal Learning", ACM Multimedia
2024 (arXiv:2407.19514). Reference code: fanyunfeng-bit/DI-MML, ``main_CFT.py`` (stage 1),
``main_CFT_stage2.py`` (stage 2), ``loss/contrast_loss.py`` (``SupConLoss``); commands in its README
and ``run.sh``.

Each modality is trained by its own loss, so no modality's gradient depends on another's (detached);
knowledge is shared only through a classifier common to all modalities and a contrastive term on
feature dimensions (interactive); the fused prediction is formed at test time (late fusion).

Stage 1, every step (``main_CFT.py``'s ``train_epoch``), with features ``z_m`` ``[B, d]``:

    L = sum_m CE(h_m(z_m), y) + weight * sum_m CE(g(z_m), y) + L_c

``h_m`` is modality m's own linear classifier (``model.unimodal_heads``), ``g`` the shared linear
classifier (every encoder must output the same size ``d``). ``L_c``, from the reference's epoch
``contrast_start_epoch`` (20; counted from 0, ``epoch_base`` 0), is the dimension-decoupled
unidirectional contrastive loss: at the start of that epoch, with the model in eval mode, every
training row is encoded once; per modality and feature dimension, a row "hits" when the class whose
mean (over the training rows) is nearest on that dimension is its own; ``top_m`` = the dimensions whose
hit rate exceeds the mean hit rate over dimensions (the reference's ``get_indices``; computed once and
kept). Student s learns from teacher t on ``D_{s<-t} = top_t \\ top_s`` (t's discriminative dimensions
that s lacks): per row ``i``,

    l_i = -log( exp(z_s,i[D] . z_t,i[D]' / T) / sum_j exp(z_s,i[D] . z_t,j[D]' / T) )

with ``'`` detached (the teacher is not moved) and ``j`` over the batch; ``L_c = sum_s mean_{t != s}
mean_i l_i`` (for two modalities the reference's ``a_loss + v_loss``; more modalities average over
teachers, a generalisation).

Alongside stage 1, the fusion classifier (the stage-2 ``ConcatFusion``: a linear layer on the
concatenated features) is trained on *detached* features, so a run that ends in stage 1 already has
a fused prediction; it never moves an encoder (not in the reference, whose stage 1 has no fused
classifier).

Stage 2 (``main_CFT_stage2.py``), from the reference's epoch ``stage1_epochs`` (150: its stage-1
``--epochs``) on: encoders and unimodal classifiers frozen (features in eval mode, no gradient), the
fusion classifier re-initialised and trained alone by ``CE`` with a fresh optimiser of the recipe's
kind and initial settings (the reference's new ``optim.SGD`` with the same lr, momentum and weight
decay; no schedule: its 70-epoch StepLR never fires in 20 epochs; no clip), kept in the method's
state. A recipe gives the reference's two runs in one with ``train.epochs = stage1_epochs + 20``.

Prediction (``adapt_model`` installs :class:`DIMMLHead` as the fusion head, so validation, ``eval`` and
``missing-modality`` use it): with ``M`` own-classifier logits and the fusion classifier's, and each
one's confidence ``c_k = max softmax``, the weights are ``softmax_k(c_k / fusion_temperature)`` per
row and the prediction ``sum_k w_k logits_k`` (``valid_combine_classifier``).

Hyper-parameters (``method.*``): ``weight`` (1: ``--weight``), ``temperature`` (1: ``main_CFT.py``'s
``--temperature`` default; its README command for CREMA-D uses 50, AVE and UCF 10, ModelNet 50),
``contrast_start_epoch`` (20), ``stage1_epochs`` (150), ``fusion_temperature`` (1: the stage-2
``--temperature`` default and its CREMA-D command; AVE and ModelNet use 3).

Deviations: the index pass reads un-augmented training rows in the recipe's eval batches (the
reference reads them one by one through its training transforms: random crops and flips); a class
with no training row is never the nearest; ``l_i`` uses ``logsumexp`` (the reference's ``exp``/``log``
overflows for large dot products; equal where it is finite). The reference adds Gaussian noise (std
``--var`` 0.1) to its images in training and test, a data corruption, not part of the method: not done.

Measured: this project's cnn-small and mlp encoders end in a ReLU, and a student's feature is often
exactly 0 (a dead unit) on the dimensions its teacher discriminates, which then give ``L_c`` no gradient:
on avdigits after one epoch 45 of 64 audio and 32 of 64 image dimensions were 0 on a batch and ``L_c``
stayed at ``log B`` per direction; on mfeat (weak3) it fell from 12.32 to 11.39 (flat: ``3 log 64`` =
12.48). ResNet-18's average-pooled features are rarely exactly 0.

Data-parallel: the contrastive denominators run over the global batch's teacher rows (gathered with
one ``batch_sum``); the index pass reads the whole training split on every process and its hit rates
are averaged across processes, so every process keeps the same dimensions; stage 2's gradients are
averaged before its own step. Any M >= 2, one feature size for all encoders (refused otherwise).
Cost: one more linear head per modality; the index pass is one forward over the training split, once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bogc_cli.data.loader import Batch, to_device
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepResult
from bogc_cli.fusion.gblending import fresh_optimizer
from bogc_cli.fusion.shared_head import feature_size_reason, shared_feature_size
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

REINIT_SEED = 2_750_159  # the stage-2 re-initialisation's generator offset from the run seed, apart from the others


class DIMMLOptions(StrictModel):
    weight: float = Field(1.0, ge=0, description="weight of the shared classifier's losses")
    temperature: float = Field(1.0, gt=0, description="temperature of the unidirectional contrastive loss")
    contrast_start_epoch: int = Field(20, ge=0, description="epoch (counted from 0) the dimensions are chosen and "
                                      "the contrastive loss starts")
    stage1_epochs: int = Field(150, ge=1, description="epochs of stage 1; later epochs train only the fusion "
                               "classifier (stage 2)")
    fusion_temperature: float = Field(1.0, gt=0, description="temperature of the test-time confidence weights")


# ------------------------------------------------------------------ the rule, as pure functions
def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (bf16/fp16 under autocast), float64 if it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def discriminative_dims(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 1024
                        ) -> torch.Tensor:
    """Per-dimension hit rates ``[d]`` of features ``[N, d]`` with labels ``[N]``: the fraction of rows whose
    nearest class mean on that dimension (``|z_id - mu_cd|``, means over the rows of each class) is their
    own class. Classes without rows are never nearest; ties go to the lower class id."""
    feats = feats.float()
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    means = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    means.index_add_(0, labels, feats)
    means = means / counts.clamp_min(1).unsqueeze(1)
    empty = (counts == 0).view(1, -1, 1)
    hits = torch.zeros(feats.shape[1], dtype=torch.float64, device=feats.device)
    for start in range(0, feats.shape[0], chunk):
        z, y = feats[start:start + chunk], labels[start:start + chunk]
        dist = (z.unsqueeze(1) - means.unsqueeze(0)).abs().masked_fill(empty, float("inf"))  # [n, C, d]
        hits += (dist.argmin(dim=1) == y.unsqueeze(1)).double().sum(0)
    return hits / max(feats.shape[0], 1)


def top_dims(hit_rate: torch.Tensor) -> torch.Tensor:
    """The reference's ``top_*_indices``: dimensions whose hit rate exceeds the mean hit rate; bool ``[d]``."""
    return hit_rate > hit_rate.mean()


def unidirectional_contrast(student: torch.Tensor, teacher: torch.Tensor, dims: torch.Tensor, temperature: float,
                            offset: int = 0) -> torch.Tensor:
    """Mean over the student's rows of ``-log softmax_j(s_i[D] . t_j[D] / T)`` at ``j = offset + i``.

    ``student`` ``[B, d]`` (this process's rows), ``teacher`` ``[N, d]`` (the global batch's rows, detached
    here), ``dims`` bool ``[d]``; row i's own teacher row is ``offset + i``. With no dimension every
    similarity is 0 and the loss ``log N`` (no gradient). Scalar, float32."""
    s = _wide(student)[:, dims]
    t = _wide(teacher.detach())[:, dims]
    sim = s @ t.T / temperature  # [B, N]
    own = sim[torch.arange(s.shape[0], device=s.device), offset + torch.arange(s.shape[0], device=s.device)]
    return (torch.logsumexp(sim, dim=1) - own).mean()


def confidence_weights(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Stage 2's test-time weights ``[B, K]``: per row, ``softmax_k(max softmax(logits_k) / T)`` over the ``K``
    predictors' ``[B, C]`` logits."""
    conf = torch.stack([torch.softmax(_wide(z), dim=1).max(dim=1).values for z in logits], dim=1)
    return torch.softmax(conf / temperature, dim=1)


def reset_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear.reset_parameters`` (Kaiming-uniform weight with ``a = sqrt(5)``, bias uniform in
    ``+-1/sqrt(fan_in)``) drawn from ``generator`` (on the CPU) instead of the global one, so every process and a
    resumed run draw the same."""
    weight = torch.empty(layer.weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator))


# ------------------------------------------------------------------ the model piece
class DIMMLHead(nn.Module):
    """The fusion classifier ``concat`` (linear on the concatenated features), the shared classifier
    ``shared`` (``d -> C``) and the prediction rule; replaces ``model.fusion_head``.

    ``forward(feats)``: the ordered features ``M x [B, d]`` -> ``sum_k w_k logits_k`` ``[B, C]`` over the
    unimodal heads (held, not registered: they stay ``model.unimodal_heads``'s) and ``concat``."""

    def __init__(self, dim: int, num_modalities: int, num_classes: int, heads: nn.ModuleDict, modalities: list[str],
                 fusion_temperature: float):
        super().__init__()
        self.concat = nn.Linear(dim * num_modalities, num_classes)
        self.shared = nn.Linear(dim, num_classes)
        self._heads = (heads,)
        self.modalities = list(modalities)
        self.fusion_temperature = fusion_temperature

    def fusion_logits(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.concat(torch.cat(feats, dim=1))

    def predictors(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The logits ``[B, C]`` of each own classifier (model order) and of the fusion classifier."""
        heads = self._heads[0]
        return [heads[m](z) for m, z in zip(self.modalities, feats)] + [self.fusion_logits(feats)]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        logits = self.predictors(feats)
        with torch.no_grad():  # a test-time rule: no loss goes through it
            w = confidence_weights(logits, self.fusion_temperature)
        return (torch.stack([_wide(z) for z in logits], dim=1) * w.unsqueeze(-1)).sum(1)


class DIMML(Method):
    name = "dimml"
    summary = ("each modality trained by its own and a shared classifier, plus a dimension-decoupled "
               "unidirectional contrastive loss; fusion classifier on frozen features; confidence-weighted late fusion")
    Options = DIMMLOptions
    min_modalities = 2
    modality_note = "M > 2: each student averages its contrastive loss over the other modalities as teachers"
    fidelity = ("follows fanyunfeng-bit/DI-MML main_CFT.py + main_CFT_stage2.py (weight 1, temperature 1, dimensions "
                "chosen at epoch 20, stage 2 after 150 epochs, confidence-weighted test fusion); deviations: one run "
                "for both stages, fusion classifier also trained on detached features in stage 1, un-augmented index "
                "pass, logsumexp")
    epoch_base = 0  # the reference's `for epoch in range(args.epochs)`, `if epoch >= 20`

    @classmethod
    def check_config(cls, options: DIMMLOptions, recipe) -> str | None:
        if recipe.model.unimodal_logits != "heads":
            return ("method dimml trains each modality's own classifier: set model.unimodal_logits: heads "
                    f"(it is {recipe.model.unimodal_logits!r})")
        return feature_size_reason("dimml", recipe.model, "classifier")

    @classmethod
    def adapt_model(cls, options: DIMMLOptions, model) -> None:
        dim = shared_feature_size("dimml", model, "classifier", "its own classifiers")
        like = next(model.parameters())
        model.fusion_head = DIMMLHead(dim, len(model.modalities), model.num_classes, model.unimodal_heads,
                                      model.modalities, options.fusion_temperature).to(like.device, like.dtype)

    def __init__(self, options: DIMMLOptions, model, ctx):
        super().__init__(options, model, ctx)
        # masks[s][t]: bool [d], the dimensions on which student s learns from teacher t (None before chosen)
        self.masks: dict[str, dict[str, torch.Tensor]] | None = None
        self.stage2_optimizer: torch.optim.Optimizer | None = None
        # drawn from once, when stage 2 begins (a run resumed after that never draws again: not state)
        self.reinit = torch.Generator().manual_seed((torch.initial_seed() + REINIT_SEED) % 2**63)
        self._logs: dict[str, torch.Tensor] = {}

    @property
    def head(self) -> DIMMLHead:
        return self.model.fusion_head

    # ------------------------------------------------------------ epochs
    def in_stage2(self) -> bool:
        return self.in_epoch_window(self.options.stage1_epochs, None)

    def contrast_active(self) -> bool:
        return self.masks is not None and self.in_epoch_window(self.options.contrast_start_epoch,
                                                               self.options.stage1_epochs - 1)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        o = self.options
        if self.reference_epoch() == o.contrast_start_epoch and o.contrast_start_epoch < o.stage1_epochs:
            self.masks = self.choose_dimensions()
        if self.reference_epoch() == o.stage1_epochs:
            self.start_stage2()

    def start_stage2(self) -> None:
        """Re-initialise the fusion classifier and give it a fresh optimiser of the recipe's kind."""
        reset_linear(self.head.concat, self.reinit)
        self.stage2_optimizer = fresh_optimizer(self.ctx.optimizer, self.head.concat.parameters())

    @torch.no_grad()
    def choose_dimensions(self) -> dict[str, dict[str, torch.Tensor]]:
        """The reference's ``get_indices`` over the training rows (eval mode), for every ordered modality pair."""
        loader = self.ctx.train_eval
        if loader is None:
            raise UserError("method dimml chooses its contrastive dimensions with a pass over the training rows, "
                            "which this caller did not provide (ctx.train_eval)")
        names = self.model.modalities
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        labels = []
        was_training = self.model.training
        self.model.eval()
        try:
            for raw in loader:
                batch = raw if isinstance(raw, Batch) else to_device(raw, self.ctx.device)
                with self.ctx.autocast():
                    z = self.model.encode(batch.inputs)
                for m in names:
                    feats[m].append(z[m].float())
                labels.append(batch.labels)
        finally:
            self.model.train(was_training)
        y = torch.cat(labels)
        rates = {m: discriminative_dims(torch.cat(feats[m]), y, self.model.num_classes) for m in names}
        d = self.ctx.distributed
        if d is not None:  # every process read the same rows: make the choice agree exactly
            rates = {m: v / d.world for m, v in self.batch_sum(rates).items()}
        top = {m: top_dims(r) for m, r in rates.items()}
        return {s: {t: top[t] & ~top[s] for t in names if t != s} for s in names}

    # ------------------------------------------------------------ stage 1
    def _teachers(self, feats: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """Every modality's detached features over the global batch ``[N, d]`` (one ``batch_sum``) and where this
        process's rows start in it."""
        rows = next(iter(feats.values())).shape[0]
        start, stop, total = self.batch_part(rows)
        if self.ctx.distributed is None:
            return {m: z.detach() for m, z in feats.items()}, 0
        padded = {}
        for m, z in feats.items():
            full = z.new_zeros(total, z.shape[1], dtype=torch.float32)
            full[start:stop] = z.detach().float()
            padded[m] = full
        return self.batch_sum(padded), start

    def contrastive_loss(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``L_c = sum_s mean_{t != s}`` of ``unidirectional_contrast(z_s, z_t', D_{s<-t})``; scalar."""
        teachers, offset = self._teachers(feats)
        total = []
        for s, per in self.masks.items():
            terms = [unidirectional_contrast(feats[s], teachers[t], mask.to(feats[s].device), self.options.temperature,
                                             offset) for t, mask in per.items()]
            total.append(torch.stack(terms).mean())
        return torch.stack(total).sum()

    def losses(self, out, labels):
        o, head = self.options, self.head
        names = self.model.modalities
        feats = [out.features[m] for m in names]
        losses = {m: F.cross_entropy(out.unimodal_logits[m].float(), labels) for m in names}
        losses.update({f"shared:{m}": o.weight * F.cross_entropy(head.shared(z).float(), labels)
                       for m, z in zip(names, feats)})
        losses[FUSED] = F.cross_entropy(head.fusion_logits([z.detach() for z in feats]).float(), labels)
        if self.contrast_active():
            losses["contrast"] = self.contrastive_loss(out.features)
        return losses

    # ------------------------------------------------------------ stage 2
    def _stage2_step(self, batch: Batch) -> StepResult:
        opt, head = self.stage2_optimizer, self.head
        if opt is None:  # resumed into stage 2 from a checkpoint written before it began
            self.start_stage2()
            opt = self.stage2_optimizer
        opt.zero_grad(set_to_none=True)
        self.ctx.optimizer.zero_grad(set_to_none=True)
        was_training = self.model.training
        self.model.eval()  # frozen encoders: BatchNorm in eval mode, as the reference's stage 2
        try:
            with torch.no_grad(), self.ctx.autocast():
                feats = self.model.encode(batch.inputs)
        finally:
            self.model.train(was_training)
        ordered = [feats[m] for m in self.model.modalities]
        with self.ctx.autocast():
            logits = head.fusion_logits(ordered)
        loss = F.cross_entropy(logits.float(), batch.labels)
        loss.backward()
        grads = [p.grad for p in head.concat.parameters() if p.grad is not None]
        if self.ctx.distributed is not None:
            self.ctx.distributed.average_gradients(grads)
        if not all(torch.isfinite(g).all() for g in grads):
            opt.zero_grad(set_to_none=True)
            self.ctx.skipped_step = True
        else:
            opt.step()  # unclipped, as the reference's stage 2
        with torch.no_grad(), self.ctx.autocast():
            fused = head(ordered)
        return StepResult(loss.detach(), fused.detach().float(), {"loss.stage2": loss.detach()})

    def step(self, batch: Batch) -> StepResult:
        if self.in_stage2():
            return self._stage2_step(batch)
        return super().step(batch)

    # ------------------------------------------------------------ state
    def state_dict(self):
        return {"masks": self.masks,
                "stage2_optimizer": None if self.stage2_optimizer is None else self.stage2_optimizer.state_dict()}

    def load_state_dict(self, state):
        self.masks = state.get("masks")
        if state.get("stage2_optimizer") is not None:
            self.stage2_optimizer = fresh_optimizer(self.ctx.optimizer, self.head.concat.parameters())
            self.stage2_optimizer.load_state_dict(state["stage2_optimizer"])


METHOD = DIMML
