"""Figures that compare methods on one dataset (written by ``bogc report``, hence by ``bogc reproduce``):

* ``compare_missing_<dataset>``: test accuracy vs missing rate, one panel per missing modality, one
  line per method (mean over seeds, band = ± std);
* ``compare_unimodal_<dataset>``: each modality head's validation accuracy over training, one panel
  per modality, one line per method -- the imbalance picture (the weak modality's head lags);
* ``bogc_uncertainty_<dataset>``: BOGC's fused uncertainty per source over training (mean over seeds).
"""

from __future__ import annotations

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


def _method_panels(frame: pd.DataFrame, panel: str, x: str, title: str, panel_title, xlabel: str, ylabel: str,
                   path: Path, band: bool = False) -> list[Path]:
    """One panel per value of ``frame[panel]``, one line per method of ``frame["mean"]`` against
    ``frame[x]`` (with a ± ``std`` band when ``band``); saved as ``path`` (PNG) and PDF."""
    panels = sorted(frame[panel].unique())
    methods = sorted(frame["method"].unique(), key=method_sort_key)
    color = _colors(methods)
    fig, axes = _panels(len(panels), title)
    for ax, value in zip(axes, panels):
        for method in methods:
            part = frame[(frame[panel] == value) & (frame["method"] == method)].sort_values(x)
            if part.empty:
                continue
            ax.plot(part[x], part["mean"], marker="o", ms=3, label=method, color=color[method])
            if band:
                spread = part["std"].fillna(0)
                ax.fill_between(part[x], part["mean"] - spread, part["mean"] + spread, color=color[method],
                                alpha=0.12, lw=0)
        ax.set_title(panel_title(value))
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    _finish(fig, axes, axes[0])
    return save_figure(fig, path)


def plot_missing_comparison(missing: pd.DataFrame, dataset: str, out_dir: Path) -> list[Path]:
    """Accuracy vs missing rate for every method of ``dataset`` (rows of ``find_missing``)."""
    stats = missing_rate_stats(missing[missing["dataset"] == dataset])
    if stats.empty or stats["method"].nunique() < 2:
        return []
    return _method_panels(stats, "missing", "rate", f"{dataset}: test accuracy with a modality missing",
                          lambda m: f"{m} missing", "missing rate", "test accuracy",
                          out_dir / f"compare_missing_{slug(dataset)}.png", band=True)


def _read_metrics(runs: pd.DataFrame, warnings: list[str]) -> list[tuple[str, int, pd.DataFrame]]:
    """``(method, seed, metrics)`` of every run whose ``metrics.jsonl`` can be read."""
    out = []
    for row in runs.itertuples():
        path = Path(row.run_dir) / "metrics.jsonl"
        if not path.is_file():
            continue
        try:
            out.append((row.method, row.seed, read_metrics(path)))
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path} in the comparison figures: {exc}")
    return out


def _curves(metrics: list[tuple[str, int, pd.DataFrame]], prefix: str) -> pd.DataFrame:
    """Columns ``method, modality, epoch, mean``: the ``<prefix><modality>`` values by epoch, averaged
    over seeds."""
    frames = []
    for method, seed, frame in metrics:
        cols = [c for c in frame.columns if c.startswith(prefix)]
        if cols:
            long = frame[["epoch", *cols]].melt(id_vars="epoch", var_name="modality", value_name="mean")
            frames.append(long.assign(modality=long["modality"].str.removeprefix(prefix), method=method, seed=seed))
    if not frames:
        return pd.DataFrame(columns=["method", "modality", "epoch", "mean"])
    return pd.concat(frames, ignore_index=True).groupby(["method", "modality", "epoch"], as_index=False)["mean"].mean()


def write_comparison_plots(runs: pd.DataFrame, missing: pd.DataFrame, out_dir: Path, warnings: list[str]) -> list[Path]:
    """Every comparison figure for every dataset in ``runs`` (those without enough data are skipped)."""
    paths: list[Path] = []
    for dataset in sorted(runs["dataset"].unique()):
        if not missing.empty:
            paths += plot_missing_comparison(missing, dataset, out_dir)
        mine = runs[(runs["dataset"] == dataset) & ~runs["method"].str.startswith("unimodal-")]  # one head trained
        metrics = _read_metrics(mine, warnings)  # once, for both figures
        heads = _curves(metrics, VAL_UNIMODAL_PREFIX)
        if heads["method"].nunique() >= 2:
            paths += _method_panels(heads, "modality", "epoch",
                                    f"{dataset}: each modality head's validation accuracy over training", str, "epoch",
                                    "validation accuracy of the head", out_dir / f"compare_unimodal_{slug(dataset)}.png")
        uncertainty = _curves(metrics, UNCERTAINTY_PREFIX)
        if not uncertainty.empty:
            paths += _method_panels(uncertainty, "modality", "epoch",
                                    f"{dataset}: BOGC's fused uncertainty per source over training", str, "epoch",
                                    "uncertainty", out_dir / f"bogc_uncertainty_{slug(dataset)}.png")
    return paths
