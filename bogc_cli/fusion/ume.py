"""``ume``: Uni-Modal Ensemble, unimodal models each trained on its own loss, predicting together.

Du, Teng, Li, Liu, Yuan, Wang, Yuan & Zhao, "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning", ICML 2023 (arXiv:2305.01233). The paper's remedy for *modality laziness* on data whose useful
features are mostly uni-modal: train one model per modality, each on its own labels-only loss, so no
modality's feature learning is held back by another's, and combine them only at prediction (late
fusion of independently trained models). Reference code: none public from the authors (no repository
found), and GeWu-Lab/BalanceBenchmark, which ports UMT (``balancemm/trainer/UMT_trainer.py``), has no
UME trainer; its ``balancemm/trainer/unimodal_trainer.py`` (one modality, plain CE) is the
per-modality model this ensembles. The rule therefore follows the paper's text.

Model (``adapt_model``): each modality m is its encoder and its own linear classifier
(``model.unimodal_heads``), ``o_m = W_m z_m + b_m`` ``[B, C]``; there is no fusion layer. The prediction
is the ensemble's mean of the unimodal logits,

    f(x) = (1/M) sum_m o_m(x_m)          [B, C]

(:class:`~bogc_cli.models.late_fusion.UnimodalMean` becomes the fusion head, so validation, ``bogc
eval`` and ``missing-modality`` predict with it; the mean has the sum's argmax). The loss of one step:

    L = sum_m CE(o_m, y)

Each ``CE(o_m, y)`` reaches only modality m's encoder and classifier (their parameters are disjoint), so
the gradients are exactly those of M separate unimodal trainings on the same batches.

Hyper-parameters (``method.*``): none; the paper's ensemble has none (equal weights).

Task types: the rule is a sum of per-modality losses, so it carries over unchanged to multilabel (each
``L_m`` the binary cross-entropy of head m's C logits) and regression (each ``L_m`` the L1 or MSE of its one
output; the ensemble averages the M predictions).

Deviations, all from training the M models in one run rather than M runs: (1) one model selection for
the ensemble (the epoch with the best validation accuracy of ``f``), where separate runs would each keep
their own best epoch; (2) a recipe's ``optim.grad_clip`` clips the norm of all modalities' gradients
together (no recipe here sets one for ``ume``); (3) a step whose gradient is not finite in one modality
is skipped for all. Per-parameter optimisers (SGD with momentum, Adam) otherwise step each model as its
own run would. Any M >= 2 (the sum and the mean run over every modality); no batch statistics, so
data-parallel training needs nothing beyond the usual gradient average.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.models.late_fusion import UnimodalMean


def ume_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each modality's own loss ``{m: CE(o_m, y)}`` from unimodal logits ``{m: [B, C]}`` and labels ``[B]``
    (float32 scalars; their sum is the step's loss)."""
    return {m: F.cross_entropy(z.float(), labels) for m, z in logits.items()}


class UME(Method):
    name = "ume"
    summary = ("uni-modal ensemble: each modality's encoder and classifier trained on its own CE only; the "
               "prediction is the mean of the unimodal logits")
    min_modalities = 2
    modality_note = "any M: every modality's model trains on its own loss; the prediction averages all M"
    tasks = ("classification", "multilabel", "regression")
    task_note = ("a sum of per-modality losses (each the task's: CE, BCE with logits, L1/MSE); the ensemble's mean "
                 "of the heads' outputs is the mean prediction (regression) or mean logit per label (multilabel)")
    fidelity = ("follows the paper (Du et al. 2023; no authors' code found, BalanceBenchmark has no UME trainer: "
                "its unimodal_trainer.py is each member): sum_m CE(o_m), prediction mean_m o_m; deviations: the "
                "M models trained in one run, so one best epoch for the ensemble and one NaN-skip/clip for all")

    @classmethod
    def check_config(cls, options, recipe) -> str | None:
        if recipe.model.unimodal_logits != "heads":
            return ("method ume trains one classifier per modality on its own encoder: set model.unimodal_logits: "
                    f"heads (it is {recipe.model.unimodal_logits!r})")
        return None

    @classmethod
    def adapt_model(cls, options, model) -> None:
        if model.slice_unimodal:
            raise UserError("method ume needs model.unimodal_logits: heads (its prediction averages them)")
        model.fusion_head = UnimodalMean(model.unimodal_heads, model.modalities)

    def losses(self, out, labels):
        """``{m: L(o_m, y)}``: ``ume_loss`` (each CE) for classification, the run's task loss otherwise."""
        if self.model.task.task == "classification":
            return ume_loss(out.unimodal_logits, labels)
        return {m: self.task_loss(z, labels) for m, z in out.unimodal_logits.items()}


METHOD = UME
