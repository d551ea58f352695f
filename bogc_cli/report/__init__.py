"""Tables and plots from a results tree (``bogc report RESULTS_DIR``).

``run_report`` is the one call the CLI needs: it reads every run under the folder, writes
``<results>/tables/<name>.<fmt>`` and ``<results>/plots/*.png|pdf``, and returns the rich tables
and warnings to print.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd
import rich.table

from .aggregate import find_missing, find_runs, mean_std
from .balance_plots import write_balance_plots
from .comparison_plots import write_comparison_plots
from .plots import metrics_paths, plot_missing_modality, plot_training_curves
from .tables import (
    FORMATS,
    TABLES_DIR,
    Table,
    build_tables,
    load_tables,
    require_runs,
    save_tables,
    slug,
    validate_formats,
    write_tables,
)

PLOTS_DIR = "plots"

__all__ = [
    "FORMATS",
    "ReportResult",
    "Table",
    "build_tables",
    "find_missing",
    "find_runs",
    "load_tables",
    "mean_std",
    "plot_missing_modality",
    "plot_training_curves",
    "run_report",
    "validate_formats",
    "write_plots",
    "write_tables",
]


@dataclass
class ReportResult:
    """What ``run_report`` produced.

    Attributes:
        paths: every file written (tables, then plots).
        tables: the tables, for further use.
        rich_tables: the same tables ready for ``rich.console.Console.print``.
        warnings: one line per skipped file (corrupt eval.json, unreadable CSV, ...).
        n_runs: how many runs were aggregated.
    """

    paths: list[Path] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    rich_tables: list[rich.table.Table] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_runs: int = 0


def _plot_name(kind: str, experiment: str, dataset: str, method: str, several: bool) -> str:
    parts = ([experiment] if several else []) + [dataset, method]
    return f"{kind}_{'_'.join(slug(p) for p in parts)}.png"


def write_plots(
    runs: pd.DataFrame, missing: pd.DataFrame, out_dir: str | os.PathLike, warnings: list[str]
) -> list[Path]:
    """Per (experiment, dataset, method): a missing-modality plot (when there are
    missing_modality.csv rows) and a training-curve plot over its seeds (when there are
    metrics.jsonl files). Files go to ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    several = runs["experiment"].nunique() > 1
    paths: list[Path] = []
    for (experiment, dataset, method), group in runs.groupby(["experiment", "dataset", "method"]):
        rows = missing[(missing["experiment"] == experiment) & (missing["dataset"] == dataset)
                       & (missing["method"] == method)]
        single = ~rows["missing"].str.contains("+", regex=False)
        if single.any():
            name = _plot_name("missing", experiment, dataset, method, several)
            title = f"{dataset} / {method}: accuracy with a modality missing"
            paths += plot_missing_modality(rows, out_dir / name, title)
        curves = metrics_paths(group["run_dir"])
        if curves:
            name = _plot_name("curves", experiment, dataset, method, several)
            paths += plot_training_curves(curves, out_dir / name, f"{dataset} / {method}", warnings)
    return paths


def run_report(
    results_dir: str | os.PathLike,
    formats: str | Iterable[str] = FORMATS,
    plots: bool = True,
) -> ReportResult:
    """Turn the runs under ``results_dir`` into tables (and plots) with mean ± std over seeds.

    Args:
        results_dir: a results tree, ``<results_dir>/<experiment>/<dataset>/<method>/seed<N>/``
            (or any folder above run directories holding ``eval.json``).
        formats: table formats, ``"md,csv,tex"`` or a sequence of names from :data:`FORMATS`.
        plots: also write PNG/PDF figures to ``<results_dir>/plots/``.

    Raises:
        UserError: unknown format, missing folder, or no readable run in the folder.
    """
    formats = validate_formats(formats)
    result = ReportResult()
    runs = find_runs(results_dir, result.warnings)
    require_runs(runs, results_dir, result.warnings)
    missing = find_missing(results_dir, result.warnings, runs=runs)
    result.n_runs = len(runs)
    result.tables = build_tables(runs, missing, result.warnings)
    result.rich_tables = [t.to_rich() for t in result.tables]
    result.paths = save_tables(result.tables, Path(results_dir) / TABLES_DIR, formats)
    if plots:
        result.paths += write_plots(runs, missing, Path(results_dir) / PLOTS_DIR, result.warnings)
        result.paths += write_comparison_plots(runs, missing, Path(results_dir) / PLOTS_DIR, result.warnings)
        result.paths += write_balance_plots(runs, Path(results_dir) / PLOTS_DIR, result.warnings)
    result.warnings = list(dict.fromkeys(result.warnings))  # a file read for several figures is named once
    return result
