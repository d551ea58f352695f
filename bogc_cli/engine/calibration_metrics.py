"""Calibration of the fused prediction: expected calibration error, negative log-likelihood, Brier score,
and the reliability diagram's bins.

With ``p = softmax(logits)`` ``[N, C]``, confidence ``max_k p_k`` and the predicted class ``argmax_k p_k``:

- **ECE** (Guo et al., ICML 2017, "On Calibration of Modern Neural Networks"): the confidences are cut into
  ``BINS`` = 15 equal-width bins over [0, 1]; ECE = sum over bins of (share of rows in the bin) x
  |accuracy in the bin - mean confidence in the bin|. The rule is torchmetrics' top-label calibration error
  (``multiclass_calibration_error(norm="l1", n_bins=15)``, ``functional/classification/calibration_error.py``):
  confidences in float32, bins ``[lo, hi)``, a confidence of exactly 1 in a bin of its own.
  Deliberate deviation: ``expected_calibration_error`` computes that rule here (one ``bincount``) instead of
  calling torchmetrics, because importing torchmetrics imports its image, audio and text metrics
  (torchvision, transformers): 5.3-5.6 s per process on the 2-core development machine under load, paid
  by every ``bogc train`` and ``bogc eval`` for a sum over 15 bins (the quickstart's run is ~47 s). The
  tests check it against torchmetrics (a ``dev`` dependency) on random and saturated predictions: equal to
  1e-6;
- **NLL**: mean of ``-log p_y`` (nats), ``torch.nn.functional.cross_entropy`` on the logits;
- **Brier score** (Brier 1950, multiclass form): mean over rows of ``sum_k (p_k - 1[k = y])^2``, in
  [0, 2]; torchmetrics has no multiclass Brier score, so it is the one line below.

The reliability diagram (``reliability_bins``, drawn by ``report.balance_plots.plot_reliability``) shows
each bin's accuracy against its mean confidence, with the same 15 bins (a confidence of exactly 1 joins
the last, so the diagram has 15 bars): a calibrated model lies on the diagonal. Empty bins are None.
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
    p = torch.softmax(x, dim=1)
    nll = F.cross_entropy(x, y)
    brier = ((p - F.one_hot(y, x.shape[1]).to(p.dtype)) ** 2).sum(1).mean()
    ece = expected_calibration_error(p, y, bins)
    return {"ece": float(ece), "nll": float(nll), "brier": float(brier), "bins": bins,
            "reliability": reliability_bins(p, y, bins)}


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Top-label ECE of ``probabilities`` ``[N, C]`` against ``labels`` ``[N]``, by torchmetrics' rule (module
    docstring): float32 confidences, ``bins`` bins ``[lo, hi)`` and one more for a confidence of exactly 1.
    Per bin, share x |accuracy - mean confidence| is |sum of hits - sum of confidences| / N."""
    conf, pred = probabilities.max(dim=1)
    conf = conf.float()
    hits = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    index = torch.bucketize(conf, edges, right=True) - 1  # 0 .. bins (bins: a confidence of exactly 1)
    gap = torch.bincount(index, weights=hits, minlength=bins + 1) - torch.bincount(index, weights=conf,
                                                                                   minlength=bins + 1)
    return float(gap.abs().sum() / conf.shape[0])


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


__all__ = ["BINS", "calibration", "expected_calibration_error", "reliability_bins"]
