"""Hooks into a training run, for what watches or steers it (experiment trackers, a tuner's pruner).

The train loop (engine/trainer.py) calls, in this order::

    on_run_start(RunStart)                       once, after a resume has been loaded
    on_step(epoch, step, loss, logs)             after every training step
    on_epoch_end(epoch, record) -> reason|None   after the epoch's checkpoint and metrics.jsonl are written
    on_run_end(RunEnd)                           once, however the run ends (after eval.json when finished)

``on_epoch_end`` returning a reason (a short text, e.g. ``"pruned by optuna at epoch 3"``) stops the run at
that epoch boundary: its checkpoint is already complete, so ``train_run`` raises ``RunStopped`` and
``bogc train --resume`` continues the run later exactly as if it had not stopped. Steps are numbered
within their epoch from 1 and keep their numbers across a resume, so ``(epoch - 1) * steps_per_epoch +
step`` is a global step that a resumed run does not repeat.

Data-parallel, callbacks run on process 0 alone (``loss`` and ``logs`` are then that process's shard's);
a stop one of them asks for is agreed by every process at the same epoch boundary. An exception raised
by a callback ends the run as any other error would (last.pt keeps the last complete epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import torch

if TYPE_CHECKING:
    from bogc_cli.engine.final_eval import RunResult


@dataclass(frozen=True)
class RunStart:
    """``recipe``: the resolved recipe (recipe.yaml) as a dict; ``first_epoch``: the epoch training starts or
    continues in (> 1 after a resume); ``records``: the metrics.jsonl records of the epochs already done;
    ``steps_done``: the global steps the checkpoint holds (0 for a fresh run; a mid-epoch checkpoint's
    steps included), so the first ``on_step`` is global step ``steps_done + 1``."""

    run_dir: Path
    recipe: dict
    first_epoch: int
    epochs: int
    steps_per_epoch: int
    records: list[dict]
    steps_done: int = 0

    @property
    def resumed(self) -> bool:
        """Whether the run continues a checkpoint."""
        return self.steps_done > 0


@dataclass(frozen=True)
class RunEnd:
    """``status``: ``finished`` (eval.json written; ``result`` set), ``stopped`` (a signal, or a callback,
    at a step or epoch boundary; last.pt resumes it) or ``failed`` (an error; ``reason`` is its message).
    ``epochs_done``: the epochs last.pt holds complete."""

    status: Literal["finished", "stopped", "failed"]
    epochs_done: int
    reason: str | None = None
    result: RunResult | None = None


class Callback:
    """Base class: override the hooks you need; each does nothing here."""

    def on_run_start(self, run: RunStart) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: torch.Tensor | None, logs: dict[str, torch.Tensor]) -> None:
        """``loss``: the step's loss (a 0-d tensor on the training device; reading it waits for the device),
        None when the step was skipped (non-finite loss or gradient); ``logs``: the method's per-step
        values (``method.*`` in metrics.jsonl are their epoch means)."""

    def on_epoch_end(self, epoch: int, record: dict) -> str | None:
        """``record``: the epoch's line of metrics.jsonl (train and validation figures, lr, timings).
        Return a reason to stop the run at this boundary, or None to go on."""
        return None

    def on_run_end(self, end: RunEnd) -> None:
        pass


class Callbacks:
    """The run's callbacks, called in the order given; false when there are none (the loop then skips
    the per-step call altogether)."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.items = list(callbacks)

    def __bool__(self) -> bool:
        return bool(self.items)

    def on_run_start(self, run: RunStart) -> None:
        for callback in self.items:
            callback.on_run_start(run)

    def on_step(self, epoch: int, step: int, loss: torch.Tensor | None, logs: dict[str, torch.Tensor]) -> None:
        for callback in self.items:
            callback.on_step(epoch, step, loss, logs)

    def on_epoch_end(self, epoch: int, record: dict) -> str | None:
        """Every callback sees the epoch; the first reason to stop is returned."""
        reasons = [callback.on_epoch_end(epoch, record) for callback in self.items]
        return next((r for r in reasons if r is not None), None)

    def on_run_end(self, end: RunEnd) -> None:
        for callback in self.items:
            callback.on_run_end(end)


class RunStopped(Exception):
    """A callback stopped the run after epoch ``epoch`` (``reason`` says why): ``run_dir/last.pt`` holds
    that epoch complete, no eval.json was written, and ``train_run(..., resume=True)`` continues it."""

    def __init__(self, run_dir: Path, epoch: int, reason: str):
        super().__init__(f"{run_dir}: {reason}: stopped after epoch {epoch}")
        self.run_dir, self.epoch, self.reason = run_dir, epoch, reason
