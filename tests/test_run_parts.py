"""The run as named parts: ``RunState`` restores everything a checkpoint holds, callbacks see a run's events in
order, and a callback (a tuner's pruner) can stop a run at an epoch boundary, checkpointed and resumable to
the uninterrupted result."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from rich.console import Console

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.engine.batch_transforms import BatchTransforms
from bogc_cli.engine.callbacks import Callback, RunEnd, RunStart
from bogc_cli.engine.checkpoint import verified
from bogc_cli.engine.graceful_stop import StopRequested
from bogc_cli.engine.modality_dropout import ModalityDropout
from bogc_cli.engine.optim import build_scheduler
from bogc_cli.engine.run_state import RunState
from bogc_cli.engine.trainer import RunStopped, train_run
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock, OptimBlock, load_recipe
from cli_helpers import run_cli, run_results, signal_during_step

FAST = ["train.epochs=4", "dataset.n_train=192", "dataset.n_val=64", "dataset.n_test=64", "train.batch_size=32",
        "method.name=bogc"]
STEPS = 6  # 192 rows / 32


def _recipe(out: Path, *extra: str):
    return load_recipe("recipes/quickstart.yaml", [f"output.dir={out}", *FAST, *extra]).for_seed(0)


def _run_dir(out: Path) -> Path:
    return out / "quickstart" / "synthetic" / "bogc" / "seed0"


class Recorder(Callback):
    """Writes down every event; asks to stop after epoch ``stop_after`` (as a pruner would)."""

    def __init__(self, stop_after: int | None = None):
        self.events: list[tuple] = []
        self.losses: list[torch.Tensor | None] = []
        self.records: list[dict] = []
        self.start: RunStart | None = None
        self.end: RunEnd | None = None
        self.stop_after = stop_after

    def on_run_start(self, run):
        self.start = run
        self.events.append(("start", run.first_epoch))

    def on_step(self, epoch, step, loss, logs):
        self.events.append(("step", epoch, step))
        self.losses.append(loss)

    def on_epoch_end(self, epoch, record):
        self.events.append(("epoch", epoch))
        self.records.append(record)
        return f"pruned at epoch {epoch}" if epoch == self.stop_after else None

    def on_run_end(self, end):
        self.end = end
        self.events.append(("end", end.status, end.epochs_done))


def _steps(epoch: int) -> list[tuple]:
    return [("step", epoch, s) for s in range(1, STEPS + 1)]


def test_a_callback_sees_the_run_start_each_step_each_epoch_and_the_end(tmp_path):
    seen = Recorder()
    result = train_run(_recipe(tmp_path, "train.epochs=2"), Console(quiet=True), callbacks=[seen])
    assert seen.events == [("start", 1), *_steps(1), ("epoch", 1), *_steps(2), ("epoch", 2), ("end", "finished", 2)]
    run = result.run_dir
    assert seen.start.run_dir == run and seen.start.epochs == 2 and seen.start.steps_per_epoch == STEPS
    assert seen.start.records == [] and seen.start.recipe["method"]["name"] == "bogc"
    # each epoch's record is metrics.jsonl's line, and the run's end carries eval.json
    assert [json.loads(json.dumps(r)) for r in seen.records] == \
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert seen.end.result.test == json.loads((run / "eval.json").read_text())
    # the step losses are the ones the epoch averages (every batch holds 32 rows)
    first = [float(x) for x in seen.losses[:STEPS]]
    assert all(math.isfinite(x) for x in first)
    assert sum(first) / STEPS == pytest.approx(seen.records[0]["train_loss"], rel=1e-5)


def test_a_callback_stops_the_run_after_an_epoch_and_a_resume_ends_as_an_uninterrupted_run(tmp_path):
    train_run(_recipe(tmp_path / "straight"), Console(quiet=True))
    expected = run_results(_run_dir(tmp_path / "straight"))

    pruner, watcher = Recorder(stop_after=2), Recorder()
    console = Console(file=io.StringIO(), width=300)
    with pytest.raises(RunStopped) as stopped:
        train_run(_recipe(tmp_path / "cut"), console, callbacks=[pruner, watcher])
    run = _run_dir(tmp_path / "cut")
    assert stopped.value.epoch == 2 and stopped.value.reason == "pruned at epoch 2" and stopped.value.run_dir == run
    assert "pruned at epoch 2: stopped after epoch 2; checkpoint saved in" in console.file.getvalue()
    for seen in (pruner, watcher):  # every callback sees the epoch that stopped the run, then the end
        assert seen.events[-2:] == [("epoch", 2), ("end", "stopped", 2)] and seen.end.reason == "pruned at epoch 2"
    assert verified(run / "last.pt") is None and torch.load(run / "last.pt", weights_only=False)["epoch"] == 2
    assert not (run / "eval.json").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2

    resumed = Recorder()  # a resumed run continues at epoch 3, keeping the step numbering
    train_run(_recipe(tmp_path / "cut"), Console(quiet=True), resume=True, callbacks=[resumed])
    assert resumed.events == [("start", 3), *_steps(3), ("epoch", 3), *_steps(4), ("epoch", 4), ("end", "finished", 4)]
    assert [r["epoch"] for r in resumed.start.records] == [1, 2]
    got = run_results(run)
    assert got[:2] == expected[:2] and all(torch.equal(got[2][k], expected[2][k]) for k in got[2])


def test_a_callback_stopped_run_resumes_through_the_cli(capsys, tmp_path):
    with pytest.raises(RunStopped):
        train_run(_recipe(tmp_path, "train.epochs=2"), Console(quiet=True), callbacks=[Recorder(stop_after=1)])
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--resume",
                             *(a for o in [*FAST, "train.epochs=2"] for a in ("--set", o)))
    assert code == 0, out + err
    assert "after epoch 1" in " ".join(out.split())
    assert (_run_dir(tmp_path) / "eval.json").is_file()


def test_a_signal_mid_epoch_ends_the_callbacks_run_as_stopped(monkeypatch, tmp_path):
    seen = Recorder()
    signal_during_step(monkeypatch, signal.SIGINT, epoch=2, step=3)
    with pytest.raises(StopRequested):
        train_run(_recipe(tmp_path), Console(quiet=True), callbacks=[seen])
    assert seen.events[-2:] == [("step", 2, 3), ("end", "stopped", 1)] and seen.end.reason == "SIGINT"
    assert torch.load(_run_dir(tmp_path) / "last.pt", weights_only=False)["resume"]["partial"]["epoch"] == 2


# ------------------------------------------------------------------ RunState on its own

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def _state(seed: int) -> RunState:
    """A run's state with every kind of part: BOGC with EMA moments, Adam moments, a step schedule, the
    batch order and a modality dropout generator."""
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = build_scheduler(optimizer, OptimBlock(schedule="step", step_size=1, gamma=0.5), epochs=4)
    cls = METHODS["bogc"]
    method = cls(cls.Options.model_validate({"moments": "ema"}), model, StepContext(torch.device("cpu"), optimizer))
    transforms = BatchTransforms({"modality_dropout": ModalityDropout(0.3, list(SPECS), seed)})
    return RunState(model, optimizer, scheduler, method, torch.Generator().manual_seed(seed), transforms)


def _train_a_little(state: RunState, steps: int) -> None:
    for _ in range(steps):
        rows = torch.randperm(32, generator=state.order)  # draws from the batch-order generator
        x = Batch({m: torch.randn(32, *s.shape) for m, s in SPECS.items()}, torch.randint(0, 3, (32,)), rows)
        state.method.step(state.transforms(x))
    state.scheduler.step()


def test_run_state_round_trips_through_a_file_and_continues_identically(tmp_path):
    a = _state(seed=0)
    _train_a_little(a, 3)
    a.epoch, a.records, a.best_accuracy, a.best_epoch, a.val = 1, [{"epoch": 1}], 0.5, 1, {"accuracy": 0.5}
    torch.save(a.state_dict(), tmp_path / "state.pt")
    _train_a_little(a, 2)  # what the saved run goes on to do
    after = torch.rand(3)

    b = _state(seed=1)  # other weights, generators and RNG until loaded
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert (b.epoch, b.records, b.best_accuracy, b.best_epoch, b.val) == (1, [{"epoch": 1}], 0.5, 1, {"accuracy": 0.5})
    _train_a_little(b, 2)
    assert torch.equal(torch.rand(3), after)  # the global RNG continued from the save
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()
    assert torch.equal(b.order.get_state(), a.order.get_state())


# ------------------------------------------------------------------ the loop's own cost, measured


def test_loop_overhead_table(capsys):
    """benchmarks/loop_overhead.py runs real quickstart runs and prints the loop's cost per step."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import loop_overhead

    assert loop_overhead.main(["--runs", "1", "--epochs", "1", "--n-train", "128"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["1"])
    steps, step_ms, loop_ms, epoch_s = int(row[1]), float(row[2]), float(row[3]), float(row[4])
    assert steps == 2 and step_ms > 0 and loop_ms > 0 and epoch_s > 0
    assert re.search(r"median loop overhead: \d+\.\d{3} ms/step over 1 epochs", out)


# ------------------------------------------------------------------ data-parallel: a callback's stop is everyone's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_parallel_worker(rank: int, port: int, out: str, stop_after: int | None, resume: bool) -> None:
    """One of two gloo processes, as torchrun would start it, training the quickstart with a callback
    (which only process 0 runs) that stops after epoch ``stop_after``; writes how its run ended."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from bogc_cli.engine import distributed

    try:
        train_run(_recipe(Path(out), "train.device=cpu", "train.epochs=3"), Console(quiet=True), resume=resume,
                  callbacks=[Recorder(stop_after)])
        ended = ["finished"]
    except RunStopped as exc:
        ended = ["stopped", exc.epoch, exc.reason]
    finally:
        distributed.stop()
    Path(out, f"rank{rank}.json").write_text(json.dumps(ended))


def _data_parallel(out: Path, stop_after: int | None = None, resume: bool = False) -> list:
    mp.spawn(_data_parallel_worker, args=(_free_port(), str(out), stop_after, resume), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_data_parallel_a_callback_of_process_0_stops_every_process_after_the_same_epoch(tmp_path):
    assert _data_parallel(tmp_path / "straight") == [["finished"], ["finished"]]
    ended = _data_parallel(tmp_path / "cut", stop_after=2)
    assert ended == [["stopped", 2, "pruned at epoch 2"], ["stopped", 2, "a callback of process 0"]]
    run = _run_dir(tmp_path / "cut")
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 2 and not (run / "eval.json").exists()
    assert _data_parallel(tmp_path / "cut", resume=True) == [["finished"], ["finished"]]
    expected, got = run_results(_run_dir(tmp_path / "straight")), run_results(run)
    assert got[:2] == expected[:2] and all(torch.equal(got[2][k], expected[2][k]) for k in got[2])
