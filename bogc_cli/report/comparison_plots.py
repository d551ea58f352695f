"""Figures that compare methods on one dataset (written by ``bogc report``, hence by ``bogc reproduce``):

* ``compare_missing_<dataset>``: test accuracy vs missing rate, one panel per missing modality, one
  line per method (mean over seeds, band = ± std);
* ``compare_unimodal_<dataset>``: each modality head's validation accuracy over training, one panel
  per modality, one line per method -- the imbalance picture (the weak modality's head lags);
* ``bogc_uncertainty_<dataset>``: BOGC's fused uncertainty per source over training (mean over seeds).
"""

from __future__ import annotations

import warnings as python_warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .plots import VAL_UNIMODAL_PREFIX, missing_rate_stats, read_metrics, save_figure
from .tables import method_sort_key, slug

UNCERTAINTY_PREFIX = "method.bogc.uncertainty."


def _colors(methods: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["black", "gold", "navy", "lime", "maroon"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def _panels(n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1.8, 3.6), squeeze=False, sharey=True)
    fig.suptitle(title)
    return fig, axes[0]


def _finish(fig, axes, handles_from) -> None:
    handles, labels = handles_from.get_legend_handles_labels()
    for ax in axes:
        ax.grid(alpha=0.3)
    right = 1 - 1.6 / fig.get_figwidth()  # room for the legend beside the panels
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(right, 0.5), fontsize="small", frameon=False)


def plot_missing_comparison(missing: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    """Accuracy vs missing rate for every method of ``dataset`` (rows of ``find_missing``)."""
    stats = missing_rate_stats(missing[missing["dataset"] == dataset])
    if stats.empty or stats["method"].nunique() < 2:
        return []
    modalities = sorted(stats["missing"].unique())
    methods = sorted(stats["method"].unique(), key=method_sort_key)
    color = _colors(methods)
    fig, axes = _panels(len(modalities), f"{dataset}: test accuracy with a modality missing")
    for ax, modality in zip(axes, modalities):
        for method in methods:
            part = stats[(stats["missing"] == modality) & (stats["method"] == method)].sort_values("rate")
            if part.empty:
                continue
            ax.plot(part["rate"], part["mean"], marker="o", ms=3, label=method, color=color[method])
            ax.fill_between(part["rate"], part["mean"] - part["std"].fillna(0), part["mean"] + part["std"].fillna(0),
                            color=color[method], alpha=0.12, lw=0)
        ax.set_title(f"{modality} missing")
        ax.set_xlabel("missing rate")
    axes[0].set_ylabel("test accuracy")
    _finish(fig, axes, axes[0])
    return save_figure(fig, out_dir / f"compare_missing_{slug(dataset)}.png")


def _curves(runs: pd.DataFrame, prefix: str, warnings: list[str]) -> pd.DataFrame:
    """Long frame ``method, seed, epoch, modality, value`` of the ``<prefix><modality>`` columns."""
    frames = []
    for row in runs.itertuples():
        path = Path(row.run_dir) / "metrics.jsonl"
        if not path.is_file():
            continue
        try:
            metrics = read_metrics(path)
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path} in the comparison figures: {exc}")
            continue
        cols = [c for c in metrics.columns if c.startswith(prefix)]
        if not cols:
            continue
        long = metrics[["epoch", *cols]].melt(id_vars="epoch", var_name="modality", value_name="value")
        long["modality"] = long["modality"].str.removeprefix(prefix)
        frames.append(long.assign(method=row.method, seed=row.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_curves_comparison(runs: pd.DataFrame, dataset: str, out_dir: Path, prefix: str, name: str, title: str,
                           ylabel: str, warnings: list[str], min_methods: int = 2) -> list[Path]:
    """One panel per modality, one line per method: the mean over seeds of ``<prefix><modality>`` by epoch."""
    mine = runs[(runs["dataset"] == dataset) & ~runs["method"].str.startswith("unimodal-")]  # one head trained
    curves = _curves(mine, prefix, warnings)
    if curves.empty or curves["method"].nunique() < min_methods:
        return []
    curves = curves.groupby(["method", "modality", "epoch"], as_index=False)["value"].mean()
    modalities = sorted(curves["modality"].unique())
    methods = sorted(curves["method"].unique(), key=method_sort_key)
    color = _colors(methods)
    fig, axes = _panels(len(modalities), f"{dataset}: {title}")
    for ax, modality in zip(axes, modalities):
        for method in methods:
            part = curves[(curves["modality"] == modality) & (curves["method"] == method)]
            if not part.empty:
                ax.plot(part["epoch"], part["value"], marker=".", label=method, color=color[method])
        ax.set_title(modality)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel(ylabel)
    _finish(fig, axes, axes[0])
    with python_warnings.catch_warnings():
        python_warnings.simplefilter("ignore")
        return save_figure(fig, out_dir / f"{name}_{slug(dataset)}.png")


def write_comparison_plots(runs: pd.DataFrame, missing: pd.DataFrame, out_dir: Path, warnings: list[str]) -> list[Path]:
    """Every comparison figure for every dataset in ``runs`` (those without enough data are skipped)."""
    paths: list[Path] = []
    for dataset in sorted(runs["dataset"].unique()):
        if not missing.empty:
            paths += plot_missing_comparison(missing, dataset, out_dir)
        paths += plot_curves_comparison(runs, dataset, out_dir, VAL_UNIMODAL_PREFIX, "compare_unimodal",
                                        "each modality head's validation accuracy over training",
                                        "validation accuracy of the head", warnings)
        paths += plot_curves_comparison(runs, dataset, out_dir, UNCERTAINTY_PREFIX, "bogc_uncertainty",
                                        "BOGC's fused uncertainty per source over training", "uncertainty",
                                        warnings, min_methods=1)
    return paths
