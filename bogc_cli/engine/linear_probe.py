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
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Inverse L2 regularisation strengths tried; the one with the best validation accuracy is kept."""

MAX_ITER = 1000


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
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = train, val, test
    if min(len(y_tr), len(y_va), len(y_te)) == 0:
        raise ValueError("linear probe: every split needs at least one row")
    if np.unique(y_tr).size < 2:
        raise ValueError("linear probe: the train split holds a single class")
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va, x_te = (scaler.transform(x) for x in (x_tr, x_va, x_te))
    best, best_val, by_c = None, -1.0, {}
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a weak C may stop at max_iter; still a probe
            clf.fit(x_tr, y_tr)
        val = float((clf.predict(x_va) == y_va).mean())
        by_c[c] = val
        if val > best_val:
            best, best_val = (c, clf), val
    c, clf = best
    return ProbeResult(float((clf.predict(x_te) == y_te).mean()), best_val, c, by_c)


def probe_block(results: dict[str, ProbeResult]) -> dict:
    """eval.json's ``linear_probe`` block from ``{modality: ProbeResult}``."""
    return {"accuracy": {m: r.accuracy for m, r in results.items()},
            "val_accuracy": {m: r.val_accuracy for m, r in results.items()},
            "C": {m: r.C for m, r in results.items()},
            "C_grid": list(C_GRID), "solver": "sklearn LogisticRegression (lbfgs, multinomial), standardised features"}


__all__ = ["C_GRID", "ProbeResult", "linear_probe", "probe_block"]
