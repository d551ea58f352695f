"""bogc_cli.report: aggregation, tables (md/csv/tex/rich), robustness tables and plots.

Every test builds a small results tree by hand with known numbers, so expected cells are exact.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from bogc_cli.errors import UserError
from bogc_cli.report import run_report
from bogc_cli.report.aggregate import find_missing, find_runs, mean_std
from bogc_cli.report.plots import plot_training_curves
from bogc_cli.report.tables import (
    format_cell,
    load_tables,
    method_sort_key,
    validate_formats,
    write_tables,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    root: Path,
    dataset: str,
    method: str,
    seed: int,
    accuracy: float,
    experiment: str = "exp",
    **extra,
) -> Path:
    """Write ``root/<experiment>/<dataset>/<method>/seed<N>/eval.json``; return the run dir."""
    run_dir = root / experiment / dataset / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    record = {
        "experiment": experiment, "dataset": dataset, "method": method, "seed": seed,
        "split": "test", "checkpoint": "best.pt", "epoch": 7, "n": 100,
        "accuracy": accuracy, **extra,
    }
    (run_dir / "eval.json").write_text(json.dumps(record))
    return run_dir


def write_missing(run_dir: Path, rows: list[tuple[str, float, float]], seed: int) -> None:
    """Write a missing_modality.csv with (missing, rate, accuracy) rows."""
    frame = pd.DataFrame(rows, columns=["missing", "rate", "accuracy"])
    frame = frame.assign(fill="zero", seed=seed, macro_f1=frame["accuracy"] - 0.01, n=100)
    frame[["missing", "rate", "fill", "seed", "accuracy", "macro_f1", "n"]].to_csv(
        run_dir / "missing_modality.csv", index=False
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two datasets, four methods; bogc on avmnist has 3 seeds (0.90, 0.92, 0.94)."""
    root = tmp_path / "results"
    for seed, acc in zip((0, 1, 2), (0.90, 0.92, 0.94)):
        run = write_run(
            root, "avmnist", "bogc", seed, acc, macro_f1=acc - 0.05,
            unimodal_accuracy={"audio": 0.40 + seed / 100, "image": 0.60},
        )
        write_missing(run, [("audio", 0.0, acc), ("audio", 0.5, acc - 0.1 - seed / 100),
                            ("image", 0.0, acc), ("image", 0.5, acc - 0.2),
                            ("audio+image", 1.0, 0.1)], seed)
    write_run(root, "avmnist", "joint", 0, 0.912, macro_f1=0.9,
              unimodal_accuracy={"audio": 0.2, "image": 0.7})
    write_run(root, "avmnist", "unimodal-audio", 0, 0.5, unimodal_accuracy={"audio": 0.5})
    write_run(root, "cremad", "my_method", 0, 0.7)  # no macro_f1, no unimodal heads
    return root


def test_mean_std_sample_std_and_single_value() -> None:
    df = pd.DataFrame({"m": ["a", "a", "a", "b"], "d": ["x"] * 4, "v": [0.90, 0.92, 0.94, 0.5]})
    stats = mean_std(df, "v", ["m"], ["d"]).set_index("m")
    assert stats.loc["a", "mean"] == pytest.approx(0.92)
    assert stats.loc["a", "std"] == pytest.approx(0.02)  # ddof=1
    assert stats.loc["a", "n"] == 3
    assert np.isnan(stats.loc["b", "std"]) and stats.loc["b", "n"] == 1


def test_format_cell() -> None:
    assert format_cell(0.92, 0.02, 3) == "0.920 ± 0.020"
    assert format_cell(0.912, float("nan"), 1) == "0.912"
    assert format_cell(float("nan"), float("nan"), 0) == "-"


def test_method_order() -> None:
    methods = ["ogm_ge", "unimodal-image", "bogc", "uniform", "unimodal-audio", "joint"]
    assert sorted(methods, key=method_sort_key) == [
        "joint", "uniform", "unimodal-audio", "unimodal-image", "bogc", "ogm_ge",
    ]


def test_find_runs_columns_and_missing_optional_keys(tree: Path) -> None:
    runs = find_runs(tree)
    assert len(runs) == 6
    for column in ["experiment", "dataset", "method", "seed", "accuracy", "macro_f1",
                   "peak_memory_mb", "unimodal_accuracy.audio", "unimodal_accuracy.image",
                   "run_dir"]:
        assert column in runs.columns
    cremad = runs[runs["dataset"] == "cremad"].iloc[0]
    assert np.isnan(cremad["macro_f1"]) and np.isnan(cremad["peak_memory_mb"])


def test_identity_comes_from_eval_json_not_path(tmp_path: Path) -> None:
    run = write_run(tmp_path, "avmnist", "bogc", 0, 0.9)
    moved = tmp_path / "somewhere" / "else"
    moved.parent.mkdir()
    run.rename(moved)
    runs = find_runs(tmp_path)
    assert runs.loc[0, ["dataset", "method", "seed"]].tolist() == ["avmnist", "bogc", 0]


def test_accuracy_table_layout_and_cells(tree: Path) -> None:
    tables = {t.name: t for t in load_tables(tree)}
    cells = tables["accuracy"].cells()
    assert list(cells.index) == ["joint", "unimodal-audio", "bogc", "my_method"]
    assert list(cells.columns) == ["avmnist", "cremad"]
    assert cells.loc["bogc", "avmnist"] == "0.920 ± 0.020"
    assert cells.loc["joint", "avmnist"] == "0.912 (n=1)"  # one seed: no ± part; n said, the others have 2
    assert cells.loc["bogc", "cremad"] == "-"
    assert tables["macro_f1"].cells().loc["bogc", "avmnist"] == "0.870 ± 0.020"


def test_unimodal_table(tree: Path) -> None:
    cells = {t.name: t for t in load_tables(tree)}["unimodal"].cells()
    assert list(cells.columns) == ["avmnist/audio", "avmnist/image"]
    assert cells.loc["bogc", "avmnist/audio"] == "0.410 ± 0.010"
    assert cells.loc["unimodal-audio", "avmnist/image"] == "-"
    assert "my_method" not in cells.index


def test_robustness_tables(tree: Path) -> None:
    tables = {t.name: t for t in load_tables(tree)}
    single = tables["robustness_avmnist"].cells()
    assert single.index.name == "method / missing"
    assert list(single.index) == ["bogc / audio", "bogc / image"]
    assert list(single.columns) == ["0", "0.5", "AUC"]
    assert single.loc["bogc / audio", "0.5"] == "0.810 ± 0.010"
    assert single.loc["bogc / image", "0.5"] == "0.720 ± 0.020"
    stats = tables["robustness_avmnist"].stats.set_index(["missing", "rate"])["mean"]
    # two rates: the trapezoid divided by the range is the mean of the two accuracies
    assert stats[("audio", "AUC")] == pytest.approx((stats[("audio", 0.0)] + stats[("audio", 0.5)]) / 2)
    subsets = tables["robustness_avmnist_subsets"].cells()
    assert subsets.loc["bogc", "audio+image"] == "0.100 ± 0.000"
    assert "robustness_cremad" not in tables


def test_find_missing_adds_identity(tree: Path) -> None:
    missing = find_missing(tree)
    assert len(missing) == 15
    assert set(missing["method"]) == {"bogc"} and set(missing["seed"]) == {0, 1, 2}
    assert {"experiment", "dataset", "run_dir", "fill"} <= set(missing.columns)


def test_write_tables_formats(tree: Path) -> None:
    paths = write_tables(tree)
    names = {p.name for p in paths}
    assert {"accuracy.md", "accuracy.csv", "accuracy.tex", "robustness_avmnist.csv"} <= names
    assert all(p.parent == tree / "tables" and p.stat().st_size > 0 for p in paths)
    assert not list((tree / "tables").glob(".*.tmp"))

    csv = pd.read_csv(tree / "tables" / "accuracy.csv")
    assert list(csv.columns) == ["method", "dataset", "mean", "std", "n"]
    assert all(pd.api.types.is_numeric_dtype(csv[c]) for c in ("mean", "std", "n"))
    bogc = csv[(csv["method"] == "bogc") & (csv["dataset"] == "avmnist")].iloc[0]
    assert (bogc["mean"], bogc["std"], bogc["n"]) == (pytest.approx(0.92), pytest.approx(0.02), 3)

    md = (tree / "tables" / "accuracy.md").read_text()
    assert "| bogc " in md and "0.920 ± 0.020" in md and "|:--" in md


def test_latex_escaping_and_booktabs(tree: Path) -> None:
    write_tables(tree, formats=["tex"])
    tex = (tree / "tables" / "accuracy.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"my\_method" in tex and "my_method" not in tex
    assert r"0.920 $\pm$ 0.020" in tex and "±" not in tex
    assert r"\textbf{0.700}" in tex  # the best mean of its column (my_method on cremad)


def test_validate_formats() -> None:
    assert validate_formats("md, CSV") == ("md", "csv")
    with pytest.raises(UserError, match="valid formats: md, csv, tex"):
        validate_formats("md,xls")
    with pytest.raises(UserError):
        validate_formats("")


def test_corrupt_eval_json_is_skipped_with_warning(tree: Path) -> None:
    bad = tree / "exp" / "avmnist" / "broken" / "seed0"
    bad.mkdir(parents=True)
    (bad / "eval.json").write_text("{not json")
    no_id = tree / "exp" / "avmnist" / "noid" / "seed0"
    no_id.mkdir(parents=True)
    (no_id / "eval.json").write_text(json.dumps({"accuracy": 0.5}))
    result = run_report(tree, "md", plots=False)
    assert result.n_runs == 6
    assert len(result.warnings) == 2
    assert any("broken" in w for w in result.warnings)
    no_identity = "missing identity key(s): experiment, dataset, method, seed"
    assert any(no_identity in w for w in result.warnings)


def test_empty_tree_and_missing_folder_raise_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no finished runs found.*seed<N>.*eval\.json"):
        run_report(tmp_path / "empty")
    with pytest.raises(UserError, match="no such folder"):
        run_report(tmp_path / "nope")


def test_run_report_rich_tables_and_plots(tree: Path) -> None:
    curves = tree / "exp" / "avmnist" / "bogc" / "seed0" / "metrics.jsonl"
    curves.write_text("".join(
        json.dumps({"epoch": e, "train_loss": 1 / (e + 1), "val_accuracy": 0.5 + e / 20,
                    "val_unimodal_accuracy": {"audio": 0.3 + e / 40}}) + "\n" for e in range(5)
    ))
    result = run_report(tree, ("md",))
    plots = tree / "plots"
    assert {plots / "missing_avmnist_bogc.png", plots / "missing_avmnist_bogc.pdf",
            plots / "curves_avmnist_bogc.png"} <= set(result.paths)
    png = (plots / "missing_avmnist_bogc.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert not list(plots.glob(".*.tmp"))
    console = Console(file=StringIO(), width=200)
    for table in result.rich_tables:
        console.print(table)
    text = console.file.getvalue()
    assert "0.920 ± 0.020" in text and "bogc / audio" in text


def test_training_curves_skip_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "seed0" / "metrics.jsonl"
    good.parent.mkdir()
    good.write_text('{"epoch": 0, "val_accuracy": 0.5, "val_unimodal_accuracy.audio": 0.3}\n'
                    '{"epoch": 1, "val_accuracy": 0.6, "val_unimodal_accuracy.audio": 0.35}\n')
    bad = tmp_path / "seed1" / "metrics.jsonl"
    bad.parent.mkdir()
    bad.write_text("garbage\n")
    warnings: list[str] = []
    written = plot_training_curves([good, bad], tmp_path / "curves.png", warnings=warnings)
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert len(written) == 2 and len(warnings) == 1 and "seed1" in warnings[0]
    assert plot_training_curves([bad], tmp_path / "none.png") == []


def test_duplicate_runs_and_several_experiments(tmp_path: Path) -> None:
    write_run(tmp_path, "avmnist", "bogc", 0, 0.9, experiment="a")
    copy = write_run(tmp_path / "copy", "avmnist", "bogc", 0, 0.5, experiment="a")
    write_run(tmp_path, "avmnist", "bogc", 0, 0.8, experiment="b")
    warnings: list[str] = []
    names = {t.name: t for t in load_tables(tmp_path, warnings)}
    assert len(warnings) == 1 and str(copy) in warnings[0]
    assert names["a_accuracy"].cells().loc["bogc", "avmnist"] == "0.900"
    assert names["b_accuracy"].cells().loc["bogc", "avmnist"] == "0.800"


def test_validation_accuracy_table_only_when_recorded(tmp_path: Path) -> None:
    from bogc_cli.report.aggregate import find_runs
    from bogc_cli.report.tables import build_tables

    for seed, (val, test) in enumerate([(0.80, 0.70), (0.90, 0.72)]):
        write_run(tmp_path, "d", "bogc", seed, test, val_accuracy=val)
    tables = {t.name: t for t in build_tables(find_runs(tmp_path), pd.DataFrame())}
    assert "0.850 ± 0.071" in tables["val_accuracy"].to_markdown()
    assert "0.710 ± 0.014" in tables["accuracy"].to_markdown()
    other = tmp_path / "other"
    write_run(other, "d", "joint", 0, 0.5)
    assert "val_accuracy" not in {t.name for t in build_tables(find_runs(other), pd.DataFrame())}


def test_methods_table_puts_step_time_relative_to_joint_beside_accuracy(tmp_path: Path) -> None:
    for seed, (acc, ms) in enumerate([(0.90, 10.0), (0.92, 12.0)]):
        write_run(tmp_path, "ds", "joint", seed, acc, step_time_ms_median=ms)
    for seed, ms in enumerate([16.5, 17.5]):
        write_run(tmp_path, "ds", "ogm_ge", seed, 0.95, step_time_ms_median=ms)
    table = {t.name: t for t in load_tables(tmp_path)}["methods"]
    cells = table.cells()
    assert list(cells.columns) == ["ds", "ds step/joint", "ds step ms"]  # cost columns of what the runs hold
    assert cells.loc["joint", "ds"] == "0.910 ± 0.014" and cells.loc["joint", "ds step ms"] == "11.000 ± 1.414"
    # joint's mean step is 11 ms: 16.5/11 = 1.5, 17.5/11 = 1.5909
    assert cells.loc["ogm_ge", "ds step/joint"] == format_cell(np.mean([1.5, 17.5 / 11]), np.std([1.5, 17.5 / 11], ddof=1), 2)


def test_coefficients_table_averages_over_epochs_then_seeds(tmp_path: Path) -> None:
    for seed, ks in enumerate([(0.2, 0.4), (0.6, 0.8)]):
        run = write_run(tmp_path, "ds", "ogm_ge", seed, 0.9)
        lines = [{"epoch": e + 1, "method.ogm.k.a": k, "method.loss.fused": 1.0} for e, k in enumerate(ks)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = {t.name: t for t in load_tables(tmp_path)}["coefficients"]
    cells = table.cells()
    assert list(cells.index) == ["ogm_ge / ogm.k.a"]  # losses are not coefficients
    assert cells.loc["ogm_ge / ogm.k.a", "ds"] == format_cell(0.5, np.std([0.3, 0.7], ddof=1), 2)
