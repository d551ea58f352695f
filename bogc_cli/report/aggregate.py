"""Collect finished runs from a results tree into pandas DataFrames.

A results tree looks like ``RESULTS/<experiment>/<dataset>/<method>/seed<N>/``; every run
directory that holds an ``eval.json`` is one run. The identity of a run (experiment, dataset,
method, seed) is read from ``eval.json``, never from the folder names, so renamed or moved run
directories still aggregate correctly.

Problems with single files (unreadable JSON, missing identity keys, a broken CSV) never stop
aggregation: the file is skipped and a one-line message is appended to the ``warnings`` list the
caller passed in, so the CLI can print them after the tables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

EVAL_FILE = "eval.json"
MISSING_FILE = "missing_modality.csv"
METRICS_FILE = "metrics.jsonl"

IDENTITY: list[str] = ["experiment", "dataset", "method", "seed"]
"""Columns that identify a run; every ``eval.json`` must hold them."""

SCALARS: list[str] = [
    "epoch",
    "n",
    "accuracy",
    "macro_f1",
    "val_accuracy",
    "step_time_ms_median",
    "epoch_time_s_mean",
    "peak_memory_mb",
]
"""Numeric metrics copied from ``eval.json``; any of them may be absent (then NaN)."""

TASK_SCALARS: list[str] = [
    "micro_f1", "weighted_f1", "samples_f1", "map",
    "mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7",
    "val_micro_f1", "val_weighted_f1", "val_samples_f1", "val_map", "val_macro_f1",
    "val_mae", "val_corr", "val_acc2_has0", "val_acc2_non0", "val_f1_has0", "val_f1_non0", "val_acc7",
]
"""The multilabel and regression metrics of ``eval.json`` (tasks/metrics.py) and the validation score of the
selection metric a run was chosen on (``val_<metric>``); NaN where a run's task has none of them."""
SCALARS += TASK_SCALARS

UNIMODAL_PREFIX = "unimodal_accuracy."
UNIMODAL_TASK_PREFIXES: tuple[str, ...] = ("unimodal_micro_f1.", "unimodal_macro_f1.", "unimodal_weighted_f1.",
                                           "unimodal_samples_f1.", "unimodal_map.", "unimodal_mae.",
                                           "unimodal_corr.", "unimodal_acc2_has0.", "unimodal_acc2_non0.",
                                           "unimodal_f1_has0.", "unimodal_f1_non0.", "unimodal_acc7.")
"""Each head's selection metric in a multilabel or regression run (``unimodal_<metric>.<modality>``)."""

BALANCE_PREFIXES: tuple[str, ...] = (
    "contribution.accuracy.shapley.", "contribution.accuracy.imbalance_degree",
    "contribution.true_class_probability.shapley.", "contribution.true_class_probability.imbalance_degree",
    *(f"contribution.{value}.{part}" for value in ("label_accuracy", "true_label_probability",
                                                    "negative_absolute_error", "sign_accuracy")
      for part in ("shapley.", "imbalance_degree")),
    "linear_probe.accuracy.", "calibration.ece", "calibration.nll", "calibration.brier",
    "parameters", "forward_flops_per_sample",
)
"""The balance metrics of eval.json (engine/balance_eval.py) kept as ``runs`` columns, flattened with dots
(``contribution.accuracy.shapley.audio``, ``linear_probe.accuracy.image``, ``calibration.ece``, ...)."""

PROTOCOL = "protocol"
"""Column naming the protocol a run was trained under (the recipe key ``protocol``)."""
DEFAULT_PROTOCOL = "custom"

MISSING_REQUIRED: list[str] = ["missing", "rate", "score"]
MISSING_OPTIONAL: list[str] = ["fill", "accuracy", "macro_f1", "n", "metric"]
"""``score`` is the run's selection metric (named in ``metric``); files written before task types existed
have ``accuracy`` only, which is then their score."""


def read_jsonl(path: Path, warnings: list[str] | None = None) -> list[dict]:
    """The JSON objects of a JSON-lines file (``metrics.jsonl``), one per line; blank lines are ignored.

    A line that is not a JSON object -- a copy cut short in mid-line, a disk that filled up, an edit
    gone wrong -- is left out and named in ``warnings`` (file, line number, why); every other line is
    kept, so one bad line never costs a run its other epochs.

    Raises:
        ValueError: the file has lines but none is a JSON object (naming the first).
        OSError: the file cannot be read.
    """
    warnings = [] if warnings is None else warnings
    records, bad = [], []
    lines = [(n, raw) for n, raw in enumerate(path.read_bytes().splitlines(), start=1) if raw.strip()]
    for n, raw in lines:
        try:
            record = json.loads(raw)
        except UnicodeDecodeError:
            bad.append((n, "not UTF-8 text"))
            continue
        except json.JSONDecodeError as exc:
            bad.append((n, f"not valid JSON at column {exc.colno} ({_reason(exc)})"))
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append((n, f"a JSON {type(record).__name__}, not an object"))
    if bad and not records:
        raise ValueError(f"no line is a JSON object (line {bad[0][0]}: {bad[0][1]})")
    for n, why in bad:
        warnings.append(f"{path}, line {n}: {why} (cut short?); that line is left out, the other "
                        f"{len(records)} of {len(lines)} are used")
    return records


def _reason(exc: json.JSONDecodeError) -> str:
    return exc.msg.removesuffix(" starting at").removesuffix(" at")  # "Unterminated string starting at"


def _json_problem(exc: ValueError) -> str:
    """``json``'s error in a user's terms: where the file stops being JSON."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}, column {exc.colno} ({_reason(exc)}; cut short?)"
    return str(exc)


def read_eval(path: Path) -> dict:
    """Read one ``eval.json`` and check that it names its run.

    Raises:
        ValueError: the file is not valid UTF-8 JSON, is not an object, lacks identity keys,
            or its seed is not an integer.
        OSError: the file cannot be read.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    absent = [key for key in IDENTITY if data.get(key) is None]
    if absent:
        raise ValueError(f"missing identity key(s): {', '.join(absent)}")
    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        raise ValueError(f"seed must be an integer, got {data['seed']!r}")
    return data


def _run_records(results_dir: Path, warnings: list[str]) -> list[dict]:
    """Read every ``eval.json`` under ``results_dir``; skip bad ones with a warning."""
    records = []
    for path in sorted(results_dir.rglob(EVAL_FILE)):
        if _inside_another_run(path.parent, results_dir):
            continue  # a run's own prerequisite (UMT's teachers in <run_dir>/teachers/<m>), not a row of the table
        try:
            data = read_eval(path)
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path}: {_json_problem(exc)}")
            continue
        data["run_dir"] = str(path.parent)
        data.setdefault(PROTOCOL, _saved_protocol(path.parent))
        records.append(data)
    return records


def _inside_another_run(run_dir: Path, results_dir: Path) -> bool:
    """Whether ``run_dir`` lies inside another run's directory (one holding ``recipe.yaml``) below ``results_dir``."""
    outer = run_dir.parent
    while outer != results_dir and results_dir in outer.parents:
        if (outer / "recipe.yaml").is_file():
            return True
        outer = outer.parent
    return False


def _saved_protocol(run_dir: Path) -> str:
    """The ``protocol`` of a run whose eval.json predates the key: its saved recipe.yaml's, else the default."""
    import yaml

    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return DEFAULT_PROTOCOL
    value = recipe.get(PROTOCOL) if isinstance(recipe, dict) else None
    return value if isinstance(value, str) else DEFAULT_PROTOCOL


def _drop_duplicate_runs(df: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """Keep the first run of each identity; warn about the others (they would count twice)."""
    dup = df.duplicated(IDENTITY, keep="first")
    for run_dir in df.loc[dup, "run_dir"]:
        warnings.append(f"skipped {run_dir}: same experiment/dataset/method/seed as an earlier run")
    return df.loc[~dup].reset_index(drop=True)


def find_runs(results_dir: str | os.PathLike, warnings: list[str] | None = None) -> pd.DataFrame:
    """One row per run directory under ``results_dir`` that holds a readable ``eval.json``.

    Columns: ``experiment, dataset, method, seed``, the metric scalars in :data:`SCALARS`
    (NaN where a run did not record one), one ``unimodal_accuracy.<modality>`` column per
    modality seen in any run, the balance metrics (:data:`BALANCE_PREFIXES`), ``protocol`` (from eval.json,
    else the run's recipe.yaml, else ``custom``) and ``run_dir``. Corrupt files are skipped and described in
    ``warnings`` (if given). An empty tree gives an empty frame with these columns.
    """
    warnings = [] if warnings is None else warnings
    records = _run_records(Path(results_dir), warnings)
    flat = pd.json_normalize(records) if records else pd.DataFrame()
    unimodal = sorted(c for c in flat.columns if c.startswith((UNIMODAL_PREFIX, *UNIMODAL_TASK_PREFIXES)))
    balance = sorted(c for c in flat.columns if c.startswith(BALANCE_PREFIXES))
    df = flat.reindex(columns=IDENTITY + SCALARS + unimodal + balance + [PROTOCOL, "task", "run_dir"])
    df["task"] = df["task"].fillna("classification").astype(str)
    numeric = SCALARS + unimodal + balance
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    df[["experiment", "dataset", "method"]] = df[["experiment", "dataset", "method"]].astype(str)
    df[PROTOCOL] = df[PROTOCOL].fillna(DEFAULT_PROTOCOL).astype(str)
    df = _drop_duplicate_runs(df, warnings)
    return df.sort_values(IDENTITY, kind="stable").reset_index(drop=True)


def read_missing_csv(path: Path, warnings: list[str] | None = None) -> pd.DataFrame:
    """Read one ``missing_modality.csv``; optional columns are added when absent.

    A row without a readable ``missing``, ``rate`` or ``score`` (a copy cut short in mid-row, an
    edit gone wrong) is left out and named in ``warnings`` with its line number; the others are kept.

    Raises:
        ValueError: unparsable CSV or a required column is missing.
        OSError: the file cannot be read.
    """
    warnings = [] if warnings is None else warnings
    df = pd.read_csv(path, skip_blank_lines=False)  # row i is line i + 2 of the file
    if "score" not in df.columns and "accuracy" in df.columns:  # a classification run's file of earlier versions
        df = df.assign(score=df["accuracy"], metric="accuracy")
    absent = [c for c in MISSING_REQUIRED if c not in df.columns]
    if absent:
        raise ValueError(f"missing column(s): {', '.join(absent)}")
    df = df.dropna(how="all").reindex(columns=MISSING_REQUIRED + MISSING_OPTIONAL)
    df["metric"] = df["metric"].fillna("accuracy").astype(str)
    num = ["rate", "score", "accuracy", "macro_f1", "n"]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    broken = df[MISSING_REQUIRED].isna().any(axis=1)
    if broken.any():
        lines = ", ".join(str(i + 2) for i in df.index[broken])
        warnings.append(f"{path}, line(s) {lines}: no readable missing/rate/score (cut short?); left out, "
                        f"the other {int((~broken).sum())} row(s) are used")
        df = df[~broken]
    df = df.reset_index(drop=True)
    df["missing"] = df["missing"].astype(str)
    df["fill"] = df["fill"].fillna("").astype(str)
    return df


def find_missing(
    results_dir: str | os.PathLike,
    warnings: list[str] | None = None,
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """All ``missing_modality.csv`` rows of the runs under ``results_dir``.

    Each row gets the identity columns of its run (from that run's ``eval.json``; the CSV's own
    ``seed`` column is ignored). Columns: identity, ``missing, rate, score, fill, accuracy, macro_f1, n,
    metric, run_dir`` (``score``: the run's selection metric, named by ``metric``). Pass ``runs`` (from :func:`find_runs`) to avoid reading the tree twice.
    """
    warnings = [] if warnings is None else warnings
    runs = find_runs(results_dir, warnings) if runs is None else runs
    frames = []
    for run in runs.itertuples(index=False):
        path = Path(run.run_dir) / MISSING_FILE
        if not path.is_file():
            continue
        try:
            df = read_missing_csv(path, warnings)
        except (OSError, ValueError) as exc:  # pandas' ParserError is a ValueError
            warnings.append(f"skipped {path}: {exc}")
            continue
        frames.append(df.assign(**{k: getattr(run, k) for k in IDENTITY}, run_dir=run.run_dir))
    columns = IDENTITY + MISSING_REQUIRED + MISSING_OPTIONAL + ["run_dir"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def mean_std(
    df: pd.DataFrame, value: str, rows: Sequence[str], cols: Sequence[str]
) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1) and count of ``value`` per (rows, cols) cell.

    Returns a long frame with columns ``*rows, *cols, mean, std, n``; ``std`` is NaN where
    ``n == 1``. NaN values are ignored and cells with no values are dropped.
    """
    keys = [*rows, *cols]
    stats = (
        df.dropna(subset=[value])
        .groupby(keys, sort=True)[value]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    return stats.astype({"n": int})


COEFFICIENT_PREFIX = "method."
"""Per-epoch means of a method's per-step coefficients in ``metrics.jsonl`` (losses excluded)."""


def step_time_vs_joint(runs: pd.DataFrame) -> pd.Series:
    """Each run's median step time over the mean of ``joint``'s on the same experiment and dataset.

    NaN where there is no joint run to compare with or no step time was recorded."""
    joint = runs[runs["method"] == "joint"].groupby(["experiment", "dataset"])["step_time_ms_median"].mean()
    keys = pd.MultiIndex.from_frame(runs[["experiment", "dataset"]])
    reference = joint.reindex(keys).to_numpy()
    return pd.Series(runs["step_time_ms_median"].to_numpy() / reference, index=runs.index, name="step_time_vs_joint")


def find_coefficients(runs: pd.DataFrame, warnings: list[str] | None = None) -> pd.DataFrame:
    """One row per (run, coefficient): the coefficient's mean over the run's epochs.

    Coefficients are the ``method.*`` columns of each run's ``metrics.jsonl`` other than
    ``method.loss.*`` (e.g. ``method.ogm.k.audio``, ``method.gblend.w.fused``). Columns:
    ``experiment, dataset, method, seed, coefficient, value``; unreadable files (and lines, see
    :func:`read_jsonl`) are skipped with a warning."""
    warnings = [] if warnings is None else warnings
    rows = []
    for run in runs.itertuples(index=False):
        path = Path(run.run_dir) / METRICS_FILE
        if not path.is_file():
            continue
        try:
            records = read_jsonl(path, warnings)
        except (OSError, ValueError) as exc:
            warnings.append(f"skipped {path}: {exc}")
            continue
        keys = sorted({k for r in records for k in r
                       if k.startswith(COEFFICIENT_PREFIX) and not k.startswith(COEFFICIENT_PREFIX + "loss.")})
        for key in keys:
            values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
            if values:
                rows.append({**{k: getattr(run, k) for k in IDENTITY},
                             "coefficient": key.removeprefix(COEFFICIENT_PREFIX), "value": sum(values) / len(values)})
    return pd.DataFrame(rows, columns=[*IDENTITY, "coefficient", "value"])
