"""Ctrl-C / SIGTERM in mid-epoch: the step in progress finishes, a checkpoint of that exact point is
written, the command exits 130, and `--resume` continues from the next batch to the same end (bitwise,
CPU) as a run that was never stopped. Every method is checked, since each keeps its own state; and with
DataLoader worker processes (BOGC in the default run, every method with `-m slow`), against the same
uninterrupted run without workers: the batch order depends on the seed alone."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from bogc_cli.fusion import METHOD_MODULES
from cli_helpers import run_cli, run_results, signal_during_step

FAST = ["--set", "train.epochs=3", "--set", "dataset.n_train=160", "--set", "dataset.n_val=48",
        "--set", "dataset.n_test=48", "--set", "train.batch_size=32"]


def _train(capsys, out: Path, method: str, *extra: str):
    args = ["--set", f"method.name={method}", *FAST, *extra]
    if method == "unimodal":
        args += ["--set", "method.modality=audio"]
    if method == "gblending":  # estimated at epochs 1 and 3: the stop in epoch 2 resumes estimated weights
        args += ["--set", "method.super_epoch=2"]
    args += EPOCH_HOOKS.get(method, [])
    if method == "umt":  # distils from a finished unimodal run, trained once per test next to the runs
        args += ["--set", f"method.teachers.audio={_teacher_run(capsys, out.parent / 'teacher')}"]
    code, stdout, stderr = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out, *args)
    return code, " ".join(stdout.split()), " ".join(stderr.split())


def _teacher_run(capsys, out: Path) -> Path:
    """A finished one-epoch `unimodal` audio run on the tests' data (UMT's teacher), trained on first use."""
    if not out.exists():
        code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out, "--set", "method.name=unimodal",
                               "--set", "method.modality=audio", *FAST, "--set", "train.epochs=1")
        assert code == 0, err
    return next(out.rglob("eval.json")).parent


# methods whose epoch start acts, set to act within three epochs: the stop in epoch 2 falls in the middle of a turn
# (reconboost: audio boosted in epoch 1, epoch 2 rectifies after an optimiser reset, image boosts in epoch 3), in a
# re-sampled epoch (smv) or between two re-initialisations (relearning: at the starts of epochs 3 and 4)
EPOCH_HOOKS = {"reconboost": ["--set", "method.epochs_per_stage=1", "--set", "method.correct_epoch=1"],
               "smv": ["--set", "method.warmup_epochs=1"], "relearning": ["--set", "method.reinit_epoch=1"]}

# option variants that keep state of their own (bogc laplace: the posterior's curvature and generator) or take
# another path through a step
VARIANTS = [(m, ()) for m in METHOD_MODULES] + [
    ("bogc", ("--set", "method.moments=laplace")),
    ("bogc", ("--set", "method.frame=modality", "--set", "method.evidence=precision", "--set", "method.moments=ema")),
    # MLP encoders: microbatch takes its chunk gradients from one forward of the batch (LinearChunkMoments)
    ("bogc", ("--set", "model.encoders=mlp")),
]
# with 2 DataLoader workers in the stopped and the resumed run (the straight one has none): every method
# with -m slow, bogc in the default run
WITH_WORKERS = [pytest.param(m, (), 2, id=f"{m} workers", marks=() if m == "bogc" else pytest.mark.slow)
                for m in METHOD_MODULES]


@pytest.mark.parametrize(("method", "options", "workers"),
                         [pytest.param(m, o, 0, id=" ".join([m, *o[1::2]])) for m, o in VARIANTS] + WITH_WORKERS)
def test_a_stop_mid_epoch_checkpoints_that_step_and_resumes_bitwise(capsys, tmp_path, monkeypatch, method, options,
                                                                   workers,
                                                                   reliability):
    assert _train(capsys, tmp_path / "straight", method, *options)[0] == 0
    expected = run_results(tmp_path / "straight")

    with_workers = ("--set", f"train.num_workers={workers}")
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGTERM if method in ("bogc", "pmr") else signal.SIGINT, epoch=2, step=3)
        code, out, err = _train(capsys, tmp_path / "cut", method, *options, *with_workers)
    assert code == 130, out + err
    assert "stopped at epoch 2, step 3; checkpoint saved" in out
    last = next((tmp_path / "cut").rglob("last.pt"))
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 1 and state["resume"]["partial"]["tally"]["steps"] == 3
    assert not (last.parent / "eval.json").exists()

    code, out, err = _train(capsys, tmp_path / "cut", method, *options, "--resume", *with_workers)
    assert code == 0, out + err
    assert "at epoch 2, step 4" in out
    records, ev, model = run_results(tmp_path / "cut")
    assert records == expected[0]
    assert ev == expected[1]
    assert all(torch.equal(model[k], expected[2][k]) for k in model)
    reliability("Ctrl-C/SIGTERM signals delivered mid-epoch to training")
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


@pytest.mark.slow  # ~4-8 s each; the test above already stops smv inside a re-sampled epoch
@pytest.mark.parametrize("method", ["relearning", "smv"])
def test_a_stop_after_an_epoch_start_intervention_resumes_bitwise(capsys, tmp_path, monkeypatch, method, reliability):
    """Stopped in epoch 3, after its start re-initialised the encoders (relearning) or re-sampled the set (smv):
    the checkpoint holds the epoch's result, and the resumed run does not repeat it."""
    extra = ("--set", "train.epochs=4")
    assert _train(capsys, tmp_path / "straight", method, *extra)[0] == 0
    expected = run_results(tmp_path / "straight")
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGINT, epoch=3, step=2)
        code, out, err = _train(capsys, tmp_path / "cut", method, *extra)
    assert code == 130 and "stopped at epoch 3, step 2" in out, out + err
    code, out, err = _train(capsys, tmp_path / "cut", method, *extra, "--resume")
    assert code == 0 and "at epoch 3, step 3" in out, out + err
    records, ev, model = run_results(tmp_path / "cut")
    assert records == expected[0] and ev == expected[1]
    assert all(torch.equal(model[k], expected[2][k]) for k in model)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_a_second_signal_stops_at_once_and_the_epoch_checkpoint_still_resumes(capsys, tmp_path, monkeypatch,
                                                                             reliability):
    assert _train(capsys, tmp_path / "straight", "joint")[0] == 0
    expected = run_results(tmp_path / "straight")
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGINT, epoch=2, step=3, times=2)  # the user pressed Ctrl-C twice
        code, out, err = _train(capsys, tmp_path / "cut", "joint")
    assert code == 130
    state = torch.load(next((tmp_path / "cut").rglob("last.pt")), weights_only=False)
    assert state["epoch"] == 1 and "partial" not in state["resume"]  # nothing written after the second signal
    assert _train(capsys, tmp_path / "cut", "joint", "--resume")[0] == 0
    records, ev, _ = run_results(tmp_path / "cut")
    assert (records, ev) == expected[:2]
    reliability("Ctrl-C/SIGTERM signals delivered mid-epoch to training", 2)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_stop_handlers_are_restored_after_training(capsys, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert _train(capsys, tmp_path / "r", "joint", "--set", "train.epochs=1")[0] == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_evaluation_stops_with_a_message_and_resume_evaluates(capsys, tmp_path,
                                                                                       monkeypatch, sig,
                                                                                       reliability):
    """Training is over and checkpointed, the end-of-run evaluation (test pass, balance metrics) is running: a
    scheduler's SIGTERM there killed the process without a word (exit -15, its default action)."""
    import os

    from bogc_cli.engine import trainer

    assert _train(capsys, tmp_path / "straight", "joint")[0] == 0
    expected = run_results(tmp_path / "straight")
    real = trainer.final_evaluation

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)  # delivered at the next bytecode, inside the evaluation
        return real(*args, **kwargs)

    def unhandled(signum, frame):  # what the process had during the evaluation before: death, or a traceback
        raise RuntimeError(f"{signal.Signals(signum).name} reached the handler outside training")

    previous = signal.signal(sig, unhandled)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(trainer, "final_evaluation", signalled)
            code, out, err = _train(capsys, tmp_path / "cut", "joint")
    finally:
        signal.signal(sig, previous)
    name = signal.Signals(sig).name
    assert code == 130 and f"{name}: stopped during the final evaluation" in out + err, out + err
    assert "checkpoint saved" in out + err
    assert not list((tmp_path / "cut").rglob("eval.json"))  # nothing half-evaluated is left as a result
    assert _train(capsys, tmp_path / "cut", "joint", "--resume")[0] == 0
    records, ev, model = run_results(tmp_path / "cut")
    assert (records, ev) == expected[:2]
    assert all(torch.equal(model[k], expected[2][k]) for k in model)
    reliability("Ctrl-C/SIGTERM signals delivered during the end-of-run evaluation (stopped, resumed to the same "
                "result)")
