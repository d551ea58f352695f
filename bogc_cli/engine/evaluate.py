"""Predictions and metrics: accuracy, macro-F1, per-class accuracy, each modality head's accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bogc_cli.data.loader import to_device
from bogc_cli.models.multimodal import MultimodalModel


@dataclass
class Predictions:
    """``labels``: ``[N]``; ``fused``: ``[N, C]`` logits; ``unimodal[m]``: ``[N, C]`` logits (float32, CPU)."""

    labels: np.ndarray
    fused: np.ndarray
    unimodal: dict[str, np.ndarray]


@torch.no_grad()
def predict(model: MultimodalModel, loader, device: torch.device, autocast,
            present: dict[str, np.ndarray] | None = None) -> Predictions:
    """Run the model over a loader in order. ``present[m]``: bool ``[N]`` over the split's rows."""
    model.eval()
    labels, fused, uni = [], [], {m: [] for m in model.modalities}
    for raw in loader:
        batch = to_device(raw, device)
        mask = None
        if present is not None:
            rows = batch.index.numpy()
            mask = {m: torch.from_numpy(p[rows]).to(device) for m, p in present.items()}
        with autocast():
            out = model(batch.inputs, mask)
        labels.append(batch.labels.cpu().numpy())
        fused.append(out.fused_logits.float().cpu().numpy())
        for m, logits in out.unimodal_logits.items():
            uni[m].append(logits.float().cpu().numpy())
    return Predictions(np.concatenate(labels), np.concatenate(fused), {m: np.concatenate(v) for m, v in uni.items()})


def classification_metrics(labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict:
    """accuracy, macro_f1 (over all classes), per-class accuracy (recall), n."""
    pred = logits.argmax(axis=1)
    c = len(classes)
    per_class = {}
    for k, name in enumerate(classes):
        sel = labels == k
        per_class[name] = float((pred[sel] == k).mean()) if sel.any() else float("nan")
    return {
        "n": int(labels.shape[0]),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(_f1_score()(labels, pred, labels=list(range(c)), average="macro", zero_division=0)),
        "per_class_accuracy": per_class,
    }


def evaluate_predictions(p: Predictions, classes: list[str]) -> dict:
    result = classification_metrics(p.labels, p.fused, classes)
    result["unimodal_accuracy"] = {m: float((v.argmax(1) == p.labels).mean()) for m, v in p.unimodal.items()}
    return result


def _f1_score():
    """scikit-learn's ``f1_score``, imported when first needed: scikit-learn (with SciPy and pandas) takes as
    long to import as torch, and every ``bogc`` command would pay for it, even one refused at its first option."""
    from sklearn.metrics import f1_score

    return f1_score
