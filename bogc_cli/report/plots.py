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
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bogc_cli.atomic import atomic_path  # noqa: E402
from bogc_cli.report.aggregate import read_jsonl  # noqa: E402

VAL_UNIMODAL_PREFIX = "val_unimodal_accuracy."
CURVE_METRICS = ("val_accuracy", "val_micro_f1", "val_mae")
"""The validation figure a training curve shows: classification's, multilabel's, regression's selection metric."""
MAX_MARKERS = 30
"""Points marked per line: every point up to this many, else every k-th (a 1-point line stays visible)."""


def marked(n_points: int) -> dict:
    """``plot`` keyword arguments that mark a line's points: all of them, or about ``MAX_MARKERS`` on a long run."""
    return {"marker": "o", "ms": 3.5, "markevery": max(1, -(-n_points // MAX_MARKERS))}


def epoch_axis(ax: plt.Axes, epochs: Iterable[float]) -> None:
    """Integer epoch ticks (never 0.96 ... 1.04 around a 1-epoch run), and room on both sides of a
    single epoch."""
    values = sorted({float(e) for e in epochs if pd.notna(e)})
    if len(values) == 1:  # MaxNLocator falls back to fractions when fewer than 2 integers are in view
        ax.set_xlim(values[0] - 0.5, values[0] + 0.5)
        ax.set_xticks(values, [f"{values[0]:g}"])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def rate_axis(ax: plt.Axes, rates: Iterable[float]) -> None:
    """Missing rates always on [0, 1] (figures compare), ticked at the rates measured when there are few."""
    values = sorted({float(r) for r in rates if pd.notna(r)})
    ax.set_xlim(-0.04, 1.04)
    if 0 < len(values) <= 8:
        ax.set_xticks(values, [f"{r:g}" for r in values])


def spread(ax: plt.Axes, x, mean, std, color: str, alpha: float = 0.2,
           within: tuple[float, float] = (-np.inf, np.inf)) -> None:
    """A ± ``std`` band around ``mean`` (cut to ``within``: the values the quantity can take) over each
    stretch of consecutive points where ``std`` is known (NaN: a single seed there, no band); an error
    bar on a point whose neighbours have none, which a band could not show."""
    x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
    lo, hi = np.clip(mean - std, *within), np.clip(mean + std, *within)
    known = ~np.isnan(std) & ~np.isnan(mean)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], known.astype(int), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        part = slice(start, stop)
        if stop - start == 1:
            ax.errorbar(x[part], mean[part], yerr=[mean[part] - lo[part], hi[part] - mean[part]], fmt="none",
                        ecolor=color, alpha=0.7, capsize=4)
        else:
            ax.fill_between(x[part], lo[part], hi[part], color=color, alpha=alpha, lw=0)


def hollow_where_fewer(ax: plt.Axes, x, mean, n, most: int, color: str) -> None:
    """Draw the points that average fewer than ``most`` seeds as hollow markers (the note says so)."""
    x, mean, n = (np.asarray(v, dtype=float) for v in (x, mean, n))
    fewer = n < most
    if fewer.any():
        ax.plot(x[fewer], mean[fewer], linestyle="none", color=color, mfc="white", zorder=3,
                **{**marked(len(x)), "ms": 5})


def seeds_note(counts: Iterable[int], what: str = "seeds") -> str:
    """``mean ± std over 3 seeds``, or ``mean ± std over 3 seeds; hollow points: fewer`` where points differ
    (see :func:`hollow_where_fewer`)."""
    counts = [int(c) for c in counts]
    if not counts or max(counts) <= 1:
        return ""
    return f"mean ± std over {max(counts)} {what}" + ("" if min(counts) == max(counts) else "; hollow points: fewer")


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


def with_score(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (missing-modality rows) with its ``score`` (the run's selection metric) and ``metric`` filled in
    from ``accuracy`` where a row has none (rows of classification runs written before task types existed)."""
    if "accuracy" in df:
        score = df["score"].fillna(df["accuracy"]) if "score" in df else df["accuracy"]
    else:
        score = df["score"]
    metric = df["metric"].fillna("accuracy") if "metric" in df else pd.Series("accuracy", index=df.index)
    return df.assign(score=score, metric=metric.astype(str))


def score_label(df: pd.DataFrame) -> str:
    """The name of the metric the ``score`` of ``df``'s rows is ("accuracy", "micro_f1", "mae", or several)."""
    names = sorted(with_score(df)["metric"].unique()) if len(df) else ["accuracy"]
    return " / ".join(names)


def missing_rate_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and seed count of the score (the run's selection metric: accuracy for classification)
    per (method, missing modality, fill, rate).

    Only single-modality rows are kept (``missing`` without ``"+"``). Repeated rows of one run
    (same ``run_dir``/seed, e.g. several masking draws) are averaged first; fills are kept apart.
    """
    df = with_score(df)
    single = df[~df["missing"].astype(str).str.contains("+", regex=False)]
    if "fill" in single:
        single = single.assign(fill=single["fill"].fillna("").astype(str))
    run_key = "run_dir" if "run_dir" in single else "seed"
    keys = [k for k in ("method", "missing", "fill", "rate") if k in single]
    per_run = single.groupby([*keys, run_key], as_index=False)["score"].mean()
    stats = per_run.groupby(keys)["score"].agg(mean="mean", std="std", n="count")
    return stats.reset_index()


def plot_missing_modality(
    df: pd.DataFrame, path_png: str | os.PathLike, title: str
) -> list[Path]:
    """Plot test accuracy against missing rate, one line per missing modality.

    Args:
        df: rows of ``missing_modality.csv`` (as from :func:`find_missing`), with columns
            ``missing, rate, accuracy`` and ``seed`` or ``run_dir``; rows removing several
            modalities are ignored. With several methods in ``df`` lines are labelled
            ``method / modality``; with several fills, ``modality / fill`` (a colour per modality,
            a line style per fill: fills are never averaged together).
        path_png: where to write the PNG; a PDF of the same figure goes beside it.
        title: figure title.

    Returns the written paths. Lines show the mean over seeds, with a shaded ±1 std band where
    several seeds measured a point, and hollow markers where fewer seeds measured it than others.
    """
    stats = missing_rate_stats(df)
    several_methods = "method" in stats and stats["method"].nunique() > 1
    several_fills = "fill" in stats and stats["fill"].nunique() > 1
    line_keys = ["method"] * several_methods + ["missing"] + ["fill"] * several_fills
    colour_keys = line_keys[:-1] if several_fills else line_keys  # a colour per modality, a line style per fill
    colours = {_as_tuple(k): f"C{i % 10}" for i, (k, _) in enumerate(stats.groupby(colour_keys, sort=True))}
    styles = dict(zip(sorted(stats["fill"].unique()), ["-", "--", ":", "-."] * 3)) if several_fills else {}
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for key, line in stats.groupby(line_keys, sort=True):
        key = _as_tuple(key)
        line = line.sort_values("rate")
        colour = colours[key[:len(colour_keys)]]
        ax.plot(line["rate"], line["mean"], label=" / ".join(map(str, key)), color=colour,
                linestyle=styles.get(key[-1], "-") if several_fills else "-", **marked(len(line)))
        spread(ax, line["rate"], line["mean"], line["std"], colour)
        hollow_where_fewer(ax, line["rate"], line["mean"], line["n"], int(stats["n"].max()), colour)
    ax.set(xlabel="missing rate", ylabel=f"test {score_label(df)}", title=title)
    rate_axis(ax, stats["rate"])
    ax.grid(alpha=0.3)
    legend_title = " / ".join(["method"] * several_methods + ["missing modality"] + ["fill"] * several_fills)
    ax.legend(title=legend_title, fontsize="small")
    note = seeds_note(stats["n"])
    if note:
        ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small", color="grey")
    return save_figure(fig, path_png)


def _as_tuple(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def read_metrics(path: str | os.PathLike, warnings: list[str] | None = None) -> pd.DataFrame:
    """Read one ``metrics.jsonl``; nested dicts are flattened to ``key.sub`` columns. A line that cannot
    be read (a copy cut short) is left out with a warning naming the file and line; the others are kept.

    Raises:
        ValueError: no line could be read, or the lines have no ``epoch`` key.
        OSError: the file cannot be read.
    """
    records = read_jsonl(Path(path), warnings)
    if not records:
        raise ValueError("the file is empty")
    frame = pd.json_normalize(records)
    if "epoch" not in frame:
        raise ValueError("no 'epoch' key in its lines")
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="coerce")
    return frame.dropna(subset=["epoch"]).sort_values("epoch")


def plot_training_curves(
    metrics_jsonl_paths: Sequence[str | os.PathLike],
    path_png: str | os.PathLike,
    title: str = "Validation accuracy",
    warnings: list[str] | None = None,
) -> list[Path]:
    """Plot validation accuracy per epoch over the runs of ``metrics_jsonl_paths`` (e.g. one per seed).

    One line per head: the fused prediction (solid) and each modality's head (keys
    ``val_unimodal_accuracy.<modality>``, flat or nested; dashed), the mean over runs with a ± std band
    where several runs reached that epoch. Points are marked, epochs are integer ticks. Unreadable files
    (and unreadable lines) are skipped with a message in ``warnings``.

    Multilabel and regression runs (no ``val_accuracy``): their default selection metric's curves instead,
    ``val_micro_f1`` or ``val_mae`` and the heads' ``val_unimodal_<metric>.<modality>``.

    Returns the written paths, or ``[]`` when no file had ``val_accuracy`` (or ``val_micro_f1``, ``val_mae``).
    """
    warnings = [] if warnings is None else warnings
    frames = []
    for path in metrics_jsonl_paths:
        try:
            frame = read_metrics(path, warnings)
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path}: {exc}")
            continue
        if any(c in frame for c in CURVE_METRICS):
            frames.append(frame)
    if not frames:
        return []
    metric = next(c for c in CURVE_METRICS if any(c in f for f in frames))  # the runs' selection metric
    frames = [f for f in frames if metric in f]
    prefix = VAL_UNIMODAL_PREFIX if metric == "val_accuracy" else f"val_unimodal_{metric.removeprefix('val_')}."
    heads = [metric] + sorted({c for f in frames for c in f.columns if c.startswith(prefix)})
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    counts: list[int] = []
    stats_by_head = {}
    for column in heads:
        values = pd.concat([f[["epoch", column]] for f in frames if column in f], ignore_index=True)
        stats_by_head[column] = values.groupby("epoch")[column].agg(mean="mean", std="std", n="count").reset_index()
    most = max(int(st["n"].max()) for st in stats_by_head.values())
    for i, column in enumerate(heads):
        stats = stats_by_head[column]
        fused = column == metric
        label = "fused" if fused else column.removeprefix(prefix)
        ax.plot(stats["epoch"], stats["mean"], color=f"C{i % 10}", linestyle="-" if fused else "--",
                lw=2 if fused else 1.3, label=label, **marked(len(stats)))
        spread(ax, stats["epoch"], stats["mean"], stats["std"], f"C{i % 10}", alpha=0.15)
        hollow_where_fewer(ax, stats["epoch"], stats["mean"], stats["n"], most, f"C{i % 10}")
        counts += stats["n"].tolist()
    ax.set(xlabel="epoch", ylabel="validation " + metric.removeprefix("val_"), title=title)
    epoch_axis(ax, pd.concat([f["epoch"] for f in frames]))
    ax.grid(alpha=0.3)
    ax.legend(title="head", fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    note = seeds_note(counts, "runs") or f"{len(frames)} run"
    ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small", color="grey")
    return save_figure(fig, path_png)


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
        spread(axes[1], epochs, frame[col], std, line.get_color(), within=(0, high))
    if w_max is not None:
        axes[1].axhline(w_max, color="grey", linestyle="--", linewidth=1, label="w_max")
    axes[1].set(title="applied weights per source (mean ± std, within [0, w_max])", xlabel="epoch", ylabel="weight")
    if "method.bogc.clipped" in frame:
        axes[2].plot(epochs, frame["method.bogc.clipped"], marker="o", color="black")
    axes[2].set(title="fraction of weights clipped at w_max", xlabel="epoch", ylabel="fraction")
    for ax in axes:
        epoch_axis(ax, epochs)
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title, fontsize=9)
    paths = save_figure(fig, path_png)
    plt.close(fig)
    return paths
