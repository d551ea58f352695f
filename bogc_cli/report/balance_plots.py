"""Figures of the balance metrics (engine/balance_eval.py):

* ``reliability.png`` in each run directory, and ``reliability_<dataset>`` in ``bogc report``'s plots
  (one panel per method, its seeds' bins pooled): accuracy of each confidence bin against its mean
  confidence, the gap to the diagonal shaded, the bins' share of rows below;
* ``contributions_<dataset>``: each method's Shapley contribution of every modality to test accuracy
  (bars, mean over seeds, ± std whiskers), with the imbalance degree over each group.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .plots import plt, save_figure
from .tables import method_sort_key


def pool_bins(blocks: list[dict]) -> dict:
    """One reliability diagram from several runs' bins (``calibration.reliability`` of each eval.json):
    counts added, accuracy and confidence averaged with the counts as weights."""
    count = np.sum([np.asarray(b["count"], dtype=float) for b in blocks], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = {key: np.nansum([np.nan_to_num(np.asarray(b[key], dtype=float)) * np.asarray(b["count"], dtype=float)
                                  for b in blocks], axis=0) / count for key in ("accuracy", "confidence")}
    return {"count": count.tolist(), "accuracy": pooled["accuracy"].tolist(),
            "confidence": pooled["confidence"].tolist()}


def plot_reliability(panels: dict[str, dict], path_png: str | os.PathLike, title: str, pdf: bool = True,
                     notes: dict[str, str] | None = None) -> list[Path]:
    """Reliability diagrams side by side, one per entry of ``panels`` (label -> a ``calibration`` block of
    eval.json, or a dict with its ``reliability`` bins and ``ece``). ``notes[label]`` replaces the ECE line
    shown in a panel (e.g. mean ± std over seeds). Saved as ``path_png`` (and a PDF beside it)."""
    labels = list(panels)
    n = len(labels)
    lines = max(len([t for t in (label, "ECE") if t]) for label in labels)  # panel title lines
    width, height = 3.4 * n + 0.6, 4.1 + 0.22 * lines
    # fixed margins (inches) instead of a layout engine: the figure is drawn at the end of every training
    # run, and constrained layout doubled its cost (about 0.2 s of 0.4 s on a loaded 2-core machine)
    fig, axes = plt.subplots(2, n, figsize=(width, height), squeeze=False, sharex=True, sharey="row",
                             gridspec_kw={"height_ratios": [3, 1], "hspace": 0.12, "wspace": 0.16})
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.25 / width, bottom=0.55 / height, top=1 - (0.45 + 0.22 * lines) / height)
    for i, label in enumerate(labels):
        block = panels[label]
        bins = block["reliability"]
        count = np.asarray(bins["count"], dtype=float)
        acc = np.asarray(bins["accuracy"], dtype=float)
        conf = np.asarray(bins["confidence"], dtype=float)
        k = len(count)
        edges = np.linspace(0, 1, k + 1)
        centers, width = (edges[:-1] + edges[1:]) / 2, 1 / k
        full = count > 0
        ax, hist = axes[0, i], axes[1, i]
        ax.bar(centers[full], acc[full], width=width, color="tab:blue", edgecolor="white", lw=0.5, label="accuracy")
        gap_lo, gap_hi = np.minimum(acc, conf), np.maximum(acc, conf)
        ax.bar(centers[full], (gap_hi - gap_lo)[full], bottom=gap_lo[full], width=width, facecolor="none",
               edgecolor="tab:red", hatch="///", lw=0.8, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="calibrated")
        text = (notes or {}).get(label, f"ECE {block['ece']:.3f}" if "ece" in block else "")
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.set_title("\n".join(t for t in (label, text) if t), fontsize="medium")
        ax.grid(alpha=0.3)
        share = count / count.sum() if count.sum() else count
        hist.bar(centers, share, width=width, color="grey", edgecolor="white", lw=0.5)
        hist.set(xlim=(0, 1), xlabel="confidence (max probability)")
        hist.grid(alpha=0.3)
        if i == 0:
            ax.set_ylabel("accuracy in the bin")
            hist.set_ylabel("share of rows")
            ax.legend(loc="lower right", fontsize="x-small")
        else:
            ax.tick_params(labelleft=False)
    fig.suptitle(title)
    return save_figure(fig, path_png, pdf=pdf)


def plot_contributions(stats: pd.DataFrame, imbalance: pd.DataFrame, path_png: str | os.PathLike,
                       title: str) -> list[Path]:
    """Grouped bars: one group per method, one bar per modality.

    ``stats``: columns ``method, modality, mean, std, n`` (Shapley contribution to test accuracy over
    seeds); ``imbalance``: ``method, mean, std, n`` (imbalance degree), written over each group."""
    methods = sorted(stats["method"].unique(), key=method_sort_key)
    modalities = sorted(stats["modality"].unique())
    width = 0.8 / max(len(modalities), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) * max(1, len(modalities)) / 2 + 2.5), 4),
                           layout="constrained")
    x = np.arange(len(methods))
    for j, modality in enumerate(modalities):
        part = stats[stats["modality"] == modality].set_index("method").reindex(methods)
        spread = part["std"] if part["std"].notna().any() else None  # one seed: no whiskers
        ax.bar(x + (j - (len(modalities) - 1) / 2) * width, part["mean"], width, yerr=spread, capsize=2,
               label=modality)
    top = stats["mean"].fillna(0) + stats["std"].fillna(0)
    ceiling = float(top.max()) if len(top) else 1.0
    imb = imbalance.set_index("method")
    for i, method in enumerate(methods):
        if method in imb.index and pd.notna(imb.loc[method, "mean"]):
            ax.text(i, ceiling * 1.04, f"imb {imb.loc[method, 'mean']:.2f}", ha="center", va="bottom",
                    fontsize="x-small")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, methods, rotation=30 if len(methods) > 4 else 0, ha="right" if len(methods) > 4 else "center")
    ax.set_ylim(top=ceiling * 1.15 if ceiling > 0 else None)
    n_seeds = int(stats["n"].max()) if len(stats) else 0
    seeds = f"\nmean ± std over {n_seeds} seeds; imb: imbalance degree" if n_seeds > 1 else "\nimb: imbalance degree"
    ax.set(ylabel="Shapley contribution to test accuracy")
    ax.set_title(title + seeds, fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="modality", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path_png)


def _read_calibration(run_dir: str, warnings: list[str]) -> dict | None:
    """The ``calibration`` block of a run's eval.json (None when it has none)."""
    import json

    path = Path(run_dir) / "eval.json"
    try:
        block = json.loads(path.read_text(encoding="utf-8")).get("calibration")
    except (OSError, ValueError) as exc:
        warnings.append(f"skipped {path} in the reliability figure: {exc}")
        return None
    return block if isinstance(block, dict) and "reliability" in block else None


def write_balance_plots(runs: pd.DataFrame, out_dir: Path, warnings: list[str]) -> list[Path]:
    """Per (experiment, dataset): ``contributions_<dataset>`` (when runs hold Shapley values) and
    ``reliability_<dataset>`` (one panel per method, its seeds' bins pooled; ECE as mean ± std over seeds).
    With several experiments in the tree the names carry the experiment, as the comparison figures'
    (``comparison_plots.figure_groups``, which also parts protocols): runs of different experiments or
    protocols are never pooled."""
    from .aggregate import mean_std
    from .comparison_plots import figure_groups

    paths: list[Path] = []
    prefix = "contribution.accuracy.shapley."
    for _, _, name, label, mine in figure_groups(runs):
        shap = [c for c in mine.columns if c.startswith(prefix) and mine[c].notna().any()]
        if shap:
            long = mine[["method", "seed", *shap]].melt(id_vars=["method", "seed"], var_name="modality",
                                                         value_name="value").dropna(subset=["value"])
            long["modality"] = long["modality"].str.removeprefix(prefix)
            stats = mean_std(long, "value", ["method"], ["modality"])
            imbalance = mean_std(mine, "contribution.accuracy.imbalance_degree", ["method"], []) \
                if "contribution.accuracy.imbalance_degree" in mine else pd.DataFrame(columns=["method", "mean"])
            paths += plot_contributions(stats, imbalance, out_dir / f"contributions_{name}.png",
                                        f"{label}: modality contributions (exact Shapley, test accuracy)")
        panels, notes = {}, {}
        for method in sorted(mine["method"].unique(), key=method_sort_key):
            blocks = [b for d in mine.loc[mine["method"] == method, "run_dir"]
                      if (b := _read_calibration(d, warnings)) is not None]
            if not blocks:
                continue
            ece = [b["ece"] for b in blocks]
            panels[method] = {"reliability": pool_bins([b["reliability"] for b in blocks])}
            notes[method] = (f"ECE {np.mean(ece):.3f} ± {np.std(ece, ddof=1):.3f} ({len(ece)} seeds)" if len(ece) > 1
                             else f"ECE {ece[0]:.3f}")
        if panels:
            paths += plot_reliability(panels, out_dir / f"reliability_{name}.png",
                                      f"{label}: reliability of the fused test prediction "
                                      "(15 bins; seeds pooled)", notes=notes)
    return paths


__all__ = ["plot_contributions", "plot_reliability", "pool_bins", "write_balance_plots"]
