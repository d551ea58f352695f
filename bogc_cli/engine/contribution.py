"""Modality contributions: exact Shapley values of a metric over every subset of modalities, and the
imbalance degree built on them.

The game: the players are the model's M modalities; the worth ``v(S)`` of a subset S is a test metric of
the trained model when only the modalities in S are given and every other one is missing, filled as the
run's ``model.fill`` says (``MultimodalModel.encode``: zero input, zero feature or the training mean
feature; the same fill ``bogc missing-modality`` uses). ``v(empty set)`` is the model with every
modality filled. Two metrics are played: test accuracy, and the mean probability the fused prediction
gives the true class (smooth where accuracy moves in steps of 1/N). Multilabel and regression runs play
their task's pair (``VALUE_FUNCTIONS_BY_TASK``): the fraction of labels right and the mean probability of
each label's true state; minus the absolute error (``v`` = -MAE) and the sign accuracy (Acc-2's
negative / non-negative form).

The Shapley value of modality m (Shapley 1953) is its marginal contribution averaged over the orders in
which the modalities could join::

    phi_m = sum over S in (all modalities without m) of |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S))

It is exact (all 2^M subsets are evaluated), and efficient: ``sum_m phi_m = v(all) - v(empty set)``.
This is what BalanceBenchmark computes on test after training (GeWu-Lab/BalanceBenchmark,
``balancemm/evaluation/modalitys.py``, ``Calculate_Shapley``: the same weights, every subset, the model
evaluated with the other modalities removed, the empty subset included). Above ``MAX_MODALITIES``
modalities the 2^M evaluations are refused (``ShapleyTooLarge``).

Imbalance degree. BalanceBenchmark (Xu et al., 2025, arXiv 2502.10816) reports an "imbalance degree"
from these Shapley values; its repository computes the values but holds no formula for the degree
(``balancemm/train.py`` only keeps a commented-out ``print(f'The imbalance is :{imbalance}')``). We use::

    imbalance = sum over pairs i < j of |phi_i - phi_j| / ((M - 1) * sum_m phi_m)

which is ``|phi_1 - phi_2| / (phi_1 + phi_2)`` for two modalities, 0 when every modality contributes
the same and 1 when one modality carries all of the gain (with non-negative values). It is undefined
(NaN) for one modality and when the contributions do not add up to a gain (``sum_m phi_m <= 0``).
That the survey's formula is this one for M > 2 is our reading, not checked against its text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from bogc_cli.errors import UserError
from bogc_cli.models.multimodal import MultimodalModel

MAX_MODALITIES = 8
"""Exact Shapley values evaluate 2^M subsets; above this many modalities (256 subsets) they are refused."""

VALUE_FUNCTIONS = ("accuracy", "true_class_probability")
VALUE_FUNCTIONS_BY_TASK: dict[str, tuple[str, str]] = {
    "classification": VALUE_FUNCTIONS,
    "multilabel": ("label_accuracy", "true_label_probability"),
    "regression": ("negative_absolute_error", "sign_accuracy"),
}
"""The two value functions of each task type, each the mean over test rows of a per-row figure (``row_values``):
multilabel, the fraction of a row's labels predicted right (sigmoid > 0.5) and the mean probability the model
gives each label's true state; regression, minus the absolute error (so ``v`` is minus the MAE) and whether
the sign is right in Acc-2's negative / non-negative form."""


def row_values(task: str, outputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-row figures of ``task``'s two value functions (``VALUE_FUNCTIONS_BY_TASK``) from a batch's fused
    outputs (``[B, C]``, ``[B, 1]`` regression) and labels in the task's form; two ``[B]`` tensors."""
    x = outputs.float()
    if task == "multilabel":
        y = labels.bool()
        p = torch.sigmoid(x)
        return ((x > 0) == y).float().mean(1), torch.where(y, p, 1 - p).mean(1)
    if task == "regression":
        pred, y = x[:, 0], labels.float()
        return -(pred - y).abs(), ((pred >= 0) == (y >= 0)).float()
    return (x.argmax(1) == labels).float(), torch.softmax(x, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


class ShapleyTooLarge(UserError):
    """The model has more than ``MAX_MODALITIES`` modalities."""


def check_modality_count(modalities: list[str]) -> None:
    """Raise ``ShapleyTooLarge`` when exact Shapley values would need more than 2^MAX_MODALITIES subsets."""
    if len(modalities) > MAX_MODALITIES:
        raise ShapleyTooLarge(
            f"exact Shapley contributions need 2^M model evaluations; this run has M = {len(modalities)} "
            f"modalities ({', '.join(modalities)}), above the limit of {MAX_MODALITIES} "
            f"({2 ** MAX_MODALITIES} subsets): evaluate with --no-shapley, or choose fewer modalities "
            "(dataset.modalities)")


def subset_name(subset: tuple[str, ...]) -> str:
    """``("audio", "image")`` -> ``"audio+image"``; the empty subset is ``""``."""
    return "+".join(subset)


def all_subsets(modalities: list[str]) -> list[tuple[str, ...]]:
    """Every subset of ``modalities`` (in their order), the empty one first, by size."""
    return [s for k in range(len(modalities) + 1) for s in combinations(modalities, k)]


def shapley_values(worth: dict[tuple[str, ...], float], modalities: list[str]) -> dict[str, float]:
    """Exact Shapley value of each modality from the worth of every subset.

    ``worth``: ``{subset: v(subset)}`` for all 2^M subsets, each a tuple in ``modalities``' order.
    Returns ``{m: phi_m}``; ``sum(phi) == worth[all] - worth[()]`` (up to rounding).
    Raises KeyError when a subset is missing."""
    n = len(modalities)
    phi = {}
    for m in modalities:
        others = [o for o in modalities if o != m]
        total = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for s in combinations(others, k):
                with_m = tuple(o for o in modalities if o in s or o == m)
                total += weight * (worth[with_m] - worth[s])
        phi[m] = total
    return phi


def imbalance_degree(phi: dict[str, float]) -> float:
    """``sum_{i<j} |phi_i - phi_j| / ((M - 1) sum phi)``; NaN for M < 2 or a non-positive sum (see above)."""
    values = list(phi.values())
    total = sum(values)
    if len(values) < 2 or not total > 0:
        return float("nan")
    spread = sum(abs(a - b) for a, b in combinations(values, 2))
    return spread / ((len(values) - 1) * total)


@dataclass
class SubsetScores:
    """Per test row and subset, the figures of the two value functions ``values`` (classification: whether the
    fused prediction is right, and its true-class probability; other tasks: ``VALUE_FUNCTIONS_BY_TASK``).

    ``correct[s]``, ``true_prob[s]``: ``[N]`` for each subset ``s`` (a tuple of modality names): the first and
    the second value function's per-row figure."""

    correct: dict[tuple[str, ...], np.ndarray]
    true_prob: dict[tuple[str, ...], np.ndarray]
    values: tuple[str, str] = VALUE_FUNCTIONS

    def worth(self, value: str) -> dict[tuple[str, ...], float]:
        table = self.correct if value == self.values[0] else self.true_prob
        return {s: float(v.mean()) for s, v in table.items()}


@torch.no_grad()
def absent_features(model: MultimodalModel, example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's feature when it is missing, ``{m: [1, d_m]}``, from the model's own fill.

    ``example``: one row of inputs (``{m: [1, *shape_m]}``). In eval mode a missing modality's feature is
    the same for every row (zeros, the training mean, or the encoder's output for a zero input), so one
    row tells it."""
    model.eval()
    absent = {m: torch.zeros(1, dtype=torch.bool, device=x.device) for m, x in example.items()}
    return model.encode(example, absent)


@torch.no_grad()
def score_subsets(model: MultimodalModel, features: dict[str, torch.Tensor], labels: torch.Tensor,
                  absent: dict[str, torch.Tensor], autocast, chunk: int = 1024) -> SubsetScores:
    """The fused prediction of every subset of modalities on precomputed features.

    ``features[m]``: ``[N, d_m]`` (the encoders' outputs on the test rows); ``labels``: ``[N]``;
    ``absent[m]``: ``[1, d_m]`` (``absent_features``). Subset S keeps the features of its modalities and
    puts the missing feature in place of the others: exactly ``model(inputs, present)`` with S present,
    without running the encoders again."""
    model.eval()
    mods = list(model.modalities)
    task = model.task.task
    correct, true_prob = {}, {}
    device = next(iter(absent.values())).device
    for subset in all_subsets(mods):
        hits, probs = [], []
        for start in range(0, labels.shape[0], chunk):
            part = slice(start, start + chunk)
            y = labels[part].to(device)
            feats = {m: features[m][part].to(device) if m in subset else absent[m].expand(y.shape[0], -1)
                     for m in mods}
            with autocast():
                logits = model.heads(feats).fused_logits.float()
            first, second = row_values(task, logits, y)
            hits.append(first.cpu())
            probs.append(second.cpu())
        correct[subset] = torch.cat(hits).numpy()
        true_prob[subset] = torch.cat(probs).double().numpy()
    return SubsetScores(correct, true_prob, VALUE_FUNCTIONS_BY_TASK[task])


def interacting_encoders(model: MultimodalModel) -> bool:
    """Whether a modality's feature or head depends on more than its own input: encoders run jointly
    (``model.coupling``, greedy's MMTM) or unimodal heads on independent experts' encoders (I2M2). Then the
    features of the full input cannot stand in for a subset's, and ``score_subsets_by_forward`` runs the model
    once per subset."""
    return model.coupling is not None or len(model.expert_encoders) > 0


@torch.no_grad()
def score_subsets_by_forward(model: MultimodalModel, loader, device: torch.device, autocast) -> SubsetScores:
    """``score_subsets`` for any model: ``model(inputs, present)`` with only the subset's modalities present,
    over every batch of ``loader`` (unshuffled), for each of the 2^M subsets (BalanceBenchmark's
    ``val_loop(limit_modalitys=...)``). 2^M passes of the encoders instead of one."""
    from bogc_cli.data.loader import to_device

    model.eval()
    mods = list(model.modalities)
    task = model.task.task
    hits: dict[tuple[str, ...], list] = {s: [] for s in all_subsets(mods)}
    probs: dict[tuple[str, ...], list] = {s: [] for s in all_subsets(mods)}
    for raw in loader:
        batch = to_device(raw, device)
        y = batch.labels
        rows = y.shape[0]
        for subset in hits:
            present = {m: torch.full((rows,), m in subset, dtype=torch.bool, device=y.device) for m in mods}
            with autocast():
                logits = model(batch.inputs, present).fused_logits.float()
            first, second = row_values(task, logits, y)
            hits[subset].append(first.cpu())
            probs[subset].append(second.cpu())
    return SubsetScores({s: torch.cat(v).numpy() for s, v in hits.items()},
                        {s: torch.cat(v).double().numpy() for s, v in probs.items()}, VALUE_FUNCTIONS_BY_TASK[task])


def contributions(scores: SubsetScores, modalities: list[str], fill: str) -> dict:
    """eval.json's ``contribution`` block: per value function the Shapley values, the worth of the full and
    empty sets and the imbalance degree (None where undefined); the worth of every subset; the fill used."""
    out: dict = {"fill": fill, "max_modalities": MAX_MODALITIES}
    full, empty = tuple(modalities), ()
    subsets = {}
    for value in scores.values:
        worth = scores.worth(value)
        phi = shapley_values(worth, modalities)
        degree = imbalance_degree(phi)
        out[value] = {"shapley": phi, "imbalance_degree": None if math.isnan(degree) else degree,
                      "full": worth[full], "empty": worth[empty]}
        for s, v in worth.items():
            subsets.setdefault(subset_name(s), {})[value] = v
    out["subsets"] = subsets
    return out


__all__ = ["MAX_MODALITIES", "ShapleyTooLarge", "SubsetScores", "VALUE_FUNCTIONS_BY_TASK", "absent_features",
           "all_subsets", "row_values",
           "check_modality_count", "contributions", "imbalance_degree", "interacting_encoders", "score_subsets",
           "score_subsets_by_forward", "shapley_values"]
