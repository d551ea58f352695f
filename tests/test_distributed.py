"""Data-parallel training through the real CLI: ``torchrun --nproc-per-node 2 -m bogc_cli train`` with
two gloo processes on the CPU must train the same model as one process on the same global batches
(joint and bogc), with process 0 alone writing the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.mfeat import prepare

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def mfeat(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mfeat") / "cache"
    prepare(shared_data / "mfeat", out)
    return out


def _train(recipe: str, root: Path, out: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    # no dropout: its masks are drawn per process, so they could not match one process's
    args = [recipe, "--set", f"dataset.root={root}", "--set", "model.dropout=0", "--set", "train.epochs=2",
            "--set", "train.device=cpu", "--seeds", "0", "--out", str(out), *extra]
    if processes == 1:
        cmd = [sys.executable, "-m", "bogc_cli", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "bogc_cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _run_dir(out: Path) -> Path:
    return next(out.rglob("eval.json")).parent


@pytest.mark.parametrize("method, tolerance", [("joint", 1e-5), ("bogc", 1e-3)])
def test_two_processes_train_the_model_one_process_trains(mfeat, tmp_path, method, tolerance):
    recipe = str(RECIPES / "mfeat" / f"{method}.yaml")
    one = _train(recipe, mfeat, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(recipe, mfeat, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run written to") == 1  # process 0 reports; process 1 is quiet

    a, b = _run_dir(tmp_path / "one"), _run_dir(tmp_path / "two")
    assert json.loads((b / "environment.json").read_text())["processes"] == 2
    wa = torch.load(a / "last.pt", weights_only=False)["model"]
    wb = torch.load(b / "last.pt", weights_only=False)["model"]
    params = {k for k, _ in _named_parameters(wa)}
    for key in params:
        # bogc's evidence (mean^2 / variance) magnifies the rounding of summing in another order
        assert torch.allclose(wa[key], wb[key], atol=tolerance, rtol=tolerance), key
    if method == "joint":  # running feature means: averaged over processes, the same as one process's
        for key in set(wa) - params:
            assert torch.allclose(wa[key].double(), wb[key].double(), atol=1e-5), key
    ra = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ra, rb, strict=True):  # the epoch's loss is summed over both processes' rows
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        assert y["train_accuracy"] == pytest.approx(x["train_accuracy"], abs=2 / 1400)
        assert y["val_accuracy"] == pytest.approx(x["val_accuracy"], abs=2 / 200)


def _named_parameters(state: dict):
    """Parameter entries of a MultimodalModel state_dict (its buffers are the feature_mean_* entries)."""
    return [(k, v) for k, v in state.items() if not k.startswith("feature_mean_")]


def test_bogc_chunks_must_divide_among_processes(mfeat, tmp_path):
    result = _train(str(RECIPES / "mfeat" / "bogc.yaml"), mfeat, tmp_path, 2, "--set", "method.chunks=3")
    assert result.returncode != 0
    assert "method.chunks (3)" in result.stderr and "multiple of 2" in result.stderr
