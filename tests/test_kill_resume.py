"""A real `bogc train` process killed from outside at a random moment -- SIGKILL (nothing can be saved:
the run resumes from its last complete checkpoint) or SIGTERM (a scheduler's preemption: the step in
progress is checkpointed) -- resumes with `--resume` to the same metrics, test result and weights as a
run never killed (bitwise on CPU), with and without DataLoader worker processes (the uninterrupted run
has none: the batch order must not depend on them)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import run_results

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "recipes/quickstart.yaml", "--set", "method.name=bogc", "--set", "train.epochs=4",
        "--set", "dataset.n_train=320", "--set", "dataset.n_val=64", "--set", "dataset.n_test=64",
        "--set", "train.batch_size=16"]


def _bogc(out: Path, *extra: str) -> subprocess.Popen:
    """Start `bogc train` in a session of its own (a scheduler's job); its output goes to ``<out>.log``
    (not a pipe: waiting for a pipe's end would also wait for any worker process that outlived it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(f"{out}.log", "w")
    with log:
        return subprocess.Popen([sys.executable, "-m", "bogc_cli", *ARGS, "--out", str(out), *extra], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for the main process only, then read its output."""
    proc.wait(timeout=600)
    out = Path(proc.args[proc.args.index("--out") + 1])
    return proc.returncode, " ".join(Path(f"{out}.log").read_text().split())


def _kill_after_first_epoch(proc: subprocess.Popen, out: Path, sig: int, rng: random.Random,
                            group: bool = False) -> float:
    """Wait until epoch 1 is on disk, then a random 0-2.5 s more (somewhere in epochs 2-3), then signal the
    main process, or with ``group`` every process of the job (its workers too, as Slurm does)."""
    deadline = time.monotonic() + 300
    while not any(out.rglob("metrics.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not reach epoch 1"
        time.sleep(0.05)
    delay = rng.uniform(0.0, 2.5)
    time.sleep(delay)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    return delay


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    code, output = _finish(_bogc(out))
    assert code == 0, output
    return run_results(out)


@pytest.mark.parametrize("sig, workers, group", [
    pytest.param(signal.SIGKILL, 0, False, marks=pytest.mark.slow),  # SIGKILL-workers covers it, with workers
    pytest.param(signal.SIGTERM, 0, False, marks=pytest.mark.slow),  # SIGTERM-job-workers covers it, with workers
    (signal.SIGKILL, 2, False),  # resumed as soon as the main process is gone: no worker may hold the folder
    (signal.SIGTERM, 2, True),  # a scheduler's preemption signals the workers too: they must not die of it
    pytest.param(signal.SIGTERM, 2, False, marks=pytest.mark.slow),
], ids=["SIGKILL", "SIGTERM", "SIGKILL-workers", "SIGTERM-job-workers", "SIGTERM-workers"])
def test_a_killed_training_process_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, sig, workers, group,
                                                                       reliability):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "cut"
    with_workers = ("--set", f"train.num_workers={workers}")
    proc = _bogc(out, *with_workers)
    delay = _kill_after_first_epoch(proc, out, sig, rng, group)
    code, output = _finish(proc)
    where = f"(random seed {seed}: signal {delay:.2f} s after epoch 1, {workers} workers{', to the job' * group})"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, where
    else:
        assert code == 130 and "SIGTERM: stopped" in output and "checkpoint saved" in output, output + where

    code, output = _finish(_bogc(out, "--resume", *with_workers))
    assert code == 0 and "resuming" in output, output + where
    records, ev, model = run_results(out)
    assert records == uninterrupted[0], where
    assert ev == uninterrupted[1], where
    assert all(torch.equal(model[k], uninterrupted[2][k]) for k in model), where
    reliability("bogc train processes killed from outside (SIGKILL, SIGTERM) at a random moment")
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")
