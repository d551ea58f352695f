"""``lfm``: supervised and alignment losses integrated dynamically (LFM, learning the modality gap).

Yang, Wan, Jiang & Xu, "Facilitating Multimodal Classification via Dynamically Learning Modality
Gap", NeurIPS 2024. Reference code: njustkmg/NeurIPS24-LFM, ``Crema_epoch.py`` (the README's run
command: the heuristic, *fitted* weighting) and ``Crema_epoch_learnable.py`` (the *learned*
weighting); GeWu-Lab/BalanceBenchmark ``balancemm/trainer/LFM_trainer.py`` re-implements the learned
form on a concat fusion head.

Model (``adapt_model``): as the reference's ``AVClassifier``, no fusion layer: each modality has its
own linear classifier (``model.unimodal_heads``) and the fused logits are their mean,
``f = (1/M) sum_m o_m`` (``(o_a + o_v) / 2`` in the reference); the fusion head becomes
:class:`~bogc_cli.models.late_fusion.UnimodalMean`, so validation, ``eval`` and ``missing-modality``
predict with it.

Loss, per batch with labels ``y`` and unimodal logits ``o_m`` ``[B, C]``:

    L = 2 * (a_cls * CE(f, y) + a_align * L_align)

``L_align`` is the reference's ``Alignment`` between the modalities' predictions (the supervised
loss is thus paired with an unsupervised term that pulls the modalities' predictive distributions
together, "closing the modality gap"): with ``p = softmax(o_a)``, ``q = softmax(o_v)``, ``m = (p +
q) / 2``, ``L_align = (KL(m || p) + KL(m || q)) / 2`` averaged over the batch (the reference's
``F.kl_div(p.log(), m, 'batchmean')``, which is ``KL(m || p)``, not the Jensen-Shannon ``KL(p ||
m)``; kept as the code has it, with ``log p`` from ``log_softmax`` so a probability that underflows
to 0 gives a finite loss where the reference's ``p.log()`` gives inf). For M > 2 modalities,
``L_align`` is the mean over the pairs ``i < j`` (as BalanceBenchmark's ``manual_combinations``).

Weights (``weighting``):

- ``fitted`` (default; ``Crema_epoch.py``'s ``getAlpha_Learnable_Fitted``): a fifth-degree
  polynomial of the reference's 0-based epoch ``e`` (``epoch_base`` 0: our epoch 1 is its 0),
  ``a_cls(e) = 0.2046 + 3.355e-3 e + 1.230e-4 e^2 - 2.929e-6 e^3 + 2.238e-8 e^4 - 5.397e-11 e^5`` and
  ``a_align = 1 - a_cls`` (the reference's second polynomial; its coefficients are the first's
  negated, constant 0.7954): 0.205 / 0.795 at epoch 0, 0.248 at 10, 0.437 at 50, 0.539 at 100, 0.916
  at 199. It was fitted to the learned weights of the reference's 200 epochs and leaves [0, 1] after
  them (-2.3 at epoch 250), so runs longer than 200 epochs are refused at recipe validation with
  this weighting.
- ``learned`` (``Crema_epoch_learnable.py``'s ``getAlpha_Learnable``): at the start of every epoch
  ``e``, on ``alpha_rows`` (8) fixed training rows (the reference: half of a 16-row batch held out
  once), ``L_t = a_cls CE + a_align L_align`` (no factor 2), ``g = dL_cls/dtheta`` and the
  Hessian-vector product ``h = d(dL_t/dtheta . g)/dtheta``; the update uses the mean of ``h`` over
  the model's **first parameter tensor only** (the reference's ``hessian_vector_prod[0].mean()``;
  here the first modality's first encoder weight): ``a_align <- clip(a_align - lr_alpha * mean(h_0),
  0.05, 0.95)``, ``a_cls = 1 - a_align``; ``lr_alpha`` halves at epochs 20, 40, ... (``e % 20 == 0``,
  ``e != 0``). Starts at ``a_cls = initial_cls_weight`` (0.05, the reference's ``cls_k = [0.05,
  0.95]``; BalanceBenchmark starts at 0.95). Deviations: the rows are the first ``alpha_rows`` rows
  of the unshuffled training split and are also trained on (the reference removes its 16 rows, 0.2%
  of CREMA-D, from training); the pass runs with the model in eval mode (the reference's model is in
  eval mode there from its second epoch on, left so by validation; in train mode at the first).
  Cost: one double backward on 8 rows per epoch.

Hyper-parameters (``method.*``): ``weighting`` (``fitted``), ``initial_cls_weight`` (0.05),
``lr_alpha`` (1e-4), ``alpha_rows`` (8); the last three only act with ``learned``.

Reference protocol (``data/crema.json``): ResNet-18 audio and visual encoders from scratch, SGD lr
1e-2, momentum 0.9, weight decay 1e-4, step decay x0.1 every 70 epochs, 200 epochs, batch 64, one
frame per clip (``recipes/cremad/lfm.yaml``). Any M >= 2; no batch statistics, so data-parallel
training needs nothing beyond the usual gradient average (the learned weight is averaged over the
processes, which compute it on the same rows).
"""

from __future__ import annotations

from itertools import combinations
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bogc_cli.data.loader import Batch, to_device
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.models.late_fusion import UnimodalMean
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel

# getAlpha_Learnable_Fitted in Crema_epoch.py: the weight of the classification loss, a polynomial of the epoch
FITTED_CLS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)
FITTED_EPOCHS = 200  # the reference's run, over which the polynomial was fitted
ALPHA_RANGE = (0.05, 0.95)  # the learned alignment weight is clipped to this range
LR_ALPHA_HALVING = 20  # the learned weight's step size halves every this many epochs


class LFMOptions(StrictModel):
    weighting: Literal["fitted", "learned"] = Field(
        "fitted", description="the CE/alignment weights: the reference's fitted epoch polynomial or its per-epoch "
        "hypergradient step")
    initial_cls_weight: float = Field(0.05, ge=0.05, le=0.95, description="learned: the CE weight at the start")
    lr_alpha: float = Field(1e-4, gt=0, description="learned: step size of the weight update (halved every 20 epochs)")
    alpha_rows: int = Field(8, ge=1, description="learned: training rows the weight update is computed on")


def fitted_weights(epoch: int) -> tuple[float, float]:
    """``(a_cls, a_align)`` of the reference's fitted schedule at its 0-based ``epoch``; they sum to 1."""
    a_cls = sum(c * epoch ** i for i, c in enumerate(FITTED_CLS))
    return a_cls, 1.0 - a_cls


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (bf16/fp16 logits are too coarse for a KL), float64 if it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def alignment(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The reference's ``Alignment``: ``(KL(m || p) + KL(m || q)) / 2`` with ``p, q`` the softmax of
    ``[B, C]`` logits and ``m = (p + q) / 2``, each KL summed over classes and averaged over rows; scalar
    (float32 at least), >= 0, 0 iff ``p == q``."""
    logp = torch.log_softmax(_wide(p_logits), dim=-1)
    logq = torch.log_softmax(_wide(q_logits), dim=-1)
    mid = 0.5 * (logp.exp() + logq.exp())
    return 0.5 * (F.kl_div(logp, mid, reduction="batchmean") + F.kl_div(logq, mid, reduction="batchmean"))


def mean_pairwise_alignment(logits: list[torch.Tensor]) -> torch.Tensor:
    """``alignment`` averaged over the modality pairs ``i < j`` of ``M x [B, C]`` logits (M >= 2); scalar."""
    return torch.stack([alignment(a, b) for a, b in combinations(logits, 2)]).mean()


def lfm_loss(logits: list[torch.Tensor], labels: torch.Tensor, a_cls: float, a_align: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(CE(f, y), L_align, L)`` for unimodal logits ``M x [B, C]``, labels ``[B]``, fused ``f`` their mean and
    ``L = 2 (a_cls CE + a_align L_align)``."""
    fused = torch.stack([_wide(z) for z in logits]).mean(0)
    ce = F.cross_entropy(fused, labels)
    align = mean_pairwise_alignment(logits)
    return ce, align, 2 * (a_cls * ce + a_align * align)


class LFM(Method):
    name = "lfm"
    summary = ("late fusion (mean of the unimodal heads) trained on CE plus an alignment of the modalities' "
               "predictions, weighted by an epoch schedule (fitted) or a per-epoch hypergradient (learned)")
    Options = LFMOptions
    min_modalities = 2
    modality_note = "M > 2: the alignment is averaged over modality pairs (as BalanceBenchmark)"
    fidelity = ("follows njustkmg/NeurIPS24-LFM Crema_epoch.py (README command): mean of unimodal heads, "
                "2 (a CE + (1-a) Alignment) with the fitted epoch polynomial; weighting: learned is "
                "Crema_epoch_learnable.py's hypergradient (first parameter tensor's HVP mean); deviations: "
                "log_softmax instead of softmax().log(), learned-weight rows also trained on, eval mode there")
    epoch_base = 0  # the reference's `for epoch in range(epochs)`

    @classmethod
    def check_config(cls, options: LFMOptions, recipe) -> str | None:
        if recipe.model.unimodal_logits != "heads":
            return ("method lfm predicts with the mean of the unimodal heads: set model.unimodal_logits: heads "
                    f"(it is {recipe.model.unimodal_logits!r})")
        if options.weighting == "fitted" and recipe.train.epochs > FITTED_EPOCHS:
            return (f"method lfm's fitted weighting is a polynomial fitted over the reference's {FITTED_EPOCHS} "
                    f"epochs and leaves [0, 1] after them, but train.epochs is {recipe.train.epochs}; train at most "
                    f"{FITTED_EPOCHS} epochs or set method.weighting: learned")
        return None

    @classmethod
    def adapt_model(cls, options: LFMOptions, model) -> None:
        if model.slice_unimodal:
            raise UserError("method lfm needs model.unimodal_logits: heads (its prediction averages them)")
        model.fusion_head = UnimodalMean(model.unimodal_heads, model.modalities)

    def __init__(self, options: LFMOptions, model, ctx):
        super().__init__(options, model, ctx)
        self.align_weight = 1.0 - options.initial_cls_weight  # learned: the reference's alpha[1]
        self.lr_alpha = options.lr_alpha
        self._logs: dict[str, torch.Tensor] = {}

    def weights(self) -> tuple[float, float]:
        """``(a_cls, a_align)`` for the current epoch."""
        if self.options.weighting == "fitted":
            return fitted_weights(self.reference_epoch())
        return 1.0 - self.align_weight, self.align_weight

    def losses(self, out, labels):
        a_cls, a_align = self.weights()
        logits = [out.unimodal_logits[m] for m in self.model.modalities]
        ce, align, _ = lfm_loss(logits, labels, a_cls, a_align)
        self._logs = {"lfm.ce": ce.detach(), "lfm.alignment": align.detach(),
                      "lfm.cls_weight": ce.new_tensor(a_cls), "lfm.align_weight": ce.new_tensor(a_align)}
        return {FUSED: 2 * a_cls * ce, "align": 2 * a_align * align}

    def before_backward(self, out, batch):
        logs, self._logs = self._logs, {}
        return logs

    # ------------------------------------------------------------ learned weighting
    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.options.weighting == "learned":
            self._learn_weight()

    def _weight_rows(self) -> Batch:
        loader = self.ctx.train_eval
        if loader is None:
            raise UserError("method.weighting 'learned' needs training rows for its weight update, which this "
                            "caller did not provide (ctx.train_eval); use method.weighting: fitted")
        raw = next(iter(loader))
        batch = raw if isinstance(raw, Batch) else to_device(raw, self.ctx.device)
        n = self.options.alpha_rows
        return Batch({m: x[:n] for m, x in batch.inputs.items()}, batch.labels[:n], batch.index[:n])

    def weight_gradient(self, batch: Batch) -> torch.Tensor:
        """The reference's ``alpha_grad``: the mean over the model's first parameter tensor of the
        Hessian-vector product ``d(dL_t/dtheta . dL_cls/dtheta)/dtheta`` on ``batch``; scalar."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), self.ctx.autocast():
                out = self.model(batch.inputs)
            logits = [out.unimodal_logits[m] for m in self.model.modalities]
            ce, align, _ = lfm_loss(logits, batch.labels, 1.0 - self.align_weight, self.align_weight)
            total = (1.0 - self.align_weight) * ce + self.align_weight * align
            with torch.enable_grad():
                theta = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
                cls = torch.autograd.grad(ce, params, create_graph=True, allow_unused=True)
                used = [i for i, (t, c) in enumerate(zip(theta, cls)) if t is not None and c is not None]
                hvp = torch.autograd.grad([theta[i] for i in used], params, [cls[i] for i in used],
                                          allow_unused=True)
        finally:
            self.model.train(was_training)
        first = hvp[0]
        return torch.zeros((), device=self.ctx.device) if first is None else first.detach().double().mean()

    def _learn_weight(self) -> None:
        epoch = self.reference_epoch()
        if epoch % LR_ALPHA_HALVING == 0 and epoch != 0:
            self.lr_alpha /= 2
        grad = self.weight_gradient(self._weight_rows()).double()
        d = self.ctx.distributed
        if d is not None:  # every process computes it on the same rows: make them agree exactly
            grad = self.batch_sum({"g": grad})["g"] / d.world
        if not torch.isfinite(grad):
            return  # a non-finite model: keep the weight (the step skips will show the fault)
        low, high = ALPHA_RANGE
        self.align_weight = min(high, max(low, self.align_weight - self.lr_alpha * float(grad)))

    def state_dict(self):
        return {"align_weight": self.align_weight, "lr_alpha": self.lr_alpha}

    def load_state_dict(self, state):
        self.align_weight = state.get("align_weight", self.align_weight)
        self.lr_alpha = state.get("lr_alpha", self.lr_alpha)


METHOD = LFM
