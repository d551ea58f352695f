"""Tables of the balance metrics (engine/balance_eval.py), mean ± std over seeds, rows = methods:

* ``imbalance``: per dataset, each modality's exact Shapley contribution to test accuracy and the
  imbalance degree (columns ``<dataset>: <modality>``, ``<dataset>: imbalance``);
* ``imbalance_probability``: the same for the mean true-class probability; multilabel and regression
  runs: the same for their task's value functions (``imbalance_label_accuracy``, ...);
* ``probe``: linear-probe test accuracy of each frozen encoder (columns ``<dataset>/<modality>``);
* ``calibration``: ECE (15 bins), NLL and Brier score of the fused prediction per dataset;
* cost columns of the ``methods`` table (``cost_stats``): median step time in ms, peak memory in GB,
  parameters in millions and forward MFLOPs per sample.
"""

from __future__ import annotations

import pandas as pd

from .aggregate import IDENTITY, mean_std
from .tables import Table, _sort_stats

SHAPLEY = "contribution.{value}.shapley."
IMBALANCE = "contribution.{value}.imbalance_degree"
PROBE = "linear_probe.accuracy."
IMBALANCE_LABEL = "imbalance"


def _long(runs: pd.DataFrame, columns: dict[str, str], scale: float = 1.0) -> pd.DataFrame:
    """Columns ``*IDENTITY, column, value`` from ``runs``: ``columns`` maps a runs column to the label
    ``<dataset>: <label>`` it gets (``{dataset}`` in a label is filled per run)."""
    frames = []
    for source, label in columns.items():
        if source not in runs:
            continue
        part = runs[IDENTITY + [source]].rename(columns={source: "value"}).dropna(subset=["value"])
        frames.append(part.assign(column=part["dataset"] + label, value=part["value"] * scale))
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY, "column", "value"])
    return pd.concat(frames, ignore_index=True)


def _modalities(runs: pd.DataFrame, prefix: str) -> list[str]:
    return sorted(c.removeprefix(prefix) for c in runs.columns if c.startswith(prefix))


def _table(name: str, title: str, long: pd.DataFrame, order: list[str], best: bool = False) -> Table | None:
    stats = mean_std(long, "value", ["method"], ["column"])
    if stats.empty:
        return None
    present = set(stats["column"])
    return Table(name, title, _sort_stats(stats, ["method"], "column"), ["method"], "column", best=best,
                 order=[c for c in order if c in present])


def imbalance_table(runs: pd.DataFrame, value: str = "accuracy") -> Table | None:
    """Rows = methods; per dataset one column per modality (its Shapley contribution to ``value``) and the
    imbalance degree."""
    prefix = SHAPLEY.format(value=value)
    modalities = _modalities(runs, prefix)
    columns = {f"{prefix}{m}": f": {m}" for m in modalities}
    columns[IMBALANCE.format(value=value)] = f": {IMBALANCE_LABEL}"
    long = _long(runs, columns)
    order = [f"{d}{label}" for d in sorted(runs["dataset"].unique()) for label in columns.values()]
    what = VALUE_TITLES.get(value, value)
    title = (f"Exact Shapley contribution of each modality to {what} (missing modalities filled as each run's "
             "model.fill) and the imbalance degree")
    name = {"accuracy": "imbalance", "true_class_probability": "imbalance_probability"}.get(value,
                                                                                        f"imbalance_{value}")
    return _table(name, title, long, order)


#: What each value function of the contributions measures (engine/contribution.py VALUE_FUNCTIONS_BY_TASK).
VALUE_TITLES = {
    "accuracy": "test accuracy", "true_class_probability": "the mean true-class probability",
    "label_accuracy": "the fraction of labels right (multilabel runs)",
    "true_label_probability": "the mean probability of each label's true state (multilabel runs)",
    "negative_absolute_error": "minus the absolute error, v = -MAE (regression runs)",
    "sign_accuracy": "the sign accuracy, Acc-2 negative / non-negative (regression runs)",
}


def probe_table(runs: pd.DataFrame) -> Table | None:
    """Rows = methods, columns = ``<dataset>/<modality>``: linear-probe test accuracy."""
    modalities = _modalities(runs, PROBE)
    long = _long(runs, {f"{PROBE}{m}": f"/{m}" for m in modalities})
    order = [f"{d}/{m}" for d in sorted(runs["dataset"].unique()) for m in modalities]
    title = ("Linear-probe test accuracy of each frozen encoder (logistic regression on its features of at most "
             "1,000 train rows, C chosen on validation)")
    return _table("probe", title, long, order, best=True)


CALIBRATION = {"calibration.ece": ": ECE", "calibration.nll": ": NLL", "calibration.brier": ": Brier"}


def calibration_table(runs: pd.DataFrame) -> Table | None:
    """Rows = methods; per dataset ECE (15 equal-width bins), NLL and Brier score of the fused prediction."""
    long = _long(runs, CALIBRATION)
    order = [f"{d}{label}" for d in sorted(runs["dataset"].unique()) for label in CALIBRATION.values()]
    title = ("Calibration of the fused test prediction: ECE (15 equal-width bins), NLL (nats) and Brier score "
             "(lower is better)")
    return _table("calibration", title, long, order)


COST = {  # runs column -> (column label, scale)
    "step_time_ms_median": (" step ms", 1.0),
    "peak_memory_mb": (" peak GB", 1 / 1024),
    "parameters": (" params M", 1e-6),
    "forward_flops_per_sample": (" MFLOPs/sample", 1e-6),
}


def cost_stats(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The ``methods`` table's cost cells: ``method, column, mean, std, n`` and the labels' suffixes in order."""
    frames = [_long(runs, {source: label}, scale) for source, (label, scale) in COST.items()]
    long = pd.concat(frames, ignore_index=True)
    if long.empty:
        return pd.DataFrame(columns=["method", "column", "mean", "std", "n"]), []
    return mean_std(long, "value", ["method"], ["column"]), [label for label, _ in COST.values()]


def balance_tables(runs: pd.DataFrame) -> list[Table]:
    """Every balance table the runs have values for."""
    tables = [*(imbalance_table(runs, value) for value in VALUE_TITLES), probe_table(runs), calibration_table(runs)]
    return [t for t in tables if t is not None]


__all__ = ["balance_tables", "calibration_table", "cost_stats", "imbalance_table", "probe_table"]
