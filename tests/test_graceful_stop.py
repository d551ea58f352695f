"""Ctrl-C / SIGTERM in mid-epoch: the step in progress finishes, a checkpoint of that exact point is
written, the command exits 130, and `--resume` continues from the next batch to the same end (bitwise,
CPU) as a run that was never stopped. Every method is checked, since each keeps its own state."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from bogc_cli.fusion import METHOD_MODULES
from cli_helpers import run_cli

FAST = ["--set", "train.epochs=3", "--set", "dataset.n_train=160", "--set", "dataset.n_val=48",
        "--set", "dataset.n_test=48", "--set", "train.batch_size=32"]
TIMING = {"epoch_time_s", "step_time_ms_median", "peak_memory_mb"}
EVAL_TIMING = {"train_seconds", "step_time_ms_median", "epoch_time_s_mean", "peak_memory_mb"}


def _train(capsys, out: Path, method: str, *extra: str):
    args = ["--set", f"method.name={method}", *FAST, *extra]
    if method == "unimodal":
        args += ["--set", "method.modality=audio"]
    if method == "gblending":  # re-estimate the weights every epoch, so epoch 2 starts with one
        args += ["--set", "method.super_epoch=1"]
    code, stdout, stderr = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out, *args)
    return code, " ".join(stdout.split()), " ".join(stderr.split())


def _results(out: Path) -> tuple[list[dict], dict, dict]:
    run = next(out.rglob("eval.json")).parent
    records = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    ev = {k: v for k, v in json.loads((run / "eval.json").read_text()).items() if k not in EVAL_TIMING}
    model = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["model"]
    return records, ev, model


def _signal_at(monkeypatch, sig: int, epoch: int, step: int, times: int = 1) -> None:
    """Send ``sig`` to this process (``times`` times) while batch ``step`` of ``epoch`` is being
    fetched, as a user's Ctrl-C or a scheduler's SIGTERM lands at some moment of a step."""
    from bogc_cli.engine import trainer

    real = trainer._train_epoch

    def signalled_epoch(method, model, loader, device, current, *args, **kwargs):
        if current != epoch:
            return real(method, model, loader, device, current, *args, **kwargs)

        def batches():
            for i, batch in enumerate(loader, start=kwargs["tally"].steps + 1):
                if i == step:
                    for _ in range(times):
                        os.kill(os.getpid(), sig)
                yield batch

        return real(method, model, batches(), device, current, *args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", signalled_epoch)


@pytest.mark.parametrize("method", list(METHOD_MODULES))
def test_a_stop_mid_epoch_checkpoints_that_step_and_resumes_bitwise(capsys, tmp_path, monkeypatch, method,
                                                                   reliability):
    assert _train(capsys, tmp_path / "straight", method)[0] == 0
    expected = _results(tmp_path / "straight")

    with monkeypatch.context() as patch:
        _signal_at(patch, signal.SIGTERM if method in ("bogc", "pmr") else signal.SIGINT, epoch=2, step=3)
        code, out, err = _train(capsys, tmp_path / "cut", method)
    assert code == 130, out + err
    assert "stopped at epoch 2, step 3; checkpoint saved" in out
    last = next((tmp_path / "cut").rglob("last.pt"))
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 1 and state["resume"]["partial"]["tally"]["steps"] == 3
    assert not (last.parent / "eval.json").exists()

    code, out, err = _train(capsys, tmp_path / "cut", method, "--resume")
    assert code == 0, out + err
    assert "at epoch 2, step 4" in out
    records, ev, model = _results(tmp_path / "cut")
    assert records == expected[0]
    assert ev == expected[1]
    assert all(torch.equal(model[k], expected[2][k]) for k in model)
    reliability("Ctrl-C/SIGTERM signals delivered mid-epoch to training")
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_a_second_signal_stops_at_once_and_the_epoch_checkpoint_still_resumes(capsys, tmp_path, monkeypatch,
                                                                             reliability):
    assert _train(capsys, tmp_path / "straight", "joint")[0] == 0
    expected = _results(tmp_path / "straight")
    with monkeypatch.context() as patch:
        _signal_at(patch, signal.SIGINT, epoch=2, step=3, times=2)  # the user pressed Ctrl-C twice
        code, out, err = _train(capsys, tmp_path / "cut", "joint")
    assert code == 130
    state = torch.load(next((tmp_path / "cut").rglob("last.pt")), weights_only=False)
    assert state["epoch"] == 1 and "partial" not in state["resume"]  # nothing written after the second signal
    assert _train(capsys, tmp_path / "cut", "joint", "--resume")[0] == 0
    records, ev, _ = _results(tmp_path / "cut")
    assert (records, ev) == expected[:2]
    reliability("Ctrl-C/SIGTERM signals delivered mid-epoch to training", 2)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_stop_handlers_are_restored_after_training(capsys, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert _train(capsys, tmp_path / "r", "joint", "--set", "train.epochs=1")[0] == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
