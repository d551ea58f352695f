"""The balance metrics of a trained model, beside its accuracy: modality contributions (exact Shapley values
and the imbalance degree), linear-probe accuracy per modality, calibration of the fused prediction and
cost. ``bogc eval`` and the evaluation at the end of ``bogc train`` both call ``balance_metrics``, so
eval.json holds the same fields whichever wrote it.

eval.json gets (see each module for the rule and its source):

- ``contribution`` (engine/contribution.py): per value function (``accuracy``,
  ``true_class_probability``) the Shapley value of each modality, ``imbalance_degree``, the worth of the
  full and empty sets; ``subsets``: the worth of every subset; ``fill``. Above ``MAX_MODALITIES``
  modalities: refused (``bogc eval``) or ``{"skipped": reason}`` (end of training: a run never fails
  for it);
- ``linear_probe`` (engine/linear_probe.py): per modality the test accuracy of a logistic regression on
  the frozen encoder's features of (at most 1,000) train rows, its validation accuracy and chosen ``C``;
- ``calibration`` (engine/calibration_metrics.py): ``ece`` (15 equal-width bins), ``nll``, ``brier`` and
  the reliability diagram's bins; ``reliability.png`` in the run directory;
- ``parameters``, ``forward_flops_per_sample`` (engine/cost.py).

Multilabel and regression runs: the contributions play their task's value functions (engine/contribution.py
``VALUE_FUNCTIONS_BY_TASK``: label accuracy and true-label probability; minus the absolute error and the sign
accuracy); the linear probes and calibration are classification-only and each block says so
(``{"not_applicable": reason}``); parameters and FLOPs are reported as ever.

Every figure comes from one pass of the frozen encoders over each split: the subsets' predictions are
the fusion head applied to the stored test features, with the fill's feature in place of a missing one,
and the same pass gives the test predictions that accuracy, macro-F1 and the heads' accuracy are read from.
Where a modality's feature or head depends on other inputs (greedy's coupled encoders, I2M2's independent
experts: ``contribution.interacting_encoders``), the subsets are scored by running the model once per
subset instead (``score_subsets_by_forward``).
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass

import numpy as np
import torch

from bogc_cli.data.loader import to_device
from bogc_cli.engine.calibration_metrics import calibration
from bogc_cli.engine.contribution import (ShapleyTooLarge, absent_features, check_modality_count, contributions,
                                          interacting_encoders, score_subsets, score_subsets_by_forward)
from bogc_cli.engine.evaluate import Predictions
from bogc_cli.engine.cost import forward_flops_per_sample, parameter_count
from bogc_cli.engine.linear_probe import C_GRID, linear_probe, probe_block, probe_rows
from bogc_cli.models.multimodal import MultimodalModel

RELIABILITY_PNG = "reliability.png"


@dataclass
class SplitPass:
    """One eval-mode pass over a split, in order: ``features[m]`` ``[N, d_m]``, ``labels`` ``[N]`` (float32 /
    int64 on the CPU), ``example``: the first row's inputs ``{m: [1, *shape_m]}`` (on the device), and
    ``predictions``: the model's outputs on the rows (exactly what ``predict`` returns)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    example: dict[str, torch.Tensor]
    predictions: Predictions


@torch.no_grad()
def split_pass(model: MultimodalModel, loader, device: torch.device, autocast) -> SplitPass:
    """The encoders' features and the model's outputs on every row of ``loader`` (``forward`` is
    ``heads(encode(x))``, so the outputs are those of ``predict``, bit for bit)."""
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    labels, fused, uni, first = [], [], {m: [] for m in model.modalities}, None
    for raw in loader:
        batch = to_device(raw, device)
        if first is None:
            first = {m: x[:1] for m, x in batch.inputs.items()}
        with autocast():
            z = model.encode(batch.inputs)
            # independent experts (I2M2): the unimodal heads read the experts' own encoders, as in forward
            experts = model.encode(batch.inputs, expert=True) if len(model.expert_encoders) else None
            out = model.heads(z, experts)
        for m in model.modalities:
            feats[m].append(z[m].float().cpu())
        for m, logits in out.unimodal_logits.items():
            uni[m].append(logits.float().cpu().numpy())
        fused.append(out.fused_logits.float().cpu().numpy())
        labels.append(batch.labels.cpu())
    if first is None:
        raise ValueError("the split has no rows")
    y = torch.cat(labels)
    predictions = Predictions(y.numpy(), np.concatenate(fused), {m: np.concatenate(v) for m, v in uni.items()})
    return SplitPass({m: torch.cat(v) for m, v in feats.items()}, y, first, predictions)


@dataclass
class BalanceResult:
    """``fields``: eval.json's balance fields (module docstring); ``test``: the model's predictions on the
    evaluated split (for accuracy, macro-F1 and the heads' accuracy, without a second pass)."""

    fields: dict
    test: Predictions


def balance_metrics(model: MultimodalModel, loaders: dict, device: torch.device, autocast, *,
                    shapley: bool = True, strict: bool = True, run_dir: Path | None = None,
                    title: str = "") -> BalanceResult:
    """The fields above for ``model`` (its best checkpoint, loaded), from ``loaders`` = ``{"train", "val",
    "test"}`` (unshuffled). ``shapley=False`` leaves the contributions out (``{"skipped": ...}``); with
    too many modalities ``strict`` raises ``ShapleyTooLarge`` (a ``UserError``), otherwise the block says
    why it was skipped. With ``run_dir``, the reliability diagram is written there (``title`` on it)."""
    was_training = model.training
    model.eval()
    try:
        passes = {s: split_pass(model, loaders[s], device, autocast) for s in ("test", "train", "val")}
        test = passes["test"]
        out: dict = {}
        task = model.task.task
        out["contribution"] = _contribution(model, test, loaders["test"], device, autocast, shapley, strict)
        if task == "classification":
            out["calibration"] = calibration(test.predictions.fused, test.predictions.labels)
            out["linear_probe"] = probes(model, passes)
        else:
            out.update(not_applicable(task))
        out["parameters"] = parameter_count(model)
        out["forward_flops_per_sample"] = forward_flops_per_sample(model, test.example)
    finally:
        model.train(was_training)
    if run_dir is not None and "ece" in out["calibration"]:
        from bogc_cli.report.balance_plots import plot_reliability

        plot_reliability({"": out["calibration"]}, Path(run_dir) / RELIABILITY_PNG, title or "reliability diagram",
                         pdf=False)
    return BalanceResult(out, test.predictions)


#: Why each classification-only balance metric is left out of a multilabel or regression run's eval.json.
NOT_APPLICABLE = {
    "calibration": "ECE, NLL and Brier score read a softmax over classes",
    "linear_probe": "the probe is a multinomial logistic regression on class labels",
}


def not_applicable(task: str) -> dict:
    """``{metric: {"not_applicable": reason}}`` for the classification-only balance metrics of a ``task`` run."""
    return {k: {"not_applicable": f"{task} run: {why}"} for k, why in NOT_APPLICABLE.items()}


def balance_loaders(splits: dict, evaluated: str, batch_size: int) -> dict:
    """Unshuffled loaders for ``balance_metrics`` from the data's ``SplitArrays``: ``test`` over the evaluated
    split, ``val``, and ``train`` over the linear probe's rows of the train split (``probe_rows``)."""
    from bogc_cli.data.loader import make_loader

    train = splits["train"]
    return {"train": make_loader(train.subset(probe_rows(train.labels)), batch_size, shuffle=False),
            "val": make_loader(splits["val"], batch_size, shuffle=False),
            "test": make_loader(splits[evaluated], batch_size, shuffle=False)}


def run_balance_metrics(model: MultimodalModel, splits: dict, batch_size: int, device: torch.device, autocast,
                        run_dir: Path, title: str) -> BalanceResult:
    """``balance_metrics`` at the end of training, on test: too many modalities for Shapley values skip
    them with a note instead of failing the run."""
    return balance_metrics(model, balance_loaders(splits, "test", batch_size), device, autocast, shapley=True,
                           strict=False, run_dir=run_dir, title=title)


def _contribution(model, test: SplitPass, loader, device, autocast, shapley: bool, strict: bool) -> dict:
    if not shapley:
        return {"skipped": "not asked for (--no-shapley)"}
    try:
        check_modality_count(list(model.modalities))
    except ShapleyTooLarge as exc:
        if strict:
            raise
        return {"skipped": str(exc)}
    if interacting_encoders(model):
        scores = score_subsets_by_forward(model, loader, device, autocast)
    else:
        scores = score_subsets(model, test.features, test.labels, absent_features(model, test.example), autocast)
    return contributions(scores, list(model.modalities), model.fill)


def probes(model, passes: dict[str, SplitPass]) -> dict:
    """``linear_probe`` per modality from the passes over train, val and test."""
    tr, va, te = (passes[s] for s in ("train", "val", "test"))
    results = {m: linear_probe((_np(tr.features[m]), _np(tr.labels)), (_np(va.features[m]), _np(va.labels)),
                               (_np(te.features[m]), _np(te.labels)))
               for m in model.modalities}
    return probe_block(results, int(tr.labels.shape[0]))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


__all__ = ["BalanceResult", "C_GRID", "NOT_APPLICABLE", "RELIABILITY_PNG", "SplitPass", "balance_loaders",
           "balance_metrics", "not_applicable", "probes", "run_balance_metrics", "split_pass"]
