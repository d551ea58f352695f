"""The metrics of each task type, from a head's outputs on a split (NumPy, float32, CPU).

classification (``classification_metrics``): accuracy, macro-F1, per-class accuracy.

multilabel (``multilabel_metrics``), with ``p = sigmoid(logit)`` and a label predicted when ``p > 0.5``
(torchmetrics' and most MM-IMDB code's threshold rule):

- ``micro_f1``: F1 of the true/false positives and negatives pooled over all labels and rows;
- ``macro_f1``: the mean of each label's F1 (a label never predicted nor present counts 0);
- ``weighted_f1``: each label's F1 weighted by its positives;
- ``samples_f1``: the mean over rows of each row's F1 (a row with no label and no prediction counts 0);
- ``map``: macro average precision, the mean over labels of scikit-learn's ``average_precision_score`` of
  ``p`` (step-wise area under the precision-recall curve), over the labels with at least one positive in
  the split (a label without one has no defined precision-recall curve; NaN when no label has one);
- ``subset_accuracy``: rows with every label right.

The F1 figures are scikit-learn's ``f1_score`` (``zero_division=0``).

regression (``regression_metrics``), CMU-MOSI/MOSEI's standard set as MMSA's
``__eval_mosei_regression`` (thuiar/MMSA ``src/MMSA/utils/metricsTop.py``) and MulT's
``eval_mosei_senti`` (yaohungt/Multimodal-Transformer ``src/eval_metrics.py``) compute it, with ``y`` the
targets and ``ŷ`` the predictions ``[N]``:

- ``mae``: mean ``|ŷ - y|``; ``corr``: Pearson's correlation of ``ŷ`` and ``y`` (``np.corrcoef``; NaN when
  either is constant);
- ``acc2_has0`` / ``f1_has0``: negative vs non-negative (``>= 0``) over all rows: accuracy and weighted F1
  (MMSA's ``Has0_acc_2``, ``Has0_F1_score``);
- ``acc2_non0`` / ``f1_non0``: negative vs positive (``> 0``) over the rows whose target is not 0: accuracy
  and weighted F1 (MMSA's ``Non0_acc_2``, ``Non0_F1_score``; MulT's ``exclude_zero=True``);
- ``acc7``: both clipped to ``[-3, 3]`` and rounded (``np.round``: halves to even), the fraction equal.
"""

from __future__ import annotations

import numpy as np


def _sklearn():
    """scikit-learn's metrics, imported when first needed (it takes as long to import as torch)."""
    from sklearn import metrics

    return metrics


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def classification_metrics(labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> dict:
    """``labels`` ``[N]`` int, ``logits`` ``[N, C]`` -> accuracy, macro_f1 (over all classes, scikit-learn's
    ``f1_score``, ``zero_division=0``), per-class accuracy (recall), n."""
    pred = np.asarray(logits).argmax(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        sel = labels == k
        per_class[name] = float((pred[sel] == k).mean()) if sel.any() else float("nan")
    return {
        "n": int(labels.shape[0]),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(_sklearn().f1_score(labels, pred, labels=list(range(len(classes))), average="macro",
                                              zero_division=0)),
        "per_class_accuracy": per_class,
    }


def multilabel_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """``labels`` ``[N, C]`` 0/1, ``logits`` ``[N, C]`` -> the figures of the module docstring, and ``n``."""
    sk = _sklearn()
    y = np.asarray(labels).astype(np.int64)
    p = sigmoid(logits)
    pred = (p > 0.5).astype(np.int64)
    f1 = {avg: float(sk.f1_score(y, pred, average=avg, zero_division=0))
          for avg in ("micro", "macro", "weighted", "samples")}
    present = y.sum(axis=0) > 0
    ap = [float(sk.average_precision_score(y[:, k], p[:, k])) for k in np.flatnonzero(present)]
    return {"n": int(y.shape[0]), "micro_f1": f1["micro"], "macro_f1": f1["macro"], "weighted_f1": f1["weighted"],
            "samples_f1": f1["samples"], "map": float(np.mean(ap)) if ap else float("nan"),
            "subset_accuracy": float((pred == y).all(axis=1).mean()) if len(y) else float("nan")}


def regression_metrics(labels: np.ndarray, outputs: np.ndarray) -> dict:
    """``labels`` ``[N]`` float, ``outputs`` ``[N]`` or ``[N, 1]`` -> the figures of the module docstring, and ``n``."""
    sk = _sklearn()
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    yhat = np.asarray(outputs, dtype=np.float64).reshape(len(y), -1)[:, 0]
    constant = len(y) < 2 or np.ptp(y) == 0 or np.ptp(yhat) == 0
    corr = float("nan") if constant else float(np.corrcoef(yhat, y)[0, 1])
    has0_y, has0_p = y >= 0, yhat >= 0
    non0 = y != 0
    non0_y, non0_p = y[non0] > 0, yhat[non0] > 0
    acc7 = np.round(np.clip(yhat, -3.0, 3.0)) == np.round(np.clip(y, -3.0, 3.0))
    return {
        "n": int(len(y)),
        "mae": float(np.mean(np.abs(yhat - y))),
        "corr": corr,
        "acc2_has0": float(sk.accuracy_score(has0_y, has0_p)),
        "f1_has0": float(sk.f1_score(has0_y, has0_p, average="weighted", zero_division=0)),
        "acc2_non0": float(sk.accuracy_score(non0_y, non0_p)) if non0.any() else float("nan"),
        "f1_non0": float(sk.f1_score(non0_y, non0_p, average="weighted", zero_division=0)) if non0.any()
        else float("nan"),
        "acc7": float(acc7.mean()),
    }


def task_metrics(task: str, labels: np.ndarray, outputs: np.ndarray, classes: list[str]) -> dict:
    """The metrics of ``task`` for one head's ``outputs`` on a split."""
    if task == "multilabel":
        return multilabel_metrics(labels, outputs)
    if task == "regression":
        return regression_metrics(labels, outputs)
    return classification_metrics(labels, outputs, classes)


def head_score(task: str, metric: str, labels: np.ndarray, outputs: np.ndarray, classes: list[str]) -> float:
    """One metric of ``task`` for one head (the unimodal heads' columns, missing-modality curves)."""
    if task == "classification" and metric == "accuracy":
        return float((np.asarray(outputs).argmax(1) == labels).mean())
    return float(task_metrics(task, labels, outputs, classes)[metric])


#: The figures the tables show per task (beside the selection metric, which is always shown).
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "multilabel": ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "map"),
    "regression": ("mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7"),
}

METRIC_TITLES = {
    "accuracy": "Accuracy", "macro_f1": "Macro-F1", "micro_f1": "Micro-F1", "weighted_f1": "Weighted-F1",
    "samples_f1": "Samples-F1", "map": "mAP", "mae": "MAE", "corr": "Corr", "acc2_has0": "Acc-2 (neg/non-neg)",
    "acc2_non0": "Acc-2 (neg/pos, non-zero)", "f1_has0": "F1 (neg/non-neg)", "f1_non0": "F1 (neg/pos, non-zero)",
    "acc7": "Acc-7",
}

__all__ = ["METRIC_TITLES", "TABLE_METRICS", "classification_metrics", "head_score", "multilabel_metrics", "regression_metrics", "sigmoid",
           "task_metrics"]
