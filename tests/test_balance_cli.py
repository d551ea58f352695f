"""The balance metrics as a user meets them: in eval.json after `bogc train` and `bogc eval`, reproducible,
and the Shapley limit: refused by `bogc eval` (exit 2, one message naming --no-shapley), skipped with a
note at the end of training (the run still finishes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import run_bogc, run_cli

BALANCE = ("contribution", "linear_probe", "calibration", "parameters", "forward_flops_per_sample")


@pytest.fixture(scope="module")
def nine(tmp_path_factory) -> Path:
    """A tiny run with nine vector modalities (one above the Shapley limit), trained in-process (the eval
    below goes through the real entry point)."""
    from rich.console import Console

    from bogc_cli.engine.trainer import train_run
    from bogc_cli.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("nine")
    specs = {f"v{i}": {"kind": "vector", "shape": [4], "informative": 0.5 + i / 20} for i in range(9)}
    recipe = {"experiment": "nine", "dataset": {"name": "synthetic", "modalities": list(specs), "specs": specs,
                                                "n_train": 200, "n_val": 60, "n_test": 80, "num_classes": 3},
              "model": {"feature_dim": 8, "hidden_dim": 16}, "train": {"epochs": 1, "batch_size": 50},
              "output": {"dir": str(tmp)}}
    path = tmp / "nine.yaml"
    path.write_text(yaml.safe_dump(recipe))
    train_run(load_recipe(path).for_seed(0), Console(quiet=True))
    return tmp / "nine" / "synthetic" / "joint" / "seed0"


def test_training_skips_shapley_above_the_limit_with_a_note(nine: Path) -> None:
    ev = json.loads((nine / "eval.json").read_text())
    assert "M = 9" in ev["contribution"]["skipped"] and "limit of 8" in ev["contribution"]["skipped"]
    assert set(ev["linear_probe"]["accuracy"]) == {f"v{i}" for i in range(9)}
    assert 0 <= ev["calibration"]["ece"] <= 1 and (nine / "reliability.png").is_file()


def test_eval_refuses_shapley_above_the_limit_and_runs_without(nine: Path, capsys) -> None:
    before = (nine / "eval.json").read_bytes()
    proc = run_bogc("eval", nine)  # the console script, in a new process
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "M = 9" in proc.stderr and "--no-shapley" in proc.stderr
    assert (nine / "eval.json").read_bytes() == before  # nothing written
    code, out, err = run_cli(capsys, "eval", nine, "--no-shapley")
    assert code == 0, err
    ev = json.loads((nine / "eval.json").read_text())
    assert ev["contribution"] == {"skipped": "not asked for (--no-shapley)"}
    assert "Shapley contributions skipped" in out


def test_eval_rewrites_the_training_time_balance_metrics_exactly(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "train.epochs=1",
                           "--set", "dataset.n_train=300", "--set", "dataset.n_val=100", "--set", "dataset.n_test=120",
                           "--set", "model.cnn_channels=[8,16]", "--set", "method.name=uniform")
    assert code == 0, err
    run = tmp_path / "quickstart" / "synthetic" / "uniform" / "seed0"
    trained = json.loads((run / "eval.json").read_text())
    assert all(k in trained for k in BALANCE)
    phi = trained["contribution"]["accuracy"]
    assert set(phi["shapley"]) == {"audio", "image", "vector"} and len(trained["contribution"]["subsets"]) == 8
    assert sum(phi["shapley"].values()) == pytest.approx(phi["full"] - phi["empty"])
    assert phi["full"] == pytest.approx(trained["accuracy"])  # the full subset is the model itself
    code, out, _ = run_cli(capsys, "eval", run)
    assert code == 0 and "imbalance degree (accuracy)" in out and "ECE (15 bins)" in out
    again = json.loads((run / "eval.json").read_text())
    assert {k: again[k] for k in BALANCE} == {k: trained[k] for k in BALANCE}
