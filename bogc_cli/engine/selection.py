"""Validation after each epoch, and model selection on it: the checkpoint a run reports (best.pt) is the
epoch with the highest validation accuracy, the earliest of equals; test data is never looked at."""

from __future__ import annotations

import torch

from bogc_cli.engine.evaluate import evaluate_predictions, predict
from bogc_cli.engine.run_state import RunState


def validate_epoch(state: RunState, record: dict, epoch: int, loader, device: torch.device, autocast,
                   classes: list[str]) -> bool:
    """Evaluate ``state.model`` on the validation ``loader``: the metrics become ``state.val`` and their
    figures go into the epoch's ``record`` (``val_accuracy``, ``val_macro_f1``,
    ``val_unimodal_accuracy.<modality>``). True when ``epoch`` is the best so far (``state.best_accuracy``
    and ``state.best_epoch`` then name it), so its weights are the ones to keep."""
    val = evaluate_predictions(predict(state.model, loader, device, autocast), classes)
    state.val = val
    record.update({"val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]})
    record.update({f"val_unimodal_accuracy.{m}": a for m, a in val["unimodal_accuracy"].items()})
    return select(state, epoch, val["accuracy"])


def select(state: RunState, epoch: int, accuracy: float) -> bool:
    """Whether ``accuracy`` (validation, of ``epoch``) beats the best so far; ties keep the earlier epoch."""
    if accuracy > state.best_accuracy:
        state.best_accuracy, state.best_epoch = accuracy, epoch
        return True
    return False
