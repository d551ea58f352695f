"""Linear-probe accuracy per modality: how much each trained encoder learnt, measured the same way for
every method.

A unimodal head's test accuracy depends on the method (``joint`` trains it as a probe on detached
features, ``uniform`` through its own loss, OGM-GE reads slices of the fusion head), so it cannot compare
methods. The linear probe can: each encoder is frozen (the best-validation checkpoint, eval mode), its
features ``[N, d_m]`` on the train split are standardised (``StandardScaler``, fitted on train) and a
fresh multinomial logistic regression (scikit-learn's ``LogisticRegression``, lbfgs, up to
``MAX_ITER`` iterations) is fitted on them for each inverse regularisation strength ``C`` in ``C_GRID``;
the ``C`` with the highest validation accuracy (the smallest of equals) is kept, and that classifier's
test accuracy is the probe accuracy. The classifier is not refitted on train + validation.

The classifier is fitted on at most ``TRAIN_ROWS`` (1,000) train rows, a stratified sample drawn with seed
0 (``probe_rows``: the same rows for every method and seed of a dataset). Why: the probe needs one pass of
the encoders over the rows it fits on, and over all of train that pass costs about ``1 / (2 x epochs)`` of
the training run (8-9% of the 6-epoch quickstart, ``benchmarks/eval_cost.py``). Measured effect on the
quickstart's joint model: the audio, image and vector probes score 0.877, 0.634 and 0.372 on 1,000 rows
(mean of three samples) against 0.877, 0.631 and 0.387 on all 3,000.

This is the protocol OGM-GE's users ask for ("a frozen encoder with a retrained linear head"). Deviation
from BalanceBenchmark (``balancemm/trainer/LinearProbe_trainer.py``): there one new linear head is trained
by gradient descent on the concatenated frozen features of all modalities and each modality's accuracy is
read from its slice of that head's weights; here each modality gets a classifier of its own, so its score
does not depend on what the other modalities carry, and a closed-form solver with a validated ``C``
removes the head's own training schedule from the comparison.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Inverse L2 regularisation strengths tried; the one with the best validation accuracy is kept."""

MAX_ITER = 1000

TRAIN_ROWS = 1000
"""The probe is fitted on at most this many train rows (a stratified, seeded sample; see above)."""


def probe_rows(labels: np.ndarray, rows: int = TRAIN_ROWS, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``rows`` rows of ``labels`` ``[N]``, stratified by label and seeded (all of
    them when there are no more); the carve-out rule of every split in bogc (``carve_validation``)."""
    from bogc_cli.data.cache import carve_validation

    n = len(labels)
    if n <= rows:
        return np.arange(n)
    return carve_validation(labels, rows / n, seed)[1]


@dataclass
class ProbeResult:
    """``accuracy``: test accuracy of the chosen classifier; ``val_accuracy``: its validation accuracy;
    ``C``: the chosen strength; ``val_by_C``: validation accuracy of every ``C`` tried."""

    accuracy: float
    val_accuracy: float
    C: float
    val_by_C: dict[float, float]


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], grid: tuple[float, ...] = C_GRID,
                 seed: int = 0) -> ProbeResult:
    """Fit a logistic regression on ``train`` = (features ``[N, d]``, labels ``[N]``) for each ``C`` of
    ``grid``, keep the best on ``val``, score it on ``test``.

    Raises ValueError when a split is empty or train holds a single class."""
    # imported here, not with the module: scikit-learn takes about a second to import, which the commands
    # that load a run without fitting probes (``bogc missing-modality``) need not pay
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = train, val, test
    if min(len(y_tr), len(y_va), len(y_te)) == 0:
        raise ValueError("linear probe: every split needs at least one row")
    if np.unique(y_tr).size < 2:
        raise ValueError("linear probe: the train split holds a single class")
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = (scaler.transform(x) for x in (x_tr, x_va, x_te))
    # one solver warm-started along the grid (strong to weak regularisation): each fit starts from the
    # last solution, which converges in fewer iterations to the same optimum (the problem is convex)
    clf = LogisticRegression(max_iter=MAX_ITER, random_state=seed, warm_start=True)
    best_val, by_c, chosen = -1.0, {}, None
    for c in sorted(grid):
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a weak C may stop at max_iter; still a probe
            clf.fit(x_tr, y_tr)
        val = float((clf.predict(x_va) == y_va).mean())
        by_c[c] = val
        if val > best_val:
            best_val, chosen = val, (c, float((clf.predict(x_te) == y_te).mean()))
    return ProbeResult(chosen[1], best_val, chosen[0], by_c)


def probe_block(results: dict[str, ProbeResult], train_rows: int) -> dict:
    """eval.json's ``linear_probe`` block from ``{modality: ProbeResult}`` and the train rows fitted on."""
    return {"accuracy": {m: r.accuracy for m, r in results.items()},
            "val_accuracy": {m: r.val_accuracy for m, r in results.items()},
            "C": {m: r.C for m, r in results.items()},
            "C_grid": list(C_GRID), "train_rows": train_rows,
            "solver": "sklearn LogisticRegression (lbfgs, multinomial), standardised features"}


__all__ = ["C_GRID", "TRAIN_ROWS", "ProbeResult", "linear_probe", "probe_block", "probe_rows"]
