"""Calibration of the fused prediction: expected calibration error, negative log-likelihood, Brier score,
and the reliability diagram's bins.

With ``p = softmax(logits)`` ``[N, C]``, confidence ``max_k p_k`` and the predicted class ``argmax_k p_k``:

- **ECE** (Guo et al., ICML 2017, "On Calibration of Modern Neural Networks"): the confidences are cut into
  ``BINS`` = 15 equal-width bins over [0, 1]; ECE = sum over bins of (share of rows in the bin) x
  |accuracy in the bin - mean confidence in the bin|. Computed by torchmetrics'
  ``multiclass_calibration_error(norm="l1", n_bins=15)`` (top-label calibration error; its bins are
  ``[lo, hi)``, and a confidence of exactly 1 gets a bin of its own);
- **NLL**: mean of ``-log p_y`` (nats), ``torch.nn.functional.cross_entropy`` on the logits;
- **Brier score** (Brier 1950, multiclass form): mean over rows of ``sum_k (p_k - 1[k = y])^2``, in
  [0, 2]; torchmetrics has no multiclass Brier score, so it is the one line below.

torchmetrics is imported when ``calibration`` first runs, not with this module: the import takes about a
second (it imports torchvision), which ``bogc report`` and the other commands need not pay.

The reliability diagram (``reliability_bins``, drawn by ``report.balance_plots.plot_reliability``) shows
each bin's accuracy against its mean confidence, with the same 15 bins (a confidence of exactly 1 joins
the last; torchmetrics exposes no bins): a calibrated model lies on the diagonal. Empty bins are None.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. 2017 use 15)."""


def calibration(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, bins: int = BINS) -> dict:
    """``{"ece", "nll", "brier", "bins", "reliability"}`` of logits ``[N, C]`` against labels ``[N]``.

    ``logits`` may be log-probabilities (a product of experts): softmax gives the same probabilities.
    Raises ValueError for empty or mismatched inputs."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"calibration needs logits [N, C] and labels [N] with N > 0; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.softmax(x, dim=1)
    nll = F.cross_entropy(x, y)
    brier = ((p - F.one_hot(y, x.shape[1]).to(p.dtype)) ** 2).sum(1).mean()
    ece = multiclass_calibration_error(p, y, num_classes=x.shape[1], n_bins=bins, norm="l1")
    return {"ece": float(ece), "nll": float(nll), "brier": float(brier), "bins": bins,
            "reliability": reliability_bins(p, y, bins)}


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict:
    """Per equal-width confidence bin: ``count``, ``accuracy`` and mean ``confidence`` (lists of ``bins``;
    None where a bin is empty: JSON has no NaN). A bin is ``[lo, hi)``; a confidence of exactly 1 joins the
    last bin here."""
    conf, pred = probabilities.max(dim=1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    index = (torch.bucketize(conf, edges, right=True) - 1).clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    hits = torch.bincount(index, weights=right, minlength=bins)
    total_conf = torch.bincount(index, weights=conf.double(), minlength=bins)
    def per_bin(total: torch.Tensor) -> list[float | None]:
        return [float(t / n) if n else None for t, n in zip(total.tolist(), count.tolist())]

    return {"count": [int(v) for v in count.tolist()], "accuracy": per_bin(hits), "confidence": per_bin(total_conf)}


__all__ = ["BINS", "calibration", "reliability_bins"]
