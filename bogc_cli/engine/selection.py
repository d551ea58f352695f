"""Validation after each epoch, and model selection on it: the checkpoint a run reports (best.pt) is the
epoch with the best validation score, the earliest of equals; test data is never looked at.

The score is the task's selection metric (``tasks.TaskSpec.metric``): validation accuracy for
classification, micro-F1 for multilabel, MAE (lower is better) for regression, unless
``train.select_metric`` names another of the task's metrics.
"""

from __future__ import annotations

import torch

from bogc_cli.engine.evaluate import evaluate_predictions, predict
from bogc_cli.engine.run_state import RunState
from bogc_cli.tasks import TaskSpec


def validate_epoch(state: RunState, record: dict, epoch: int, loader, device: torch.device, autocast,
                   classes: list[str]) -> bool:
    """Evaluate ``state.model`` on the validation ``loader``: the metrics become ``state.val`` and their
    figures go into the epoch's ``record`` (classification: ``val_accuracy``, ``val_macro_f1``,
    ``val_unimodal_accuracy.<modality>``; other tasks: ``val_<metric>`` for each of the task's metrics and
    ``val_unimodal_<selection metric>.<modality>``). True when ``epoch`` is the best so far
    (``state.best_score`` and ``state.best_epoch`` then name it), so its weights are the ones to keep."""
    spec: TaskSpec = state.model.task
    val = evaluate_predictions(predict(state.model, loader, device, autocast), classes, spec)
    state.val = val
    record.update(val_record(val, spec))
    return select(state, epoch, float(val[spec.metric]))


def val_record(val: dict, spec: TaskSpec) -> dict:
    """metrics.jsonl's validation figures from ``evaluate_predictions``' result."""
    if spec.task == "classification":
        out = {"val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]}
        if spec.metric not in ("accuracy", "macro_f1"):
            out[f"val_{spec.metric}"] = val[spec.metric]
        out.update({f"val_unimodal_accuracy.{m}": a for m, a in val["unimodal_accuracy"].items()})
        return out
    from bogc_cli.tasks.metrics import TABLE_METRICS

    out = {f"val_{k}": val[k] for k in TABLE_METRICS[spec.task]}
    out.update({f"val_unimodal_{spec.metric}.{m}": a for m, a in val[f"unimodal_{spec.metric}"].items()})
    return out


def select(state: RunState, epoch: int, score: float) -> bool:
    """Whether ``score`` (validation, of ``epoch``) beats the best so far in the selection metric's direction;
    ties keep the earlier epoch."""
    if state.model.task.better(score, state.best_score if state.best_epoch else None):
        state.best_score, state.best_epoch = score, epoch
        return True
    return False
