"""Predictions and metrics: accuracy, macro-F1, per-class accuracy, each modality head's accuracy
(classification); the task's metrics (tasks/metrics.py) and each head's for multilabel and regression runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bogc_cli.data.loader import to_device
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.tasks import TaskSpec
from bogc_cli.tasks.metrics import classification_metrics, task_metrics


@dataclass
class Predictions:
    """``labels``: ``[N]`` (``[N, C]`` multilabel); ``fused``: ``[N, C]`` logits (``[N, 1]`` regression);
    ``unimodal[m]``: the same per head (float32, CPU)."""

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


def evaluate_predictions(p: Predictions, classes: list[str], spec: TaskSpec | None = None) -> dict:
    """The fused prediction's metrics and each head's. Classification (the default ``spec``): accuracy,
    macro-F1, per-class accuracy, ``unimodal_accuracy``. Multilabel and regression: the task's metrics
    (tasks/metrics.py), ``unimodal_<selection metric>`` ``{m: value}`` and ``unimodal_metrics`` ``{m: {...}}``.
    Every result names its ``task`` and ``select_metric``."""
    spec = spec or TaskSpec()
    if spec.task == "classification":
        result = classification_metrics(p.labels, p.fused, classes)
        result["unimodal_accuracy"] = {m: float((v.argmax(1) == p.labels).mean()) for m, v in p.unimodal.items()}
    else:
        result = task_metrics(spec.task, p.labels, p.fused, classes)
        heads = {m: task_metrics(spec.task, p.labels, v, classes) for m, v in p.unimodal.items()}
        result[f"unimodal_{spec.metric}"] = {m: h[spec.metric] for m, h in heads.items()}
        result["unimodal_metrics"] = heads
    return {"task": spec.task, "select_metric": spec.metric, **result}


__all__ = ["Predictions", "classification_metrics", "evaluate_predictions", "predict"]
