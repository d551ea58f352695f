"""Missing-modality evaluation: accuracy (the run's selection metric: micro-F1 for multilabel, MAE for
regression runs, ``score`` in each row) when a seeded fraction of test samples lacks a modality.

For each modality m and rate r, the first ``round(r * N)`` rows of a seeded permutation (one
per modality) miss m, so the missing sets are nested as r grows. At rate 1.0 every non-empty
subset of modalities is also evaluated missing together.

Results accumulate: each call's rows are merged into the run's ``missing_modality.csv`` by
(missing, rate, fill, mask_seed) -- a row measured again replaces the earlier one, every other
earlier row is kept -- and ``missing_modality.png`` is drawn from the merged table. So a second
``--fill``, a ``--modalities`` subset or more ``--rates`` add to what is there. A checkpoint other
than ``best.pt`` gets files of its own (``missing_modality-last.csv``), as ``bogc eval`` does.
"""

from __future__ import annotations

import fcntl
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from bogc_cli.atomic import atomic_path
from bogc_cli.engine.evaluate import predict
from bogc_cli.engine.inference import LoadedRun
from bogc_cli.errors import UserError
from bogc_cli.tasks.metrics import TABLE_METRICS, task_metrics

DEFAULT_RATES = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)


def missing_masks(n: int, modalities: list[str], rate: float, missing: tuple[str, ...], all_modalities: list[str],
                  seed: int) -> dict[str, np.ndarray]:
    """``present[m]``: bool ``[n]``; modalities in ``missing`` lack ``round(rate * n)`` seeded rows."""
    present = {m: np.ones(n, dtype=bool) for m in all_modalities}
    k = int(round(rate * n))
    for m in missing:
        # one permutation per modality, independent of the rate and of the other modalities
        perm = np.random.default_rng([seed, all_modalities.index(m)]).permutation(n)
        present[m][perm[:k]] = False
    return present


def evaluate_missing(run: LoadedRun, modalities: list[str] | None, rates: list[float], fill: str | None,
                     seed: int, split: str = "test") -> pd.DataFrame:
    """One row per (missing set, rate): missing, rate, fill, mask_seed, the task's metrics (classification:
    accuracy, macro_f1; multilabel and regression: ``tasks.metrics.TABLE_METRICS``), n, and ``metric`` /
    ``score``: the run's selection metric (``tasks.TaskSpec.metric``) and its value, which the tables and the
    area under the curve read."""
    model = run.model
    all_mods = list(model.modalities)
    chosen = modalities or all_mods
    bad = [m for m in chosen if m not in all_mods]
    if bad:
        raise UserError(f"--modalities {','.join(bad)}: not a modality of this run; valid: {', '.join(all_mods)}")
    bad_rates = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad_rates:
        raise UserError(f"--rates {bad_rates}: rates must lie in [0, 1]")
    if fill is not None:
        model.fill = fill
    loader = run.loader(split)
    n = len(run.parts.data.splits[split])
    classes = run.parts.data.classes
    spec = model.task
    settings = [((m,), r) for m in chosen for r in rates]
    if len(chosen) > 1:
        settings += [(subset, 1.0) for k in range(2, len(chosen) + 1) for subset in combinations(chosen, k)]
    rows = []
    for missing, rate in settings:
        present = missing_masks(n, chosen, rate, missing, all_mods, seed)
        p = predict(model, loader, run.device, run.autocast, present=present)
        metrics = task_metrics(spec.task, p.labels, p.fused, classes)
        rows.append({"missing": "+".join(missing), "rate": rate, "fill": model.fill, "mask_seed": seed,
                     **{k: metrics[k] for k in TABLE_METRICS[spec.task]}, "n": metrics["n"],
                     "metric": spec.metric, "score": metrics[spec.metric]})
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


RESULT_KEY = ["missing", "rate", "fill", "mask_seed"]
"""What one row measures; rows of later calls replace earlier rows with the same key."""


def merge_results(earlier: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``earlier`` rows and ``new`` ones, one row per :data:`RESULT_KEY` (the newest), sorted by it."""
    if earlier is None or earlier.empty:
        merged = new
    else:
        merged = pd.concat([earlier, new], ignore_index=True).drop_duplicates(RESULT_KEY, keep="last")
    order = merged["missing"].str.count(r"\+")  # single modalities first, then the combinations
    return (merged.assign(_k=order).sort_values(["_k", "missing", "fill", "mask_seed", "rate"], kind="stable")
            .drop(columns="_k").reset_index(drop=True))


class MissingResults:
    """The files one run's missing-modality calls accumulate into: ``<run>/missing_modality.csv`` and
    ``.png``/``.pdf`` for ``best.pt`` (``missing_modality-<stem>.*`` for another checkpoint).

    ``open`` reads the rows already there first, so an unreadable file is reported before any
    evaluation (``UserError``: it is never overwritten); ``add`` merges and writes under a lock, so
    two calls at once keep each other's rows."""

    def __init__(self, run: LoadedRun):
        self.run = run
        stem = "missing_modality" if run.checkpoint.name == "best.pt" else f"missing_modality-{run.checkpoint.stem}"
        self.csv = run.run_dir / f"{stem}.csv"
        self.png = run.run_dir / f"{stem}.png"
        self._lock = run.run_dir / f".{stem}.lock"

    @classmethod
    def open(cls, run: LoadedRun) -> "MissingResults":
        results = cls(run)
        results.earlier()
        return results

    def earlier(self) -> pd.DataFrame | None:
        """The rows already in the CSV (None when there is none)."""
        if not self.csv.is_file():
            return None
        try:
            df = pd.read_csv(self.csv)
            absent = [c for c in RESULT_KEY if c not in df.columns]
            if absent:
                raise ValueError(f"no {', '.join(absent)} column")
            if df[RESULT_KEY].isna().any().any():
                bad = df.index[df[RESULT_KEY].isna().any(axis=1)][0] + 2
                raise ValueError(f"line {bad} is incomplete")
        except (OSError, ValueError) as exc:  # pandas' ParserError is a ValueError
            raise UserError(f"{self.csv} holds earlier missing-modality results but cannot be read ({exc}); "
                            "this call would add its rows to them: move it away (or repair it) and run again") from None
        return df.astype({"missing": str, "fill": str})

    def add(self, new: pd.DataFrame) -> pd.DataFrame:
        """Merge ``new`` rows into the CSV, redraw the PNG from the merged rows; returns the merged table."""
        with open(self._lock, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another call at once waits, then merges with these rows
            merged = merge_results(self.earlier(), new)
            write_csv(merged, self.csv)
            self._plot(merged)
        return merged

    def _plot(self, merged: pd.DataFrame) -> None:
        from bogc_cli.fusion import method_label
        from bogc_cli.report.plots import plot_missing_modality

        recipe = self.run.recipe
        fills = sorted(merged["fill"].unique())
        title = (f"{recipe.dataset_label()} / {method_label(recipe)} / seed {recipe.seed}"
                 + (f" (fill {fills[0]})" if len(fills) == 1 else ""))
        single = merged[~merged["missing"].str.contains("+", regex=False)]
        if not single.empty:
            plot_missing_modality(single.assign(seed=recipe.seed), self.png, title)
