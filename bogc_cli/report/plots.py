"""Figures from results: accuracy vs missing-modality rate, and training curves.

Matplotlib runs on the non-interactive Agg backend (no display needed). Every figure is written
atomically as PNG, with the same figure as a vector PDF beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display, safe on servers and in tests

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bogc_cli.atomic import atomic_path  # noqa: E402

VAL_UNIMODAL_PREFIX = "val_unimodal_accuracy."


def save_figure(fig: Figure, path_png: str | os.PathLike, pdf: bool = True) -> list[Path]:
    """Save ``fig`` to ``path_png`` (and a ``.pdf`` beside it) atomically, then close it."""
    path_png = Path(path_png)
    targets = [(path_png, "png")] + ([(path_png.with_suffix(".pdf"), "pdf")] if pdf else [])
    try:
        for path, fmt in targets:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150)
    finally:
        plt.close(fig)
    return [path for path, _ in targets]


def missing_rate_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and seed count of accuracy per (method, missing modality, rate).

    Only single-modality rows are kept (``missing`` without ``"+"``). Repeated rows of one run
    (same ``run_dir``/seed, e.g. several masking draws) are averaged first.
    """
    single = df[~df["missing"].astype(str).str.contains("+", regex=False)]
    run_key = "run_dir" if "run_dir" in single else "seed"
    keys = [k for k in ("method", "missing", "rate") if k in single]
    per_run = single.groupby([*keys, run_key], as_index=False)["accuracy"].mean()
    stats = per_run.groupby(keys)["accuracy"].agg(mean="mean", std="std", n="count")
    return stats.reset_index()


def plot_missing_modality(
    df: pd.DataFrame, path_png: str | os.PathLike, title: str
) -> list[Path]:
    """Plot test accuracy against missing rate, one line per missing modality.

    Args:
        df: rows of ``missing_modality.csv`` (as from :func:`find_missing`), with columns
            ``missing, rate, accuracy`` and ``seed`` or ``run_dir``; rows removing several
            modalities are ignored. With several methods in ``df`` lines are labelled
            ``method / modality``.
        path_png: where to write the PNG; a PDF of the same figure goes beside it.
        title: figure title.

    Returns the written paths. Lines show the mean over seeds, with a shaded ±1 std band where
    there are several seeds.
    """
    stats = missing_rate_stats(df)
    several_methods = "method" in stats and stats["method"].nunique() > 1
    line_keys = ["method", "missing"] if several_methods else ["missing"]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for key, line in stats.groupby(line_keys, sort=True):
        line = line.sort_values("rate")
        label = " / ".join(map(str, key))
        (drawn,) = ax.plot(line["rate"], line["mean"], marker="o", label=label)
        band = line["std"].notna()
        if band.any():
            lo = (line["mean"] - line["std"])[band]
            hi = (line["mean"] + line["std"])[band]
            ax.fill_between(line["rate"][band], lo, hi, color=drawn.get_color(), alpha=0.2)
    n_seeds = int(stats["n"].max()) if not stats.empty else 0
    ax.set(xlabel="missing rate", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(title="missing modality", fontsize="small")
    if n_seeds > 1:
        ax.text(0.99, 0.01, f"mean ± std over {n_seeds} seeds", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="x-small", color="grey")
    return save_figure(fig, path_png)


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Read one ``metrics.jsonl``; nested dicts are flattened to ``key.sub`` columns.

    Raises:
        ValueError: a line is not valid JSON or the file has no ``epoch`` column.
        OSError: the file cannot be read.
    """
    frame = pd.json_normalize(pd.read_json(path, lines=True).to_dict("records"))
    if "epoch" not in frame:
        raise ValueError("no 'epoch' key in its lines")
    return frame.sort_values("epoch")


def plot_training_curves(
    metrics_jsonl_paths: Sequence[str | os.PathLike],
    path_png: str | os.PathLike,
    title: str = "Validation accuracy",
    warnings: list[str] | None = None,
) -> list[Path]:
    """Plot validation accuracy per epoch, one line per ``metrics.jsonl`` (e.g. one per seed).

    Unimodal validation accuracies (keys ``val_unimodal_accuracy.<modality>``, flat or nested)
    are drawn dashed/dotted in the same colour. Lines are labelled by the run folder name
    (``seed<N>``). Unreadable files are skipped with a message in ``warnings``.

    Returns the written paths, or ``[]`` when no file had ``val_accuracy``.
    """
    warnings = [] if warnings is None else warnings
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    drawn_any = False
    for index, path in enumerate(metrics_jsonl_paths):
        try:
            frame = read_metrics(path)
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path}: {exc}")
            continue
        drawn_any |= _draw_run(ax, frame, Path(path).parent.name, f"C{index % 10}")
    if not drawn_any:
        plt.close(fig)
        return []
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path_png)


def _draw_run(ax: plt.Axes, frame: pd.DataFrame, label: str, color: str) -> bool:
    """Draw one run's fused (solid) and unimodal (dashed, dotted, ...) val accuracy."""
    if "val_accuracy" not in frame:
        return False
    ax.plot(frame["epoch"], frame["val_accuracy"], color=color, label=f"{label} fused")
    styles = ["--", ":", "-."]
    unimodal = sorted(c for c in frame.columns if c.startswith(VAL_UNIMODAL_PREFIX))
    for i, column in enumerate(unimodal):
        modality = column.removeprefix(VAL_UNIMODAL_PREFIX)
        ax.plot(frame["epoch"], frame[column], color=color, linestyle=styles[i % len(styles)],
                label=f"{label} {modality}")
    return True


def metrics_paths(run_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """The ``metrics.jsonl`` files that exist in ``run_dirs``."""
    return [p for p in (Path(d) / "metrics.jsonl" for d in run_dirs) if p.is_file()]


def plot_bogc_diagnostics(records: list[dict], path_png: str | os.PathLike, title: str = "BOGC diagnostics",
                          w_max: float | None = None) -> list[Path]:
    """BOGC over training: fused uncertainty per encoder, applied weight mean ± std per source, clipped share.

    ``records``: the per-epoch dicts of metrics.jsonl (keys ``method.bogc.*``). The weights are those applied
    (clipped to ``[0, w_max]``), so their band is drawn within ``[0, w_max]`` (``w_max``: the run's
    ``method.w_max``; None: only the lower bound 0), with ``w_max`` as a dashed line.
    """
    frame = pd.DataFrame(records)
    if frame.empty or "epoch" not in frame:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    epochs = frame["epoch"]
    for col in sorted(c for c in frame if c.startswith("method.bogc.uncertainty.")):
        axes[0].plot(epochs, frame[col], marker="o", label=col.rsplit(".", 1)[-1])
    axes[0].set(title="mean fused uncertainty u (per encoder)", xlabel="epoch", ylabel="u")
    high = w_max if w_max is not None else float("inf")
    for col in sorted(c for c in frame if c.startswith("method.bogc.weight_mean.")):
        source = col.split("weight_mean.", 1)[1]
        std = frame.get(f"method.bogc.weight_std.{source}", pd.Series(0.0, index=frame.index))
        line = axes[1].plot(epochs, frame[col], marker="o", label=source)[0]
        axes[1].fill_between(epochs, (frame[col] - std).clip(0, high), (frame[col] + std).clip(0, high), alpha=0.2,
                             color=line.get_color())
    if w_max is not None:
        axes[1].axhline(w_max, color="grey", linestyle="--", linewidth=1, label="w_max")
    axes[1].set(title="applied weights per source (mean ± std, within [0, w_max])", xlabel="epoch", ylabel="weight")
    if "method.bogc.clipped" in frame:
        axes[2].plot(epochs, frame["method.bogc.clipped"], marker="o", color="black")
    axes[2].set(title="fraction of weights clipped at w_max", xlabel="epoch", ylabel="fraction")
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title, fontsize=9)
    paths = save_figure(fig, path_png)
    plt.close(fig)
    return paths
