"""Every figure the tool draws, for 1, 2 and many epochs, one seed and several, one rate and several
(issue 17, kind 8): each point is marked (a 1-epoch run drew empty axes), epochs are integer ticks (a
1-epoch run had 0.96 ... 1.04), runs of different experiments are never averaged into one curve, a
band shows only where several seeds measured, and a point fewer seeds measured is told apart.

The figures are inspected through matplotlib's objects: ``save_figure`` is wrapped so each test sees
the figure that was written (the PNG and PDF are still written, by the real function)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from bogc_cli.report import comparison_plots, plots
from bogc_cli.report.plots import plot_bogc_diagnostics, plot_missing_modality, plot_training_curves

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def drawn(monkeypatch):
    """The figures saved while the test runs, by file name."""
    figures = {}
    real = plots.save_figure

    def keep(fig, path_png, pdf=True):
        figures[Path(path_png).name] = fig
        return real(fig, path_png, pdf)

    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(comparison_plots, "save_figure", keep)
    return figures


def _metrics(run_dir: Path, epochs: int, seed: int = 0, bogc: bool = False) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for e in range(1, epochs + 1):
        record = {"epoch": e, "train_loss": 2 / e, "val_accuracy": 0.5 + 0.3 * e / epochs + rng.normal(0, 0.01),
                  "val_unimodal_accuracy.audio": 0.4 + 0.2 * e / epochs, "val_unimodal_accuracy.image": 0.3}
        if bogc:
            record.update({"method.bogc.uncertainty.audio": 0.1 + 0.01 * e, "method.bogc.uncertainty.image": 0.2,
                           "method.bogc.weight_mean.audio": 1.0, "method.bogc.weight_std.audio": 0.3,
                           "method.bogc.clipped": 0.01})
        lines.append(json.dumps(record))
    path = run_dir / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _data_lines(ax):
    """The lines that carry data (not the error-bar pieces)."""
    return [line for line in ax.get_lines() if len(line.get_xdata()) and line.get_label() and
            not line.get_label().startswith("_")]


def _integer_epoch_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    return ticks


@pytest.mark.parametrize("epochs", [1, 2, 150])
def test_training_curves_mark_points_on_integer_epochs(tmp_path, drawn, epochs, reliability):
    paths = [_metrics(tmp_path / f"seed{s}", epochs, s) for s in range(2)]
    assert plot_training_curves(paths, tmp_path / "curves.png")
    ax = drawn["curves.png"].axes[0]
    lines = _data_lines(ax)
    assert [line.get_label() for line in lines] == ["fused", "audio", "image"]  # one line per head, not per seed
    for line in lines:
        assert line.get_marker() == "o" and len(line.get_xdata()) == epochs
        every = line.get_markevery()
        assert every == 1 if epochs <= plots.MAX_MARKERS else 1 < every <= epochs // 10
    ticks = _integer_epoch_ticks(ax)
    if epochs == 1:
        lo, hi = ax.get_xlim()
        assert ticks == [1.0] and lo < 1 < hi and hi - lo >= 0.9  # the point in the middle, not on an edge
    assert any("2 runs" in t.get_text() for t in ax.texts)
    reliability("figures checked for marked points and integer epoch ticks (1, 2, many epochs)")


def test_training_curves_of_one_run_say_so_and_draw_no_band(tmp_path, drawn):
    assert plot_training_curves([_metrics(tmp_path / "seed0", 3)], tmp_path / "c.png")
    ax = drawn["c.png"].axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert [t.get_text() for t in ax.texts] == ["1 run"]


def test_a_run_that_stopped_early_shows_its_epochs_apart(tmp_path, drawn):
    """Seeds of 6 and 4 epochs: epochs 5-6 average one run -- no band there, hollow markers."""
    paths = [_metrics(tmp_path / "seed0", 6), _metrics(tmp_path / "seed1", 4, 1)]
    plot_training_curves(paths, tmp_path / "c.png")
    ax = drawn["c.png"].axes[0]
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    assert hollow and list(hollow[0].get_xdata()) == [5.0, 6.0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert bands and all(max(p.vertices[:, 0].max() for p in b.get_paths()) <= 4 for b in bands)
    assert any("hollow" in t.get_text() for t in ax.texts)


@pytest.mark.parametrize("rates", [[0.5], [0.0, 1.0], [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]])
@pytest.mark.parametrize("seeds", [1, 3])
def test_missing_modality_figure_for_one_or_many_rates_and_seeds(tmp_path, drawn, rates, seeds, reliability):
    rows = [{"missing": m, "rate": r, "fill": "zero-input", "seed": s, "accuracy": 0.8 - r * (0.5 if m == "a" else 0.1)
             + s / 100} for m in ("a", "b") for r in rates for s in range(seeds)]
    plot_missing_modality(pd.DataFrame(rows), tmp_path / "m.png", "t")
    ax = drawn["m.png"].axes[0]
    lines = _data_lines(ax)
    assert [line.get_label() for line in lines] == ["a", "b"]
    assert all(line.get_marker() == "o" and len(line.get_xdata()) == len(rates) for line in lines)
    assert ax.get_xlim() == pytest.approx((-0.04, 1.04))  # rates always on [0, 1]
    assert list(ax.get_xticks()) == pytest.approx(rates)
    has_band = bool([c for c in ax.collections if isinstance(c, PolyCollection)])
    has_bars = bool([c for c in ax.containers if isinstance(c, ErrorbarContainer)])
    assert (has_band or has_bars) == (seeds > 1) and has_bars == (seeds > 1 and len(rates) == 1)
    notes = [t.get_text() for t in ax.texts]
    assert notes == (["mean ± std over 3 seeds"] if seeds > 1 else [])
    reliability("figures checked for marked points and integer epoch ticks (1, 2, many epochs)")


def test_missing_modality_figure_keeps_fills_apart(tmp_path, drawn):
    rows = [{"missing": "a", "rate": r, "fill": f, "seed": 0, "accuracy": 0.8 - r * (0.5 if f == "zero" else 0.2)}
            for f in ("zero", "mean") for r in (0.0, 1.0)]
    plot_missing_modality(pd.DataFrame(rows), tmp_path / "m.png", "t")
    ax = drawn["m.png"].axes[0]
    lines = {line.get_label(): line for line in _data_lines(ax)}
    assert set(lines) == {"a / mean", "a / zero"}  # never one line averaging the two fills
    assert list(lines["a / zero"].get_ydata()) == pytest.approx([0.8, 0.3])
    assert lines["a / zero"].get_color() == lines["a / mean"].get_color()  # one colour per modality
    assert lines["a / zero"].get_linestyle() != lines["a / mean"].get_linestyle()  # a line style per fill


@pytest.mark.parametrize("epochs", [1, 2, 12])
def test_bogc_diagnostics_mark_points_on_integer_epochs(tmp_path, drawn, epochs):
    records = [json.loads(line) for line in _metrics(tmp_path, epochs, bogc=True).read_text().splitlines()]
    plot_bogc_diagnostics(records, tmp_path / "d.png")
    for ax in drawn["d.png"].axes:
        _integer_epoch_ticks(ax)
        assert all(line.get_marker() == "o" for line in _data_lines(ax) if line.get_label() != "_nolegend_")


def _tree(root: Path, experiment: str, epochs: int, seeds: int) -> None:
    for method in ("joint", "bogc"):
        for seed in range(seeds):
            run = root / experiment / "synthetic" / method / f"seed{seed}"
            _metrics(run, epochs, seed, bogc=method == "bogc")
            (run / "eval.json").write_text(json.dumps({"experiment": experiment, "dataset": "synthetic",
                                                       "method": method, "seed": seed, "accuracy": 0.7}))
            pd.DataFrame([{"missing": m, "rate": r, "fill": "zero-input", "mask_seed": 0, "accuracy": 0.7 - r / 3}
                          for m in ("audio", "image") for r in (0.0, 0.5, 1.0)]).to_csv(
                run / "missing_modality.csv", index=False)


def test_comparison_figures_keep_experiments_apart_and_mark_a_single_epoch(tmp_path, drawn, reliability):
    """One tree, a 1-epoch experiment and a 5-epoch one: each gets its own figures, nothing averaged across."""
    from bogc_cli.report import run_report

    _tree(tmp_path, "short", 1, 1)
    _tree(tmp_path, "long", 5, 2)
    run_report(tmp_path, "md")
    for experiment, epochs in (("short", 1), ("long", 5)):
        for kind in ("compare_unimodal", "bogc_uncertainty"):
            fig = drawn[f"{kind}_{experiment}_synthetic.png"]
            assert f"[{experiment}]" in fig._suptitle.get_text()
            for ax in fig.axes:
                ticks = _integer_epoch_ticks(ax)
                assert max(ticks) <= epochs
                for line in _data_lines(ax):
                    assert line.get_marker() == "o" and len(line.get_xdata()) == epochs
        missing = drawn[f"compare_missing_{experiment}_synthetic.png"]
        assert all(line.get_marker() == "o" for ax in missing.axes for line in _data_lines(ax))
    assert drawn["curves_short_synthetic_joint.png"].axes[0].get_xticks().tolist() == [1.0]
    assert not [name for name in drawn if name in ("compare_unimodal_synthetic.png", "compare_missing_synthetic.png")]
    reliability("figures checked for marked points and integer epoch ticks (1, 2, many epochs)")


def test_report_of_one_epoch_runs_through_the_real_entry_point(tmp_path):
    """`bogc report` on 1-epoch runs: every figure written, exit 0 (their content is checked above)."""
    _tree(tmp_path, "one", 1, 1)
    proc = subprocess.run(["bogc", "report", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"curves_synthetic_joint.png", "curves_synthetic_bogc.png", "missing_synthetic_bogc.png",
            "compare_unimodal_synthetic.png", "compare_missing_synthetic.png", "bogc_uncertainty_synthetic.png"} <= names
