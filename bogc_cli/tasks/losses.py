"""The loss of each task type, on one head's outputs.

- classification: cross-entropy of the ``[B, C]`` logits and the ``[B]`` int64 class indices;
- multilabel: binary cross-entropy with logits (``torch.nn.BCEWithLogitsLoss``), each of the ``C``
  outputs an independent logit against its 0/1 target ``[B, C]``, averaged over labels and rows;
- regression: L1 (mean absolute error; ``nn.L1Loss`` as MulT's and CGGM's CMU-MOSI scripts use,
  ``hyp_params.criterion = 'L1Loss'`` in zrguo/CGGM ``run/mosi_run.py``) or the mean squared error
  (``train.regression_loss``) of the ``[B, 1]`` output against the ``[B]`` float targets.

``reduction="none"`` gives one loss per row ``[B]`` (multilabel: the mean over the row's labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bogc_cli.tasks import TaskSpec


def task_loss(spec: TaskSpec, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The loss of ``outputs`` (``[B, C]``, or ``[B, 1]`` for regression; computed in float32) against
    ``labels`` in the task's form; a scalar, or ``[B]`` with ``reduction="none"``."""
    x = outputs.float()
    if spec.task == "classification":
        return F.cross_entropy(x, labels, reduction=reduction)
    if spec.task == "multilabel":
        per = F.binary_cross_entropy_with_logits(x, labels.to(x.dtype), reduction="none").mean(dim=1)
        return per if reduction == "none" else per.mean()
    pred, y = x.reshape(x.shape[0], -1)[:, 0], labels.to(x.dtype)
    per = (pred - y).abs() if spec.regression_loss == "l1" else (pred - y) ** 2
    return per if reduction == "none" else per.mean()


def batch_hits(spec: TaskSpec, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rows predicted right, the training tally's ``train_accuracy`` numerator (a device scalar):
    classification: argmax = label; multilabel: every label right at probability 0.5 (exact match);
    regression: the sign right in the negative / non-negative form of Acc-2 (``tasks/metrics.py``)."""
    x = outputs.detach()
    if spec.task == "classification":
        return (x.argmax(1) == labels).sum()
    if spec.task == "multilabel":
        return ((x > 0) == labels.bool()).all(dim=1).sum()
    return ((x.reshape(x.shape[0], -1)[:, 0] >= 0) == (labels >= 0)).sum()


__all__ = ["batch_hits", "task_loss"]
