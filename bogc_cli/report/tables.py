"""Result tables (mean ± std over seeds) and their Markdown, CSV, LaTeX and rich renderings.

Tables built from a results tree:

* ``accuracy``   rows = methods, columns = datasets, test accuracy at the best-validation epoch;
* ``macro_f1``   same layout, macro-averaged F1;
* ``val_accuracy``  same layout, the best validation accuracy (what model selection and the
  choice of defaults may look at; test must not be tuned on);
* ``unimodal``   rows = methods, columns = ``<dataset>/<modality>``, accuracy of each modality's
  own head (the imbalance signal);
* ``methods``    rows = methods, columns = each dataset's test accuracy, its median step time
  relative to ``joint`` on the same dataset (``<dataset> step/joint``) and its cost (step ms, peak
  GB, params M, MFLOPs/sample): the comparison table;
* ``coefficients``  rows = ``method / coefficient``, columns = datasets: each per-step coefficient
  a method logs (OGM's k_m, G-Blending's weights, cosines, ...) averaged over epochs;
* ``imbalance``, ``imbalance_probability``, ``probe``, ``calibration``: the balance metrics
  (report/balance_tables.py);
* ``robustness_<dataset>``  rows = ``method / missing modality``, columns = missing rates;
* ``robustness_<dataset>_subsets``  rows = methods, columns = the several-modality subsets that
  were removed at rate 1.0.

When the tree holds several experiments, every table name gets the prefix ``<experiment>_``.
Markdown, LaTeX and rich show formatted cells ("0.912 ± 0.013"; "0.912" for a single seed) under a
heading that says over how many seeds (``Table.heading``); where cells of one table have different
numbers of seeds, those with fewer carry ``(n=2)``. CSV keeps the numbers (one line per cell with
``mean, std, n``) for further processing.
The heading also names the protocol the runs were trained under (``as-published``, ``common``,
``custom``: the recipe key ``protocol``); runs of different protocols never share a table
(``build_tables``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import rich.table

from bogc_cli.atomic import write_text
from bogc_cli.errors import UserError

from .aggregate import (
    IDENTITY,
    PROTOCOL,
    TASK_SCALARS,
    UNIMODAL_PREFIX,
    UNIMODAL_TASK_PREFIXES,
    find_coefficients,
    find_missing,
    find_runs,
    mean_std,
    step_time_vs_joint,
)

FORMATS: tuple[str, ...] = ("md", "csv", "tex")
"""Table file formats ``write_tables`` understands."""

TABLES_DIR = "tables"
EMPTY_CELL = "-"
PLUS_MINUS = "±"

RUN_LAYOUT_HINT = (
    "a run directory looks like <results>/<experiment>/<dataset>/<method>/seed<N>/ and holds "
    "an eval.json written by `bogc train` or `bogc eval`"
)


def validate_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise ``"md,csv"`` or ``["md", "csv"]`` to a tuple; unknown names raise UserError."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip().lower().lstrip(".") for n in names if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        got = ", ".join(repr(n) for n in unknown) or "nothing"
        raise UserError(
            f"--format: unknown table format {got}; valid formats: {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(names))


def method_sort_key(method: str) -> tuple[int, str]:
    """Order methods as ``joint``, ``uniform``, ``unimodal-*``, then the rest alphabetically."""
    if method == "joint":
        return (0, method)
    if method == "uniform":
        return (1, method)
    if method.startswith("unimodal-"):
        return (2, method)
    return (3, method)


def format_cell(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``"0.912 ± 0.013"``; only the mean when there is a single value (or no std)."""
    if pd.isna(mean):
        return EMPTY_CELL
    if n <= 1 or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} {PLUS_MINUS} {std:.{digits}f}"


def format_label(value: object) -> str:
    """Column label text: rates as ``0.5`` / ``1``, everything else via ``str``."""
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (dataset and experiment names go into file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"


def _sort_stats(stats: pd.DataFrame, rows: Sequence[str], col: str) -> pd.DataFrame:
    """Sort a long stats frame by rows (methods in :func:`method_sort_key` order) then column."""
    methods = sorted(stats["method"].unique(), key=method_sort_key) if "method" in stats else []

    def key(series: pd.Series) -> pd.Series | pd.Categorical:
        if series.name == "method":
            return pd.Categorical(series, categories=methods, ordered=True)
        return series

    return stats.sort_values([*rows, col], key=key, kind="stable").reset_index(drop=True)


@dataclass
class Table:
    """One result table: a long frame of (mean, std, n) per cell plus how to lay it out.

    Attributes:
        name: file stem, e.g. ``"accuracy"`` or ``"robustness_avmnist"``.
        title: one line describing the table; ``heading`` adds the number of seeds (shown above it in
            Markdown, rich and LaTeX).
        stats: columns ``*rows, col, mean, std, n`` (and optionally ``p``, ``mark``: a paired test
            against uniform, see :mod:`significance`); one line per cell, already in display order.
        rows: the columns whose values make up a row label (joined with ``" / "``).
        col: the column whose values become the table's columns.
        protocol: the protocol every run of the table was trained under; ``heading`` names it.
    """

    name: str
    title: str
    stats: pd.DataFrame
    rows: list[str]
    col: str
    best: bool = False  # mark the highest mean of each column (bold in Markdown, LaTeX and rich)
    order: list | None = None  # column order (default: sorted); columns not in it follow, sorted
    protocol: str | None = None

    @classmethod
    def from_values(
        cls, name: str, title: str, df: pd.DataFrame, value: str, rows: list[str], col: str
    ) -> Table | None:
        """Aggregate ``df[value]`` over seeds into a table; ``None`` when there is no value."""
        stats = mean_std(df, value, rows, [col])
        if stats.empty:
            return None
        return cls(name, title, _sort_stats(stats, rows, col), rows, col)

    @property
    def row_header(self) -> str:
        return " / ".join(self.rows)

    def _seed_counts(self) -> pd.Series:
        return self.stats.loc[self.stats["mean"].notna(), "n"]

    @property
    def heading(self) -> str:
        """The title with over how many seeds its cells are (``(mean ± std over 3 seeds)``) and the protocol
        its runs were trained under (``; protocol: common (...)``)."""
        named = f"; {protocol_caption(self.protocol)}" if self.protocol else ""
        counts = self._seed_counts()
        if counts.empty:
            return self.title + named
        low, high = int(counts.min()), int(counts.max())
        if high == 1:
            spread = "one seed"
        elif low == high:
            spread = f"mean {PLUS_MINUS} std over {high} seeds"
        else:
            spread = f"mean {PLUS_MINUS} std over {low} to {high} seeds; (n=k): a cell over k < {high} seeds"
        return f"{self.title} ({spread}){named}"

    def cells(self, emphasis: tuple[str, str] = ("", "")) -> pd.DataFrame:
        """Wide frame of formatted strings: index = row labels, columns = column labels.

        ``emphasis``: text put around the best cell of each column when ``best`` is set (e.g. ``**``)."""
        numbers = self.stats[["mean", "std", "n"]].itertuples(index=False)
        text = pd.Series([format_cell(m, s, n) for m, s, n in numbers], index=self.stats.index)
        if "mark" in self.stats:
            text = text + self.stats["mark"].fillna("")
        if self.best and emphasis != ("", ""):
            top = self.stats.groupby(self.col)["mean"].transform("max")
            is_best = np.isclose(self.stats["mean"], top) & self.stats["mean"].notna()
            text = text.where(~is_best, emphasis[0] + text + emphasis[1])
        counts = self._seed_counts()
        if not counts.empty and counts.nunique() > 1:  # say n where it is not the table's usual number
            fewer = self.stats["mean"].notna() & (self.stats["n"] < counts.max())
            text = text.where(~fewer, text + " (n=" + self.stats["n"].astype(str) + ")")
        wide = self.stats.assign(cell=text).pivot(index=self.rows, columns=self.col, values="cell")
        row_order = pd.MultiIndex.from_frame(self.stats[self.rows].drop_duplicates())
        if len(self.rows) == 1:
            row_order = row_order.get_level_values(0)
        columns = sorted(self.stats[self.col].unique(), key=lambda c: (isinstance(c, str), str(c) if
                                                                       isinstance(c, str) else c))
        if self.order:
            columns = [c for c in self.order if c in columns] + [c for c in columns if c not in self.order]
        wide = wide.reindex(index=row_order, columns=columns)
        wide.index = [
            " / ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in wide.index
        ]
        wide.index.name = self.row_header
        wide.columns = [format_label(c) for c in wide.columns]
        return wide.fillna(EMPTY_CELL)

    def to_markdown(self) -> str:
        """GitHub pipe table with the title as a heading above it."""
        flat = self.cells(("**", "**")).reset_index()
        align = ("left",) + ("right",) * (flat.shape[1] - 1)
        return f"### {self.heading}\n\n{flat.to_markdown(index=False, colalign=align)}\n{self._legend()}"

    def _legend(self) -> str:
        notes = []
        if self.best:
            notes.append("best mean of each column in bold")
        if "mark" in self.stats:
            from .significance import ALPHA, MARK, MIN_PAIRS, REFERENCE

            pairs = self.stats["pairs"].dropna() if "pairs" in self.stats else pd.Series(dtype=float)
            most = int(pairs.max()) if not pairs.empty else 0
            if most >= MIN_PAIRS:
                notes.append(f"{MARK}: differs from {REFERENCE} with p < {ALPHA:g} (paired t-test over seeds; "
                             f"a cell with fewer than {MIN_PAIRS} seeds paired with {REFERENCE}'s is not tested)")
            else:
                notes.append(f"no {MARK} marks: a paired t-test against {REFERENCE} needs at least {MIN_PAIRS} "
                             f"seeds paired with {REFERENCE}'s, these cells have at most n={most}")
        return f"\n{'; '.join(notes).capitalize()}.\n" if notes else ""

    def to_csv(self) -> str:
        """Machine-readable CSV: one line per cell with numeric ``mean, std, n`` columns."""
        return self.stats.to_csv(index=False)

    def to_latex(self) -> str:
        """booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); special characters escaped."""
        bold = ("BOLDBEGINMARK", "BOLDENDMARK")  # plain letters survive escaping; replaced after it
        flat = self.cells(bold).reset_index()
        align = "l" + "r" * (flat.shape[1] - 1)
        body = flat.to_latex(index=False, escape=True, column_format=align)
        from .significance import MARK

        body = body.replace(bold[0], r"\textbf{").replace(bold[1], "}").replace(MARK, r"$^\dagger$")
        legend = self._legend().strip()
        text = f"% {self.heading}\n" + (f"% {legend}\n" if legend else "") + body
        return text.replace(PLUS_MINUS, r"$\pm$")

    def to_rich(self) -> rich.table.Table:
        """A rich Table for printing in the terminal."""
        cells = self.cells(("[bold green]", "[/bold green]"))
        # min_width keeps a narrow table from wrapping its title over several lines
        table = rich.table.Table(
            title=self.heading, title_justify="left", min_width=len(self.heading) + 4
        )
        table.add_column(self.row_header, style="bold")
        for column in cells.columns:
            table.add_column(column, justify="right")
        for label, values in cells.iterrows():
            table.add_row(str(label), *values.tolist())
        return table

    def render(self, fmt: str) -> str:
        """Text of this table in one of :data:`FORMATS`."""
        return {"md": self.to_markdown, "csv": self.to_csv, "tex": self.to_latex}[fmt]()


def accuracy_table(runs: pd.DataFrame, metric: str = "accuracy") -> Table | None:
    """Rows = methods, columns = datasets; ``metric`` is ``"accuracy"`` or ``"macro_f1"``."""
    if metric not in runs or runs[metric].isna().all():
        return None
    from bogc_cli.tasks.metrics import METRIC_TITLES

    label = {"accuracy": "Test accuracy", "macro_f1": "Test macro-F1",
             "val_accuracy": "Validation accuracy"}.get(metric)
    if label is None:  # a multilabel or regression metric (tasks/metrics.py), or its validation score
        name = metric.removeprefix("val_")
        label = ("Validation " if metric.startswith("val_") else "Test ") + METRIC_TITLES.get(name, name)
        if name == "mae":
            label += " (lower is better)"
    title = f"{label} at the best-validation epoch"
    table = Table.from_values(metric, title, runs, metric, ["method"], "dataset")
    if table is not None:
        table.best = metric.removeprefix("val_") != "mae"  # the bold cell marks the highest mean
        add_significance(table, runs, metric)
    return table


def add_significance(table: Table, per_run: pd.DataFrame, value: str) -> None:
    """Add ``p`` and ``mark`` columns (paired test against uniform over seeds) when uniform was run."""
    from .significance import REFERENCE, marks, paired_tests

    if REFERENCE not in set(per_run["method"]):
        return
    tests = paired_tests(per_run, value, table.col)
    stats = table.stats.merge(tests[["method", table.col, "p", "pairs"]], on=["method", table.col], how="left")
    table.stats = stats.assign(mark=marks(stats["p"]))


def unimodal_table(runs: pd.DataFrame, prefix: str = UNIMODAL_PREFIX) -> Table | None:
    """Rows = methods, columns = ``<dataset>/<modality>``: accuracy of each modality's own head (``prefix``
    ``unimodal_<metric>.``: that metric, a multilabel or regression run's selection metric)."""
    from bogc_cli.tasks.metrics import METRIC_TITLES

    heads = [c for c in runs.columns if c.startswith(prefix)]
    if not heads or runs[heads].isna().all().all():
        return None
    metric = prefix.removeprefix("unimodal_").rstrip(".")
    long = runs[IDENTITY + heads].melt(
        id_vars=IDENTITY, value_vars=heads, var_name="modality", value_name=metric
    )
    long["head"] = long["dataset"] + "/" + long["modality"].str.removeprefix(prefix)
    title = "Unimodal-head test " + ("accuracy" if metric == "accuracy" else METRIC_TITLES.get(metric, metric))
    name = "unimodal" if prefix == UNIMODAL_PREFIX else f"unimodal_{metric}"
    return Table.from_values(name, title, long, metric, ["method"], "head")


STEP_COLUMN = "step/joint"


def methods_table(runs: pd.DataFrame) -> Table | None:
    """Per dataset: test accuracy, median step time relative to joint (needs a joint run) and in ms, peak
    memory, parameters and forward FLOPs per sample, side by side (see balance_tables.cost_stats)."""
    from .balance_tables import cost_stats

    ratio = step_time_vs_joint(runs)
    accuracy = mean_std(runs, "accuracy", ["method"], ["dataset"]).rename(columns={"dataset": "column"})
    step = mean_std(runs.assign(ratio=ratio), "ratio", ["method"], ["dataset"])
    step = step.assign(column=step["dataset"] + f" {STEP_COLUMN}").drop(columns="dataset")
    cost, suffixes = cost_stats(runs)
    if step.empty and cost.empty:
        return None
    stats = pd.concat([accuracy, step, cost], ignore_index=True)
    order = [f"{d}{s}" for d in sorted(runs["dataset"].unique()) for s in ("", f" {STEP_COLUMN}", *suffixes)]
    title = ("Test accuracy at the best-validation epoch, median step time relative to joint and in ms, peak "
             "memory, parameters and forward FLOPs per sample")
    return Table("methods", title, _sort_stats(stats, ["method"], "column"), ["method"], "column", order=order)


def coefficients_table(runs: pd.DataFrame) -> Table | None:
    """Every logged per-step coefficient, averaged over epochs, then mean ± std over seeds."""
    coefficients = find_coefficients(runs)
    if coefficients.empty:
        return None
    title = "Per-step coefficients of each method, mean over epochs"
    return Table.from_values("coefficients", title, coefficients, "value", ["method", "coefficient"], "dataset")


def robustness_tables(missing: pd.DataFrame) -> list[Table]:
    """Per dataset: accuracy vs missing rate for each single missing modality, and a table of
    the several-modality subsets removed at rate 1.0. Rows of one run with the same
    (missing, rate, fill) are averaged first, so std is always across training seeds."""
    if missing.empty:
        return []
    from .plots import score_label, with_score

    missing = with_score(missing)
    keys = [*IDENTITY, "missing", "rate", "fill"]
    per_run = missing.groupby(keys, as_index=False)[["score"]].mean()
    tables: list[Table | None] = []
    for dataset, part in per_run.groupby("dataset", sort=True):
        metric = score_label(missing[missing["dataset"] == dataset])  # the runs' selection metric
        fill = ["fill"] if part["fill"].nunique() > 1 else []
        several = part["missing"].str.contains("+", regex=False)
        title = f"{dataset}: test {metric} with one modality missing at rate r"
        single = part[~several]
        table = Table.from_values(f"robustness_{slug(dataset)}", title + f"; AUC: area under {metric} vs "
                                  "rate, divided by the rate range", single, "score", ["method", "missing", *fill],
                                  "rate")
        if table is not None:
            auc = mean_std(area_under_rates(single, [*IDENTITY, "missing", *fill]), "auc",
                           ["method", "missing", *fill], []).assign(rate=AUC_COLUMN)
            table.stats = _sort_stats(pd.concat([table.stats, auc], ignore_index=True),
                                      table.rows, "rate")
        tables.append(table)
        subsets = part[several & np.isclose(part["rate"], 1.0)]
        title = f"{dataset}: test {metric} with several modalities missing (rate 1.0)"
        tables.append(
            Table.from_values(
                f"robustness_{slug(dataset)}_subsets", title, subsets, "score",
                ["method", *fill], "missing",
            )
        )
    return [t for t in tables if t is not None]


AUC_COLUMN = "AUC"


def area_under_rates(per_run: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per run and missing modality: the trapezoid area under the score (the run's selection metric:
    accuracy, micro-F1, MAE ...; ``score`` column, else ``accuracy``) vs missing rate, divided by the rate
    range (so 1.0 = perfect accuracy at every rate). Columns ``*keys, auc``; needs two rates or more."""
    rows = []
    value = "score" if "score" in per_run else "accuracy"
    for key, part in per_run.groupby(keys, sort=False):
        part = part.sort_values("rate")
        rates, acc = part["rate"].to_numpy(float), part[value].to_numpy(float)
        if len(rates) >= 2 and rates[-1] > rates[0]:
            area = np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(rates))  # trapezoids (np.trapezoid needs numpy 2)
            rows.append({**dict(zip(keys, key)), "auc": float(area / (rates[-1] - rates[0]))})
    return pd.DataFrame(rows, columns=[*keys, "auc"])


def _experiment_tables(runs: pd.DataFrame, missing: pd.DataFrame) -> list[Table]:
    """All tables for the runs of one experiment."""
    tables = [
        accuracy_table(runs, "accuracy"), accuracy_table(runs, "macro_f1"), accuracy_table(runs, "val_accuracy"),
        *[accuracy_table(runs, metric) for metric in TASK_SCALARS],  # multilabel and regression runs' metrics
        unimodal_table(runs), *[unimodal_table(runs, prefix) for prefix in UNIMODAL_TASK_PREFIXES],
        methods_table(runs), coefficients_table(runs),
    ]
    from .balance_tables import balance_tables

    return [t for t in tables if t is not None] + balance_tables(runs) + robustness_tables(missing)


PROTOCOL_CAPTIONS = {
    "as-published": "protocol: as published (each method under its reference code's set-up)",
    "common": "protocol: common (one shared set-up; each method keeps only its rule's own keys)",
    "custom": "protocol: custom (each recipe's own set-up)",
}
"""How a table's title names the protocol its runs were trained under (the recipe key ``protocol``)."""


def protocol_caption(protocol: str) -> str:
    return PROTOCOL_CAPTIONS.get(protocol, f"protocol: {protocol}")


def _protocol_order(protocol: str) -> tuple[int, str]:
    names = list(PROTOCOL_CAPTIONS)
    return (names.index(protocol) if protocol in names else len(names), protocol)


def build_tables(runs: pd.DataFrame, missing: pd.DataFrame, warnings: list[str] | None = None) -> list[Table]:
    """Every table for a results tree (see the module docstring for the list).

    ``runs`` comes from :func:`find_runs`, ``missing`` from :func:`find_missing`. Tables are built per
    experiment and per protocol, and every heading names the protocol. A table never mixes protocols:
    when an experiment holds runs of several, each gets its own tables, their names ending in
    ``_<protocol>`` (and a line in ``warnings`` says so); with several experiments, names get the
    prefix ``<experiment>_`` and titles ``[<experiment>]``.
    """
    several = runs["experiment"].nunique() > 1
    tables: list[Table] = []
    for experiment in sorted(runs["experiment"].unique()):
        part = runs[runs["experiment"] == experiment]
        protocols = sorted(part[PROTOCOL].unique(), key=_protocol_order)
        if len(protocols) > 1 and warnings is not None:
            counts = ", ".join(f"{p} ({(part[PROTOCOL] == p).sum()} runs)" for p in protocols)
            warnings.append(f"experiment {experiment} holds runs of {len(protocols)} protocols, {counts}: each has "
                            f"its own tables (names ending in _{'/_'.join(slug(p) for p in protocols)})")
        for protocol in protocols:
            subset = part[part[PROTOCOL] == protocol]
            rows = missing[missing["run_dir"].isin(subset["run_dir"])] if "run_dir" in missing else missing
            for table in _experiment_tables(subset, rows):
                if len(protocols) > 1:
                    table.name = f"{table.name}_{slug(protocol)}"
                if several:
                    table.name = f"{slug(experiment)}_{table.name}"
                    table.title = f"[{experiment}] {table.title}"
                table.protocol = protocol
                tables.append(table)
    return tables


def require_runs(
    runs: pd.DataFrame, results_dir: str | os.PathLike, warnings: Sequence[str]
) -> None:
    """Raise UserError when a results folder is missing or holds no usable run."""
    if not Path(results_dir).is_dir():
        raise UserError(
            f"{results_dir}: no such folder; pass the folder `bogc train` wrote to "
            f"({RUN_LAYOUT_HINT})"
        )
    if runs.empty:
        skipped = f" ({len(warnings)} eval.json file(s) skipped as unreadable)" if warnings else ""
        raise UserError(f"{results_dir}: no finished runs found{skipped}; {RUN_LAYOUT_HINT}")


def load_tables(results_dir: str | os.PathLike, warnings: list[str] | None = None) -> list[Table]:
    """Read the tree under ``results_dir`` and build its tables (UserError when it has no runs)."""
    warnings = [] if warnings is None else warnings
    runs = find_runs(results_dir, warnings)
    require_runs(runs, results_dir, warnings)
    return build_tables(runs, find_missing(results_dir, warnings, runs=runs), warnings)


def save_tables(
    tables: Sequence[Table], out_dir: str | os.PathLike, formats: Iterable[str] = FORMATS
) -> list[Path]:
    """Write each table as ``<out_dir>/<name>.<fmt>`` atomically; return the written paths."""
    formats = validate_formats(formats)
    paths = []
    for table in tables:
        for fmt in formats:
            path = Path(out_dir) / f"{table.name}.{fmt}"
            write_text(path, table.render(fmt))
            paths.append(path)
    return paths


def write_tables(
    results_dir: str | os.PathLike,
    formats: Iterable[str] = FORMATS,
    warnings: list[str] | None = None,
) -> list[Path]:
    """Build every table of ``results_dir`` and write them to ``<results_dir>/tables/``.

    Returns the written paths. Use :func:`load_tables` + :meth:`Table.to_rich` for terminal
    output, or :func:`bogc_cli.report.run_report` for both at once.
    """
    formats = validate_formats(formats)
    return save_tables(load_tables(results_dir, warnings), Path(results_dir) / TABLES_DIR, formats)
