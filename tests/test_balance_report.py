"""``bogc report`` on the balance metrics: the imbalance, probe and calibration tables, the cost columns of
the methods table, and the contribution and reliability figures, from hand-written eval.json files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bogc_cli.report import run_report
from bogc_cli.report.balance_plots import pool_bins
from bogc_cli.report.tables import format_cell, load_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bins(count, accuracy, confidence):
    pad = 15 - len(count)
    return {"count": count + [0] * pad, "accuracy": accuracy + [None] * pad, "confidence": confidence + [None] * pad}


def write_run(root: Path, dataset: str, method: str, seed: int, phi: dict, imbalance: float, probe: dict,
              ece: float, experiment: str = "exp", **extra) -> Path:
    run = root / experiment / dataset / method / f"seed{seed}"
    run.mkdir(parents=True)
    record = {
        "experiment": experiment, "dataset": dataset, "method": method, "seed": seed, "accuracy": 0.8, "n": 10,
        "contribution": {"fill": "zero-feature",
                         "accuracy": {"shapley": phi, "imbalance_degree": imbalance, "full": 0.8, "empty": 0.1},
                         "true_class_probability": {"shapley": {m: v / 2 for m, v in phi.items()},
                                                    "imbalance_degree": imbalance, "full": 0.5, "empty": 0.1},
                         "subsets": {}},
        "linear_probe": {"accuracy": probe, "C": {m: 1.0 for m in probe}},
        "calibration": {"ece": ece, "nll": 2 * ece, "brier": 3 * ece, "bins": 15,
                        "reliability": bins([2, 8], [0.5, 0.75], [0.05, 0.1])},
        "parameters": 2_000_000, "forward_flops_per_sample": 3.5e6, "step_time_ms_median": 10.0 + seed,
        "peak_memory_mb": 1024.0, **extra,
    }
    (run / "eval.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for seed, (a, v) in enumerate([(0.6, 0.1), (0.4, 0.3)]):
        write_run(tmp_path, "avd", "joint", seed, {"audio": a, "visual": v}, abs(a - v) / (a + v),
                  {"audio": 0.5 + seed / 10, "visual": 0.9}, ece=0.1 * (seed + 1))
        write_run(tmp_path, "avd", "uniform", seed, {"audio": 0.35, "visual": 0.35}, 0.0,
                  {"audio": 0.8, "visual": 0.9}, ece=0.05)
    return tmp_path


def test_imbalance_probe_and_calibration_tables(tree: Path) -> None:
    tables = {t.name: t for t in load_tables(tree)}
    imb = tables["imbalance"].cells()
    assert list(imb.columns) == ["avd: audio", "avd: visual", "avd: imbalance"]
    assert imb.loc["joint", "avd: audio"] == format_cell(0.5, np.std([0.6, 0.4], ddof=1), 2)
    assert imb.loc["joint", "avd: imbalance"] == format_cell(np.mean([5 / 7, 1 / 7]), np.std([5 / 7, 1 / 7], ddof=1), 2)
    assert imb.loc["uniform", "avd: imbalance"] == "0.000 ± 0.000"
    assert tables["imbalance_probability"].cells().loc["uniform", "avd: audio"] == "0.175 ± 0.000"
    probe = tables["probe"].cells()
    assert probe.loc["joint", "avd/audio"] == "0.550 ± 0.071" and probe.loc["uniform", "avd/audio"] == "0.800 ± 0.000"
    cal = tables["calibration"].cells()
    assert list(cal.columns) == ["avd: ECE", "avd: NLL", "avd: Brier"]
    assert cal.loc["joint", "avd: ECE"] == "0.150 ± 0.071" and cal.loc["joint", "avd: Brier"] == "0.450 ± 0.212"
    methods = tables["methods"].cells()
    assert list(methods.columns) == ["avd", "avd step/joint", "avd step ms", "avd peak GB", "avd params M",
                                     "avd MFLOPs/sample"]
    assert methods.loc["uniform", "avd params M"] == "2.000 ± 0.000"
    assert methods.loc["uniform", "avd MFLOPs/sample"] == "3.500 ± 0.000"
    assert methods.loc["joint", "avd peak GB"] == "1.000 ± 0.000"
    assert "avd: imbalance" in tables["imbalance"].to_latex().replace("\\", "")


def test_report_draws_contributions_and_side_by_side_reliability(tree: Path) -> None:
    # another experiment on the same dataset (another recipe, other epochs): figures of its own, named by it,
    # never pooled with the first one's
    write_run(tree, "avd", "joint", 0, {"audio": 0.9, "visual": 0.0}, 1.0, {"audio": 0.9, "visual": 0.5},
              ece=0.3, experiment="long")
    result = run_report(tree, "md")
    plots = {p.name for p in result.paths}
    for name in ("contributions_exp_avd.png", "reliability_exp_avd.png", "contributions_exp_avd.pdf",
                 "contributions_long_avd.png", "reliability_long_avd.png"):
        assert name in plots
        assert (tree / "plots" / name).stat().st_size > 5_000
    assert "contributions_avd.png" not in plots and "reliability_avd.png" not in plots
    assert (tree / "plots" / "reliability_exp_avd.png").read_bytes()[:8] == PNG_MAGIC
    # tables per experiment too (main's rule: prefixed by the experiment)
    for table in ("exp_imbalance", "exp_probe", "exp_calibration", "long_imbalance", "long_probe"):
        assert (tree / "tables" / f"{table}.md").is_file()


def test_runs_without_balance_metrics_give_no_balance_tables(tmp_path: Path) -> None:
    run = tmp_path / "exp" / "d" / "joint" / "seed0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"experiment": "exp", "dataset": "d", "method": "joint", "seed": 0,
                                               "accuracy": 0.5, "contribution": {"skipped": "too many"}}))
    names = {t.name for t in load_tables(tmp_path)}
    assert not names & {"imbalance", "imbalance_probability", "probe", "calibration", "methods"}
    result = run_report(tmp_path, "md")
    assert not [p for p in result.paths if p.name.startswith(("contributions_", "reliability_"))]


def test_pooled_bins_weigh_each_run_by_its_counts() -> None:
    pooled = pool_bins([bins([2, 0], [0.5, None], [0.05, None]),  # eval.json: None in an empty bin
                        bins([6, 4], [1.0, 0.25], [0.04, 0.1])])
    assert pooled["count"][:2] == [8, 4]
    assert pooled["accuracy"][0] == pytest.approx((2 * 0.5 + 6 * 1.0) / 8)
    assert pooled["confidence"][0] == pytest.approx((2 * 0.05 + 6 * 0.04) / 8)
    assert pooled["accuracy"][1] == pytest.approx(0.25) and np.isnan(pooled["accuracy"][2])


def test_report_draws_the_gradient_conflict_per_method(tree: Path) -> None:
    for run in sorted((tree / "exp" / "avd").glob("*/seed*")):
        lines = [{"epoch": 1, "val_accuracy": 0.5, "conflict.cos.audio": 0.2, "conflict.cos.visual": -0.1,
                  "conflict.samples": 2},
                 {"epoch": 2, "val_accuracy": 0.6},  # an epoch without a sample
                 {"epoch": 3, "val_accuracy": 0.7, "conflict.cos.audio": 0.4, "conflict.cos.visual": 0.1,
                  "conflict.samples": 1}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = run_report(tree, "md")
    path = tree / "plots" / "compare_conflict_avd.png"
    assert path in result.paths and path.read_bytes()[:8] == PNG_MAGIC
    # the conflict is not a method coefficient: it stays out of the coefficients table
    assert not (tree / "tables" / "coefficients.md").is_file()

