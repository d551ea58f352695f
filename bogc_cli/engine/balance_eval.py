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
  the frozen encoder's train features, its validation accuracy and chosen ``C``;
- ``calibration`` (engine/calibration_metrics.py): ``ece`` (15 equal-width bins), ``nll``, ``brier`` and
  the reliability diagram's bins; ``reliability.png`` in the run directory;
- ``parameters``, ``forward_flops_per_sample`` (engine/cost.py).

Every figure comes from one pass of the frozen encoders over each split: the subsets' predictions are
the fusion head applied to the stored test features, with the fill's feature in place of a missing one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bogc_cli.data.loader import to_device
from bogc_cli.engine.calibration_metrics import calibration
from bogc_cli.engine.contribution import (ShapleyTooLarge, absent_features, check_modality_count, contributions,
                                          score_subsets)
from bogc_cli.engine.cost import forward_flops_per_sample, parameter_count
from bogc_cli.engine.linear_probe import linear_probe, probe_block
from bogc_cli.models.multimodal import MultimodalModel

RELIABILITY_PNG = "reliability.png"


@torch.no_grad()
def split_features(model: MultimodalModel, loader, device: torch.device, autocast
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """The encoders' features of every row of ``loader`` (eval mode, in order): ``({m: [N, d_m]}, labels [N],
    first row's inputs {m: [1, *shape_m]})``, float32 on the CPU."""
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    labels, first = [], None
    for raw in loader:
        batch = to_device(raw, device)
        if first is None:
            first = {m: x[:1] for m, x in batch.inputs.items()}
        with autocast():
            z = model.encode(batch.inputs)
        for m in model.modalities:
            feats[m].append(z[m].float().cpu())
        labels.append(batch.labels.cpu())
    if first is None:
        raise ValueError("the split has no rows")
    return {m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels), first


def balance_metrics(model: MultimodalModel, loaders: dict, device: torch.device, autocast, *,
                    shapley: bool = True, strict: bool = True, run_dir: Path | None = None,
                    title: str = "") -> dict:
    """The fields above for ``model`` (its best checkpoint, loaded), from ``loaders`` = ``{"train", "val",
    "test"}`` (unshuffled). ``shapley=False`` leaves the contributions out (``{"skipped": ...}``); with
    too many modalities ``strict`` raises ``ShapleyTooLarge`` (a ``UserError``), otherwise the block says
    why it was skipped. With ``run_dir``, the reliability diagram is written there (``title`` on it)."""
    was_training = model.training
    model.eval()
    try:
        test_feats, test_labels, example = split_features(model, loaders["test"], device, autocast)
        out: dict = {}
        out["contribution"] = _contribution(model, test_feats, test_labels, example, autocast, shapley, strict)
        out["calibration"] = calibration(_fused_logits(model, test_feats, device, autocast), test_labels)
        out["linear_probe"] = _probes(model, loaders, device, autocast, (test_feats, test_labels))
        out["parameters"] = parameter_count(model)
        out["forward_flops_per_sample"] = forward_flops_per_sample(model, example)
    finally:
        model.train(was_training)
    if run_dir is not None:
        from bogc_cli.report.balance_plots import plot_reliability

        plot_reliability({"": out["calibration"]}, Path(run_dir) / RELIABILITY_PNG, title or "reliability diagram",
                         pdf=False)
    return out


def run_balance_metrics(model: MultimodalModel, splits: dict, batch_size: int, device: torch.device, autocast,
                        run_dir: Path, title: str) -> dict:
    """``balance_metrics`` at the end of training: the data's train, val and test splits (``SplitArrays``) in
    order, the run's ``eval_batch_size``; too many modalities for Shapley values skip them with a note
    instead of failing the run."""
    from bogc_cli.data.loader import make_loader

    loaders = {s: make_loader(splits[s], batch_size, shuffle=False) for s in ("train", "val", "test")}
    return balance_metrics(model, loaders, device, autocast, shapley=True, strict=False, run_dir=run_dir,
                           title=title)


def _contribution(model, feats, labels, example, autocast, shapley: bool, strict: bool) -> dict:
    if not shapley:
        return {"skipped": "not asked for (--no-shapley)"}
    try:
        check_modality_count(list(model.modalities))
    except ShapleyTooLarge as exc:
        if strict:
            raise
        return {"skipped": str(exc)}
    scores = score_subsets(model, feats, labels, absent_features(model, example), autocast)
    return contributions(scores, list(model.modalities), model.fill)


@torch.no_grad()
def _fused_logits(model, feats: dict[str, torch.Tensor], device, autocast, chunk: int = 1024) -> torch.Tensor:
    """The fused logits ``[N, C]`` of the stored features (every modality present)."""
    n = next(iter(feats.values())).shape[0]
    parts = []
    for start in range(0, n, chunk):
        with autocast():
            out = model.heads({m: z[start:start + chunk].to(device) for m, z in feats.items()})
        parts.append(out.fused_logits.float().cpu())
    return torch.cat(parts)


def _probes(model, loaders, device, autocast, test) -> dict:
    train_feats, train_labels, _ = split_features(model, loaders["train"], device, autocast)
    val_feats, val_labels, _ = split_features(model, loaders["val"], device, autocast)
    test_feats, test_labels = test
    results = {}
    for m in model.modalities:
        results[m] = linear_probe((_np(train_feats[m]), _np(train_labels)), (_np(val_feats[m]), _np(val_labels)),
                                  (_np(test_feats[m]), _np(test_labels)))
    return probe_block(results)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


__all__ = ["RELIABILITY_PNG", "balance_metrics", "run_balance_metrics", "split_features"]
