"""Issue 20's acceptance: `bogc train recipes/quickstart.yaml --set method.name=X --set train.epochs=1` trains every
registered method, through the installed entry point in a new process, with nothing else set (methods that need other
runs, UMT's teachers, train them first; I2M2's and ReconBoost's warm starts are optional). ``unimodal`` alone also
needs its ``method.modality``. Each run costs a new process and a full quickstart epoch, so the sweep is -m slow; the
default run keeps its fast representatives: umt (tests/test_umt.py, the method that trains other runs first, tiny data)
and every in-step method in-process (tests/test_in_step_methods.py)."""

from __future__ import annotations

import json

import pytest

from bogc_cli.fusion import METHODS
from cli_helpers import run_bogc

REQUIRED = {"unimodal": ["--set", "method.modality=audio"]}  # the one method option without a default


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_the_quickstart_trains_every_method_for_one_epoch(name, tmp_path):
    done = run_bogc("train", "recipes/quickstart.yaml", "--set", f"method.name={name}", "--set", "train.epochs=1",
                    *REQUIRED.get(name, []), "--out", tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = [p.parent for p in tmp_path.rglob("eval.json") if "teachers" not in p.parts]
    assert len(runs) == 1, runs
    result = json.loads((runs[0] / "eval.json").read_text())
    assert result["epoch"] == 1 and 0.0 <= result["accuracy"] <= 1.0
