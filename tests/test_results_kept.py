"""Nothing the user made is lost (issue 17, kind 9): `missing-modality` calls accumulate in the run's
results instead of overwriting them, an unreadable earlier file is refused rather than replaced, and
`report` keeps every readable line of a damaged metrics.jsonl / missing_modality.csv, naming the file
and line of the damage."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bogc_cli.report import comparison_plots, plots
from bogc_cli.report.aggregate import find_coefficients, find_missing, find_runs, read_jsonl
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "dataset.n_train=192", "--set", "dataset.n_val=64", "--set", "dataset.n_test=96",
        "--set", "train.epochs=3", "--set", "train.batch_size=32", "--set", "model.cnn_channels=[8,16]"]


def _bogc(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["bogc", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    proc = _bogc("train", "recipes/quickstart.yaml", "--out", out, *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "quickstart" / "synthetic" / "joint" / "seed0"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run (each test changes its files)."""
    copy = tmp_path / "results" / "quickstart" / "synthetic" / "joint" / "seed0"
    shutil.copytree(trained, copy)
    return copy


# ------------------------------------------------------------------ missing-modality accumulates
def test_a_second_fill_or_a_modality_subset_adds_to_the_earlier_rows(run, reliability):
    first = _bogc("missing-modality", run, "--rates", "0,0.5,1")
    assert first.returncode == 0, first.stderr
    earlier = pd.read_csv(run / "missing_modality.csv")
    assert len(earlier) == 9 + 4  # 3 modalities x 3 rates, and the 4 combinations at rate 1

    second = _bogc("missing-modality", run, "--fill", "mean-feature", "--modalities", "audio", "--rates", "0.5,1")
    assert second.returncode == 0, second.stderr
    assert "13 row(s) of earlier calls kept" in _flat(second.stdout)
    merged = pd.read_csv(run / "missing_modality.csv")
    assert len(merged) == 15
    default_fill = earlier["fill"].iloc[0]
    kept = merged[merged["fill"] == default_fill].sort_values(["missing", "rate"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, earlier.sort_values(["missing", "rate"]).reset_index(drop=True))
    assert set(merged.loc[merged["fill"] == "mean-feature", "rate"]) == {0.5, 1.0}

    third = _bogc("missing-modality", run, "--modalities", "image", "--rates", "0.3", "--seed", "5")
    assert third.returncode == 0 and len(pd.read_csv(run / "missing_modality.csv")) == 16  # another mask seed: added
    reliability("missing-modality calls merged into earlier results (no row lost)", 3)


def test_a_row_measured_again_replaces_the_earlier_one(run, capsys):
    args = ["missing-modality", run, "--modalities", "audio", "--rates", "0.5"]
    assert run_cli(capsys, *args)[0] == 0
    path = run / "missing_modality.csv"
    measured = pd.read_csv(path)
    path.write_text(measured.assign(accuracy=-1.0).to_csv(index=False))  # as if an older version had measured it
    assert run_cli(capsys, *args)[0] == 0
    again = pd.read_csv(path)
    assert len(again) == 1 and again["accuracy"].iloc[0] == measured["accuracy"].iloc[0]


def test_the_figure_is_drawn_from_the_merged_rows(run, capsys, monkeypatch):
    figures = {}
    real = plots.save_figure

    def keep(fig, path, pdf=True):
        figures[Path(path).name] = fig  # the last one drawn
        return real(fig, path, pdf)

    monkeypatch.setattr(plots, "save_figure", keep)
    assert run_cli(capsys, "missing-modality", run, "--modalities", "audio", "--rates", "0,1")[0] == 0
    default_fill = pd.read_csv(run / "missing_modality.csv")["fill"].iloc[0]
    assert run_cli(capsys, "missing-modality", run, "--modalities", "audio", "--rates", "0,1",
                   "--fill", "mean-feature")[0] == 0
    ax = figures["missing_modality.png"].axes[0]
    labels = {line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert labels == {f"audio / {default_fill}", "audio / mean-feature"}
    assert "fill" not in ax.get_title()  # the title no longer names one fill


def test_an_unreadable_earlier_table_is_refused_and_left_as_it_is(run, reliability):
    path = run / "missing_modality.csv"
    damaged = b"missing,rate,fill,mask_seed,accuracy\naudio,0.5,zero-feature,0,0.61\nimage,0.5,zer"
    path.write_bytes(damaged)
    proc = _bogc("missing-modality", run, "--rates", "0.5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = _flat(proc.stderr)
    assert str(path) in message and "line 3" in message and "move it away" in message
    assert path.read_bytes() == damaged
    reliability("damaged result files refused or read around (named with the line; nothing overwritten)")


def test_another_checkpoint_gets_files_of_its_own(run, capsys):
    assert run_cli(capsys, "missing-modality", run, "--rates", "1")[0] == 0
    best = (run / "missing_modality.csv").read_bytes()
    assert run_cli(capsys, "missing-modality", run / "last.pt", "--rates", "1")[0] == 0
    assert (run / "missing_modality-last.csv").is_file() and (run / "missing_modality-last.png").is_file()
    assert (run / "missing_modality.csv").read_bytes() == best
    from bogc_cli.engine.run_lock import existing_results

    assert {"missing_modality.pdf", "missing_modality-last.csv", "missing_modality-last.png"} <= set(
        existing_results(run))  # so `train --overwrite` removes them with the rest


# ------------------------------------------------------------------ report reads around damage
def test_report_keeps_the_other_epochs_of_a_truncated_metrics_line(run, reliability):
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert len(lines) == 3
    metrics.write_text("\n".join([lines[0], lines[1][: len(lines[1]) // 2], lines[2]]) + "\n")
    proc = _bogc("report", run.parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = _flat(proc.stderr)
    assert f"{metrics}, line 2: not valid JSON at column" in warning and "the other 2 of 3 are used" in warning
    assert warning.count(f"{metrics}, line 2") == 1  # read for several figures, named once
    frame = plots.read_metrics(metrics, [])
    assert frame["epoch"].tolist() == [1, 3]
    reliability("damaged result files refused or read around (named with the line; nothing overwritten)")


def test_every_reader_names_the_line_and_keeps_the_rest(tmp_path, reliability):
    run = tmp_path / "exp" / "d" / "ogm_ge" / "seed0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"experiment": "exp", "dataset": "d", "method": "ogm_ge", "seed": 0,
                                               "accuracy": 0.8}))
    good = [json.dumps({"epoch": e, "method.ogm.k.a": 0.1 * e}) for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_bytes("\n".join([good[0], "[1, 2]", good[1], "\xff", good[2]]).encode("latin-1"))
    warnings: list[str] = []
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl", warnings)] == [1, 2, 3]
    assert [w.split(": ", 1)[0].rsplit(", ", 1)[1] for w in warnings] == ["line 2", "line 4"]
    assert "not an object" in warnings[0] and "not UTF-8" in warnings[1]
    runs = find_runs(tmp_path)
    coefficients = find_coefficients(runs, [])
    assert coefficients["value"].tolist() == pytest.approx([0.2])  # the mean over all three epochs

    (run / "missing_modality.csv").write_text("missing,rate,fill,accuracy\naudio,0,zero,0.8\naudio,0.5,zero,0.7\n"
                                              "audio,1.0,zero,0.5\naudio,1.0,z")
    warnings = []
    missing = find_missing(tmp_path, warnings, runs=runs)
    assert missing["rate"].tolist() == [0.0, 0.5, 1.0]
    assert len(warnings) == 1 and "line(s) 5" in warnings[0] and "the other 3 row(s) are used" in warnings[0]

    broken = tmp_path / "exp" / "d" / "joint" / "seed0"
    broken.mkdir(parents=True)
    (broken / "eval.json").write_text('{"experiment": "exp", "dataset": "d", "meth')
    warnings = []
    find_runs(tmp_path, warnings)
    assert warnings and "not valid JSON at line 1, column 39" in warnings[0] and str(broken) in warnings[0]
    reliability("damaged result files refused or read around (named with the line; nothing overwritten)", 3)


def test_a_metrics_file_with_no_readable_line_is_skipped_with_its_reason(tmp_path):
    path = tmp_path / "seed0" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"epoch": 1, "val_acc')
    warnings: list[str] = []
    assert comparison_plots._read_metrics(pd.DataFrame([{"run_dir": str(path.parent), "method": "m", "seed": 0}]),
                                          warnings) == []
    assert warnings == [f"skipped {path}: no line is a JSON object (line 1: not valid JSON at column 14 "
                        "(Unterminated string))"]
