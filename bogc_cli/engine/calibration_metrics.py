"""Calibration of the fused prediction: expected calibration error, negative log-likelihood, Brier score,
and the reliability diagram's bins.

With ``p = softmax(logits)`` ``[N, C]``, confidence ``max_k p_k`` and the predicted class ``argmax_k p_k``:

- **ECE** (Guo et al., ICML 2017, "On Calibration of Modern Neural Networks"): the confidences are cut into
  ``BINS`` = 15 equal-width bins over [0, 1]; ECE = sum over bins of (share of rows in the bin) x
  |accuracy in the bin - mean confidence in the bin|. Computed by torchmetrics'
  ``multiclass_calibration_error(norm="l1", n_bins=15)`` (top-label calibration error);
- **NLL**: mean of ``-log p_y`` (nats), ``torch.nn.functional.cross_entropy`` on the logits;
- **Brier score** (Brier 1950, multiclass form): mean over rows of ``sum_k (p_k - 1[k = y])^2``, in
  [0, 2]; torchmetrics has no multiclass Brier score, so it is the one line below.

The reliability diagram (``reliability_bins``, drawn by ``report.balance_plots.plot_reliability``) shows
each bin's accuracy against its mean confidence, with the same 15 bins: a calibrated model lies on the
diagonal. Empty bins are NaN.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. 2017 use 15)."""


def _probabilities(logits: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)


def calibration(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, bins: int = BINS) -> dict:
    """``{"ece", "nll", "brier", "bins", "reliability"}`` of logits ``[N, C]`` against labels ``[N]``.

    ``logits`` may be log-probabilities (a product of experts): softmax gives the same probabilities.
    Raises ValueError for empty or mismatched inputs."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"calibration needs logits [N, C] and labels [N] with N > 0; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    from torchmetrics.functional.classification import multiclass_calibration_error  # seconds to import: here only

    p = torch.softmax(x, dim=1)
    c = x.shape[1]
    ece = multiclass_calibration_error(p.float(), y, num_classes=c, n_bins=bins, norm="l1")
    nll = F.cross_entropy(x, y)
    brier = ((p - F.one_hot(y, c).to(p.dtype)) ** 2).sum(1).mean()
    return {"ece": float(ece), "nll": float(nll), "brier": float(brier), "bins": bins,
            "reliability": reliability_bins(p, y, bins)}


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict:
    """Per equal-width confidence bin: ``count``, ``accuracy`` and mean ``confidence`` (lists of ``bins``;
    NaN where a bin is empty). A bin is ``[lo, hi)``, as torchmetrics bins them; a confidence of exactly 1 joins
    the last bin here, where torchmetrics gives it a bin of its own (so ``ece_from_bins`` can differ from
    ``ece`` by that bin's share of the last bin's gap)."""
    conf, pred = probabilities.max(dim=1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    index = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    hits = torch.bincount(index, weights=right, minlength=bins)
    total_conf = torch.bincount(index, weights=conf.double(), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (hits / count).tolist()
        confidence = (total_conf / count).tolist()
    return {"count": [int(v) for v in count.tolist()], "accuracy": accuracy, "confidence": confidence}


def ece_from_bins(reliability: dict) -> float:
    """The ECE the bins imply: ``sum_b n_b / N * |acc_b - conf_b|`` (empty bins add nothing)."""
    n = np.asarray(reliability["count"], dtype=float)
    acc = np.nan_to_num(np.asarray(reliability["accuracy"], dtype=float))
    conf = np.nan_to_num(np.asarray(reliability["confidence"], dtype=float))
    return float((n / n.sum() * np.abs(acc - conf)).sum())


__all__ = ["BINS", "calibration", "ece_from_bins", "reliability_bins"]
