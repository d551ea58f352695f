"""``relearning``: Diagnosing & Re-learning, soft re-initialisation of each encoder by its learning state.

Wei, Li, Feng & Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024. Reference code:
GeWu-Lab/Diagnosing_Relearning_ECCV2024, ``code/ours.py`` (``reinit_score``, ``purity_score``, ``reinit``,
``main``) with ``code/script/ours.sh``; the defaults follow it.

The model trains on the fusion loss alone (as ``joint``; separate unimodal heads are probes on detached
features). Every ``reinit_epoch`` epochs (the reference's ``epoch % reinit_epoch == 0 and epoch > 0``,
counted from 0, at most ``reinit_num`` times) the learning state of every encoder is diagnosed and the encoder
is softly re-initialised:

1. Diagnosis: the encoder's features ``z_m`` ``[N, d_m]`` of the training rows and of held-out rows
   (eval mode, no gradient) are each scaled to [-1, 1] per dimension (``MinMaxScaler``), clustered into C
   clusters by k-means (``KMeans(n_clusters=C, random_state=0)``), and scored by purity (the share of rows whose
   cluster's majority label is theirs). The gap ``g_m = |purity_train - purity_held_out|`` measures how far
   the encoder has learnt its training rows beyond what generalises.
2. Re-learning: ``w_m = tanh(move_lambda * g_m)`` and every parameter of encoder m becomes
   ``w_m * theta_init + (1 - w_m) * theta``, ``theta_init`` its value before the first step (buffers such as
   BatchNorm statistics are kept, as the reference's ``named_parameters`` loop keeps them). A better-learnt
   (larger-gap) encoder is pulled further back towards its initialisation.

The reference runs the diagnosis after training and validating epoch ``e`` and trains epoch ``e + 1`` from the
re-initialised model; here it runs at the start of epoch ``e + 1`` (``epoch_base`` 0), which is the same
model, data and order. The optimiser's state (SGD momentum) is kept, as in the reference. The initial
weights are rebuilt from the seed whenever the run (re)starts, as the model's own are, so they are not
stored in checkpoints; a resume at an epoch boundary repeats the diagnosis on the same model, one inside an
epoch finds the re-initialised model in the checkpoint.

Hyper-parameters (``method.*``): ``move_lambda`` (3), ``reinit_epoch`` (20), ``reinit_num`` (3): the
``ours.sh`` command (its argparse defaults too; BalanceBenchmark's ``ReLearning_trainer.py`` config uses 15 and
2); ``holdout_fraction`` (0.111): the held-out rows are a stratified part of **train** (seeded by
``dataset.split_seed``), as the reference's ``val.csv`` is a part of CREMA-D's training clips (744 of 6698),
never the validation or test split; ``n_init`` (10): k-means restarts, scikit-learn's default before 1.4 (the
reference's time; 1.4 changed it to one k-means++ start). The reference protocol (``ours.sh`` with
``ours.py``'s defaults): SGD lr 2e-3, momentum 0.9, weight decay 1e-4, no schedule (its ``lr_decay_*`` flags are
unused), 90 epochs, batch 64, no augmentation (``ours.py`` trains on its dataset's ``my_train`` mode, which
``dataset/av_dataset.py``'s ``mode == 'train'`` test sends to the resize-only branch; ``recipes/*/relearning.yaml``).

Deviations: the reference scores its held-out rows only for the diagnosis and selects models on the test
split; here model selection stays on the validation split. BalanceBenchmark diagnoses on its training loader
and its validation loader (the test split for CREMA-D and Kinetics-Sounds) and re-initialises before
validating; the authors' order is kept. Any M: each encoder is diagnosed and re-initialised on its own.
Data-parallel: every process diagnoses the same rows with the same model (k-means is seeded), so every
process re-initialises alike without a collective.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.metrics.cluster import contingency_matrix
from sklearn.preprocessing import MinMaxScaler

from bogc_cli.data.loader import to_device
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.models.multimodal import FUSED
from bogc_cli.schema import StrictModel


class RelearningOptions(StrictModel):
    move_lambda: float = Field(3.0, ge=0, description="re-initialisation strength: w_m = tanh(move_lambda * gap_m)")
    reinit_epoch: int = Field(20, ge=1, description="diagnose and re-initialise after every reinit_epoch epochs "
                              "(counted from 0, never after epoch 0)")
    reinit_num: int = Field(3, ge=0, description="at most this many re-initialisations")
    holdout_fraction: float = Field(0.111, gt=0, lt=1, description="part of train held out for the diagnosis")
    n_init: int = Field(10, ge=1, description="k-means restarts (scikit-learn < 1.4's default)")


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of rows whose cluster's most frequent label is their own (the reference's ``purity_score``)."""
    return float(contingency_matrix(labels, clusters).max(axis=0).sum() / len(labels))


def cluster_purity(features: np.ndarray, labels: np.ndarray, n_clusters: int, n_init: int = 10) -> float:
    """Purity of k-means clusters of ``features`` ``[N, d]`` scaled to [-1, 1] per dimension."""
    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    clusters = KMeans(n_clusters=n_clusters, random_state=0, n_init=n_init).fit_predict(scaled)
    return purity(labels, clusters)


def relearn_weight(purity_train: float, purity_held_out: float, move_lambda: float) -> float:
    """``tanh(move_lambda * |purity_train - purity_held_out|)``: the share of the initial weights put back."""
    return float(np.tanh(move_lambda * abs(purity_train - purity_held_out)))


@torch.no_grad()
def soft_reinit(module: torch.nn.Module, initial: dict[str, torch.Tensor], weight: float) -> None:
    """Every trainable parameter ``p`` of ``module`` becomes ``weight * initial + (1 - weight) * p``, in place;
    frozen ones (``model.encoders.<m>.freeze``) are left bit-identical, not rounded through the mix."""
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        p.copy_(weight * initial[name].to(p) + (1 - weight) * p)


class Relearning(Method):
    name = "relearning"
    summary = ("every reinit_epoch epochs, diagnose each encoder by the train-minus-held-out purity of k-means "
               "clusters of its features and softly re-initialise it, w = tanh(lambda * gap)")
    Options = RelearningOptions
    min_modalities = 1
    modality_note = "each encoder is diagnosed and re-initialised on its own, any M"
    fidelity = ("follows Diagnosing_Relearning_ECCV2024 code/ours.py + script/ours.sh: MinMax-scaled k-means purity "
                "gap train vs held-out (11.1% of train, as its val.csv), w = tanh(3 gap), re-init every 20 epochs "
                "from epoch 20 (from 0), at most 3, momentum kept, k-means n_init 10 (its sklearn's default); "
                "deviation: model selection on the validation split (the reference: the test split)")
    epoch_base = 0  # the reference's `epoch % reinit_epoch == 0 and epoch > 0` counts from 0

    @classmethod
    def holdout_fraction(cls, options: RelearningOptions) -> float:
        return options.holdout_fraction

    def __init__(self, options: RelearningOptions, model, ctx):
        super().__init__(options, model, ctx)
        # theta_init: the encoders as built (or warm-started), before any step; rebuilt identically on resume
        self.initial = {m: {k: v.detach().clone() for k, v in model.encoders[m].named_parameters()}
                        for m in model.modalities}
        self.reinits = 0  # re-initialisations done
        self._epoch_logs: dict[str, float] = {}

    def reinit_due(self, epoch: int) -> bool:
        """Whether the start of our ``epoch`` follows a re-initialising epoch of the reference (its ``e = epoch - 1``
        counted from ``epoch_base``: ``e > 0``, ``e % reinit_epoch == 0``, at most ``reinit_num`` of them)."""
        e = self.reference_epoch(epoch - 1)
        return e > 0 and e % self.options.reinit_epoch == 0 and e // self.options.reinit_epoch <= self.options.reinit_num

    @torch.no_grad()
    def features(self, loader) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every encoder's features of ``loader``'s rows (eval mode): ``({m: [N, d_m]}, labels [N])``."""
        was_training = self.model.training
        self.model.eval()
        feats: dict[str, list[np.ndarray]] = {m: [] for m in self.model.modalities}
        labels = []
        try:
            for raw in loader:
                batch = to_device(raw, self.ctx.device) if isinstance(raw, dict) else raw
                with self.ctx.autocast():
                    z = self.model.encode(batch.inputs)
                for m in feats:
                    feats[m].append(z[m].float().cpu().numpy())
                labels.append(batch.labels.cpu().numpy())
        finally:
            self.model.train(was_training)
        return {m: np.concatenate(v) for m, v in feats.items()}, np.concatenate(labels)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._epoch_logs = {}
        held_rows = len(self.ctx.holdout.dataset) if hasattr(self.ctx.holdout, "dataset") else None
        if self.options.reinit_num and held_rows is not None and held_rows < self.model.num_classes:
            raise UserError(f"method relearning clusters the held-out rows into {self.model.num_classes} clusters (one "
                            f"per class), but method.holdout_fraction={self.options.holdout_fraction} holds out only "
                            f"{held_rows} rows; raise method.holdout_fraction or use more training data")
        if not self.reinit_due(epoch):
            return
        if self.ctx.train_eval is None or self.ctx.holdout is None:
            raise UserError("method relearning diagnoses the encoders on the training rows and on rows held out of "
                            "train; it needs the loaders bogc train lends (ctx.train_eval, ctx.holdout)")
        train, train_labels = self.features(self.ctx.train_eval)
        held, held_labels = self.features(self.ctx.holdout)
        classes = self.model.num_classes
        for m in self.model.modalities:
            p_train = cluster_purity(train[m], train_labels, classes, self.options.n_init)
            p_held = cluster_purity(held[m], held_labels, classes, self.options.n_init)
            w = relearn_weight(p_train, p_held, self.options.move_lambda)
            soft_reinit(self.model.encoders[m], self.initial[m], w)
            self._epoch_logs.update({f"method.relearn.purity_train.{m}": p_train,
                                     f"method.relearn.purity_held_out.{m}": p_held,
                                     f"method.relearn.weight.{m}": w})
        self.reinits += 1

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return dict(self._epoch_logs)

    def losses(self, out, labels):
        return {FUSED: self.fused_loss(out, labels), **self.probe_losses(out, labels)}

    def state_dict(self):
        return {"reinits": self.reinits, "epoch_logs": dict(self._epoch_logs)}

    def load_state_dict(self, state):
        self.reinits = int(state.get("reinits", 0))
        self._epoch_logs = dict(state.get("epoch_logs", {}))


METHOD = Relearning
