"""``bogc train --gpus N``'s launcher on the CPU (gloo): a Ctrl-C reaches the launcher alone, which stops
every training process at one step boundary; the user sees one message, no launcher traceback, exit 130,
and ``--resume`` under torchrun ends bitwise equal to a data-parallel run never stopped."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bogc_cli.engine.launch import copy_stderr
from cli_helpers import run_results
from data_prep.mfeat import prepare

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "mfeat" / "joint.yaml")


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    # batches of 16: 75 steps an epoch, so a signal sent as epoch 1 ends lands inside epoch 2
    return [RECIPE, "--set", f"dataset.root={root}", "--set", "model.dropout=0", "--set", "train.epochs=3",
            "--set", "train.batch_size=16",
            "--set", "train.device=cpu", "--seeds", "0", "--out", str(out), *extra]


def _launch(args: list[str]) -> subprocess.Popen:
    """The launcher ``bogc train --gpus 2`` runs (its GPU check aside: this machine may have none)."""
    code = f"import sys; from bogc_cli.engine.launch import run_torchrun; sys.exit(run_torchrun(2, {args!r}))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_ctrl_c_under_the_launcher_checkpoints_once_and_resumes_bitwise(shared_data, tmp_path, reliability):
    root = tmp_path / "mfeat"
    prepare(shared_data / "mfeat", root)
    straight = _launch(_args(root, tmp_path / "straight"))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]

    cut = _launch(_args(root, tmp_path / "cut"))
    metrics = tmp_path / "cut" / "mfeat" / "mfeat-weak3" / "joint" / "seed0" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().strip()) and cut.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    cut.send_signal(signal.SIGINT)  # as a Ctrl-C at the terminal: the launcher is the foreground process
    out, err = cut.communicate(timeout=300)
    assert cut.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err
    assert err.count("interrupted: finished runs and the last checkpoint are kept") == 1, err  # process 0 speaks for both
    assert out.count("checkpoint saved in") == 1 and "stopped at epoch 2, step" in out, out  # mid-epoch

    resumed = _launch(_args(root, tmp_path / "cut", "--resume"))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    expected, got = run_results(tmp_path / "straight"), run_results(tmp_path / "cut")
    assert got[:2] == expected[:2] and all(torch.equal(got[2][k], expected[2][k]) for k in got[2])
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")
    reliability("Ctrl-C/SIGTERM signals delivered mid-epoch to training")


def test_the_launchers_stderr_keeps_everything_but_its_own_report_of_a_requested_stop():
    log = "W1127 10:19:20.324000 14278 site-packages/torch/distributed/elastic/agent/server/api.py:753] Received 15\n"
    ours = "error: something the user must see\n"
    worker_crash = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: boom\n"
    launcher = ("Traceback (most recent call last):\n  File \"run.py\", line 9, in main\n    run(args)\n"
                "torch.distributed.elastic.multiprocessing.api.SignalException: Process 1 got signal: 15\n")
    text = log + ours + worker_crash + launcher
    for stopping, expected in ((False, text), (True, ours + worker_crash)):
        sink = io.StringIO()
        copy_stderr(io.StringIO(text), sink, lambda: stopping)
        assert sink.getvalue() == expected
