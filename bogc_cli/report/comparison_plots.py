"""Figures that compare methods on one dataset (written by ``bogc report``, hence by ``bogc reproduce``):

* ``compare_missing_<dataset>``: test accuracy vs missing rate, one panel per missing modality, one
  line per method (and fill, where several were evaluated; mean over seeds, band = ± std);
* ``compare_unimodal_<dataset>``: each modality head's validation accuracy over training, one panel
  per modality, one line per method -- the imbalance picture (the weak modality's head lags);
* ``bogc_uncertainty_<dataset>``: BOGC's fused uncertainty per source over training;
* ``compare_conflict_<dataset>``: the cosine between the fusion loss's and each modality loss's gradient
  on that modality's encoder over training (engine/conflict.py), one panel per modality, one line per
  method.

Curves over training are the mean over seeds with a ± std band, points marked, epochs on integer
ticks. With several experiments in the tree each gets its own figures (``compare_missing_<experiment>_
<dataset>`` ...): runs of different experiments (another epoch count, another recipe) are never averaged.
Likewise runs of different protocols (the recipe key ``protocol``, as the tables keep them apart): where
an experiment holds several, each protocol gets its own figures (names ending in ``_<protocol>``, titles
naming it), so no figure puts an as-published method beside a common one.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .aggregate import PROTOCOL
from .plots import (VAL_UNIMODAL_PREFIX, epoch_axis, hollow_where_fewer, marked, missing_rate_stats, rate_axis,
                    read_metrics, save_figure, seeds_note, spread)
from .tables import method_sort_key, slug

UNCERTAINTY_PREFIX = "method.bogc.uncertainty."
CONFLICT_PREFIX = "conflict.cos."  # engine/conflict.py


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
                   path: Path) -> list[Path]:
    """One panel per value of ``frame[panel]``, one line per method of ``frame["mean"]`` against
    ``frame[x]`` (``x`` is ``epoch`` or ``rate``), with a ± ``std`` band where ``std`` is known; the
    seed count ``n`` is noted. Saved as ``path`` (PNG) and PDF."""
    panels = sorted(frame[panel].unique())
    methods = sorted(frame["method"].unique(), key=method_sort_key)
    color = _colors(methods)
    fig, axes = _panels(len(panels), title)
    for ax, value in zip(axes, panels):
        for method in methods:
            part = frame[(frame[panel] == value) & (frame["method"] == method)].sort_values(x)
            if part.empty:
                continue
            ax.plot(part[x], part["mean"], label=method, color=color[method], **marked(len(part)))
            spread(ax, part[x], part["mean"], part["std"], color[method], alpha=0.12)
            hollow_where_fewer(ax, part[x], part["mean"], part["n"], int(frame["n"].max()), color[method])
        ax.set_title(panel_title(value))
        ax.set_xlabel(xlabel)
        (epoch_axis if x == "epoch" else rate_axis)(ax, frame[x])
    axes[0].set_ylabel(ylabel)
    note = seeds_note(frame["n"])
    if note:
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize="x-small", color="grey")
    _finish(fig, axes, axes[0])
    return save_figure(fig, path)


def plot_missing_comparison(missing: pd.DataFrame, dataset: str, out_dir: Path, name: str | None = None,
                            label: str | None = None) -> list[Path]:
    """Accuracy vs missing rate for every method of ``dataset`` (rows of ``find_missing``); a line per
    method and fill where several fills were evaluated. ``name``: the file name's part after
    ``compare_missing_`` (default: ``dataset``); ``label``: the dataset as the title names it."""
    stats = missing_rate_stats(missing[missing["dataset"] == dataset])
    if "fill" in stats and stats["fill"].nunique() > 1:
        stats = stats.assign(method=stats["method"] + " (" + stats["fill"] + ")")
    if stats.empty or stats["method"].nunique() < 2:
        return []
    return _method_panels(stats, "missing", "rate", f"{label or dataset}: test accuracy with a modality missing",
                          lambda m: f"{m} missing", "missing rate", "test accuracy",
                          out_dir / f"compare_missing_{name or slug(dataset)}.png")


def _read_metrics(runs: pd.DataFrame, warnings: list[str]) -> list[tuple[str, int, pd.DataFrame]]:
    """``(method, seed, metrics)`` of every run whose ``metrics.jsonl`` can be read."""
    out = []
    for row in runs.itertuples():
        path = Path(row.run_dir) / "metrics.jsonl"
        if not path.is_file():
            continue
        try:
            out.append((row.method, row.seed, read_metrics(path, warnings)))
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path}: {exc}")
    return out


def _curves(metrics: list[tuple[str, int, pd.DataFrame]], prefix: str) -> pd.DataFrame:
    """Columns ``method, modality, epoch, mean, std, n``: the ``<prefix><modality>`` values by epoch over seeds."""
    frames = []
    for method, seed, frame in metrics:
        cols = [c for c in frame.columns if c.startswith(prefix)]
        if cols:
            long = frame[["epoch", *cols]].melt(id_vars="epoch", var_name="modality", value_name="value")
            frames.append(long.assign(modality=long["modality"].str.removeprefix(prefix), method=method, seed=seed))
    if not frames:
        return pd.DataFrame(columns=["method", "modality", "epoch", "mean", "std", "n"])
    long = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    return long.groupby(["method", "modality", "epoch"], as_index=False)["value"].agg(
        mean="mean", std="std", n="count")


def figure_groups(runs: pd.DataFrame):
    """``(experiment, dataset, name, label, group)`` for every (experiment, protocol, dataset) of ``runs``:
    ``name`` is the figure file's suffix, ``label`` the dataset as titles name it; both carry the experiment
    when the tree holds several, and the protocol when the experiment holds several (runs of different
    experiments or protocols are never averaged or drawn side by side). ``runs`` from ``find_runs``."""
    several = runs["experiment"].nunique() > 1
    protocols = runs.groupby("experiment")[PROTOCOL].nunique()
    for (experiment, protocol, dataset), group in runs.groupby(["experiment", PROTOCOL, "dataset"], sort=True):
        apart = protocols[experiment] > 1  # this experiment's figures are split by protocol
        name = "_".join(slug(p) for p in ([experiment] if several else []) + [dataset] + ([protocol] if apart else []))
        label = (f"[{experiment}] {dataset}" if several else dataset) + (f" ({protocol})" if apart else "")
        yield experiment, dataset, name, label, group


def write_comparison_plots(runs: pd.DataFrame, missing: pd.DataFrame, out_dir: Path, warnings: list[str]) -> list[Path]:
    """Every comparison figure for every group of :func:`figure_groups` (those without enough data are
    skipped)."""
    paths: list[Path] = []
    for experiment, dataset, name, label, group in figure_groups(runs):
        if not missing.empty:
            rows = missing[missing["run_dir"].isin(group["run_dir"])]  # this group's runs only
            paths += plot_missing_comparison(rows, dataset, out_dir, name, label)
        mine = group[~group["method"].str.startswith("unimodal-")]  # one head trained
        metrics = _read_metrics(mine, warnings)  # once, for both figures
        heads = _curves(metrics, VAL_UNIMODAL_PREFIX)
        if heads["method"].nunique() >= 2:
            paths += _method_panels(heads, "modality", "epoch",
                                    f"{label}: each modality head's validation accuracy over training", str, "epoch",
                                    "validation accuracy of the head", out_dir / f"compare_unimodal_{name}.png")
        uncertainty = _curves(metrics, UNCERTAINTY_PREFIX)
        if not uncertainty.empty:
            paths += _method_panels(uncertainty, "modality", "epoch",
                                    f"{label}: BOGC's fused uncertainty per source over training", str, "epoch",
                                    "uncertainty", out_dir / f"bogc_uncertainty_{name}.png")
        conflict = _curves(metrics, CONFLICT_PREFIX)  # epochs without a sample have no value (dropped)
        if not conflict.empty:
            paths += _method_panels(conflict, "modality", "epoch",
                                    f"{label}: gradient conflict on each encoder over training", str, "epoch",
                                    "cos(fusion-loss, modality-loss gradient)",
                                    out_dir / f"compare_conflict_{name}.png")
    return paths
