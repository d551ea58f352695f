"""One training epoch: its start (or its continuation after a mid-epoch checkpoint), its steps, its record.

``begin_epoch`` -> ``train_epoch`` (the steps; stops early when asked) -> ``epoch_record`` (the epoch's
figures; metrics.jsonl's line) -> ``end_epoch`` (the method's epoch-end values, the learning rate, the
schedule's step). Validation and model selection follow in engine/selection.py.

A step whose loss or gradient is not finite is skipped (no update; the BatchNorm statistics it changed
are put back), counted in ``bad_steps`` and left out of the epoch's averages; ``train.max_bad_steps`` in
a row, or an epoch without one good step, raise ``Diverged``.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

import torch

from bogc_cli.data.loader import Batch
from bogc_cli.engine.callbacks import Callbacks
from bogc_cli.engine.distributed import Distributed
from bogc_cli.engine.mid_epoch import resume_mid_epoch
from bogc_cli.engine.progress import TrainProgress
from bogc_cli.engine.run_state import RunState
from bogc_cli.engine.runtime import peak_memory_mb
from bogc_cli.engine.tally import EpochTally
from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method
from bogc_cli.tasks.losses import batch_hits


class Diverged(UserError):
    """Too many non-finite steps in a row: the run stops; ``last.pt`` still holds the epoch before."""


def begin_epoch(state: RunState, epoch: int, loader, device: torch.device, distributed: Distributed | None,
                main: bool) -> EpochTally:
    """The tally ``epoch`` starts from: a fresh one (``Method.on_epoch_start``), or, in the epoch a
    mid-epoch checkpoint stopped in, the saved one with ``loader`` continuing after its last batch
    (``Method.on_epoch_resume``). Then ``loader`` takes the epoch's training set from the method
    (``Method.training_entries``: every row once unless it re-samples them)."""
    if state.partial is not None:
        tally = resume_mid_epoch(state, loader, device, distributed, main)
        state.method.on_epoch_resume(epoch)
    else:
        tally = EpochTally.begin(device)
        state.method.on_epoch_start(epoch)
    loader.batch_sampler.use_entries(state.method.training_entries())
    return tally


def train_epoch(method: Method, model: torch.nn.Module, batches: Iterable[Batch], device: torch.device, epoch: int,
                progress: TrainProgress, max_bad_steps: int = 10, *, tally: EpochTally,
                should_stop: Callable[[], bool] = lambda: False,
                transform: Callable[[Batch, tuple[int, int, int] | None], Batch] | None = None,
                distributed: Distributed | None = None, global_rows: tuple[int, int] | None = None,
                callbacks: Callbacks | None = None) -> bool:
    """Train on ``batches`` (on ``device``; the epoch's, or those after the first ``tally.steps`` when
    continuing one), adding each step to ``tally``. True when the epoch ran to its end (data-parallel,
    ``tally`` then holds the sums over every process); False when ``should_stop()``, asked after every
    step, ended it early (``tally`` holds this process's steps so far).

    ``transform(batch, part)`` (augmentation, modality dropout) edits each batch before its step;
    data-parallel, ``global_rows`` = (rows in the split, global batch size) places this process's shard:
    ``part`` = (start, stop, rows) of the global batch, which also tells the step its share.
    ``callbacks.on_step`` follows every step. Raises ``Diverged`` after ``max_bad_steps`` non-finite
    steps in a row."""
    model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_epoch = time.perf_counter()
    for step, batch in enumerate(batches, start=tally.steps + 1):
        part = None  # data-parallel: (start, stop, rows) of the global batch this process holds
        if distributed is not None:
            rows, size = global_rows
            part = distributed.place(min(size, rows - (step - 1) * size))
        if transform is not None:
            batch = transform(batch, part)
        t0 = time.perf_counter()
        method.ctx.skipped_step = False
        buffers = [b.detach().clone() for b in model.buffers()]  # BatchNorm statistics, tiny
        result = method.step(batch)
        sync()
        tally.step_ms.append((time.perf_counter() - t0) * 1000)
        tally.steps = step
        if method.ctx.skipped_step or not torch.isfinite(result.loss):
            with torch.no_grad():  # a NaN batch must not poison the running statistics either
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
            tally.bad, tally.in_a_row = tally.bad + 1, tally.in_a_row + 1
            progress.note(f"epoch {epoch} step {step}: non-finite loss or gradient, update skipped "
                          f"({tally.in_a_row} in a row)")
            if tally.in_a_row >= max_bad_steps:
                raise Diverged(f"training diverged: {tally.in_a_row} steps in a row with a NaN/inf loss or "
                               f"gradient (epoch {epoch}, step {step}; train.max_bad_steps={max_bad_steps}), their "
                               "updates skipped. Lower optim.lr, set optim.grad_clip, or check the data for NaN/inf "
                               "values")
            progress.step(epoch, step, None)
            if callbacks:
                callbacks.on_step(epoch, step, None, result.logs)
        else:
            tally.in_a_row = 0
            n = len(batch)
            tally.loss_sum += result.loss * n
            tally.correct += batch_hits(model.task, result.fused_logits, batch.labels)
            for k, v in result.logs.items():
                tally.log_sums[k] = tally.log_sums.get(k, 0) + v.detach().float() * n
            tally.seen += n
            progress.step(epoch, step, float(result.loss) if progress.live else None)
            if callbacks:
                callbacks.on_step(epoch, step, result.loss.detach(), result.logs)
        if should_stop():
            tally.seconds += time.perf_counter() - t_epoch
            return False
    if distributed is not None:  # the epoch's figures over every process's rows
        tally.add_up(distributed)
    tally.seconds += time.perf_counter() - t_epoch
    return True


def epoch_record(tally: EpochTally, epoch: int) -> dict:
    """The finished epoch's figures: train loss and accuracy over its good steps (``train_accuracy``: rows
    right as ``tasks.losses.batch_hits`` counts them: the class, every label, or the sign), the method's logged
    values (``method.*``, their means over rows), time in and out of the steps, steps and bad steps.
    Raises ``Diverged`` when no step of the epoch was good."""
    if tally.seen == 0:
        raise Diverged(f"training diverged: every step of epoch {epoch} had a NaN/inf loss or gradient. Lower "
                       "optim.lr, set optim.grad_clip, or check the data for NaN/inf values")
    seen = tally.seen
    return {
        "epoch": epoch,
        "train_loss": float(tally.loss_sum) / seen,
        "train_accuracy": float(tally.correct) / seen,
        **{f"method.{k}": float(v) / seen for k, v in tally.log_sums.items()},
        "epoch_time_s": tally.seconds,
        "step_time_ms_median": statistics.median(tally.step_ms),
        "step_time_s": sum(tally.step_ms) / 1000,  # inside method.step; the rest of the epoch waited on input
        "steps": len(tally.step_ms),
        "bad_steps": tally.bad,
    }


def end_epoch(state: RunState, record: dict, epoch: int, device: torch.device, distributed: Distributed | None) -> None:
    """After the epoch's last step: data-parallel buffers averaged, the method's epoch-end values, the
    epoch's learning rate and peak memory added to ``record``; the schedule steps once."""
    if distributed is not None:
        distributed.average_buffers(state.model)
    record.update(state.method.on_epoch_end(epoch))
    record["lr"] = state.scheduler.get_last_lr()[0]
    for group, lr in zip(state.optimizer.param_groups[1:], state.scheduler.get_last_lr()[1:]):
        record[f"lr_{group.get('name', 'group')}"] = lr  # optim.backbone_lr's group
    state.scheduler.step()
    record["peak_memory_mb"] = peak_memory_mb(device)
