"""The train loop: one run = one recipe at one seed, written to its run directory.

Run directory (``results/<experiment>/<dataset>/<method>/seed<N>/``):
``recipe.yaml`` (resolved) and ``environment.json``, ``metrics.jsonl`` (one line per epoch),
``best.pt`` (best validation score: accuracy, or the task's selection metric; never chosen on test), ``last.pt`` (with optimiser
and scheduler state), ``eval.json`` (test metrics of best.pt).

A run is a few named parts (docs/engine.md): this module builds them and runs the epochs;
``RunContext`` (context.py) holds what a run uses and ``RunState`` (run_state.py) what its
checkpoint restores; each epoch is ``begin_epoch`` / ``train_epoch`` / ``epoch_record`` /
``end_epoch`` (epoch.py), then validation and model selection (selection.py) and the writes
(saving.py; mid_epoch.py for a stop inside an epoch); ``final_evaluation`` (final_eval.py) ends it.
``Callback``s (callbacks.py) see the run start, every step, every epoch's record and the run's end,
and may stop it at an epoch boundary.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console
from rich.markup import escape as rich_escape

from bogc_cli.atomic import DiskFull
from bogc_cli.data.loader import to_device
from bogc_cli.engine.batch_transforms import BatchTransforms
from bogc_cli.engine.callbacks import Callback, Callbacks, RunEnd, RunStart, RunStopped
from bogc_cli.engine.conflict import GradientConflict
from bogc_cli.engine.context import RunContext
from bogc_cli.engine.distributed import Distributed
from bogc_cli.engine.distributed import start as distributed_start
from bogc_cli.engine.epoch import Diverged, begin_epoch, end_epoch, epoch_record, train_epoch
from bogc_cli.engine.fast_path import fast_path_summary, fused_optimizer, prepare_model
from bogc_cli.engine.final_eval import RunResult, final_evaluation
from bogc_cli.engine.graceful_stop import GracefulStop, StopRequested
from bogc_cli.engine.loaders import build_loaders
from bogc_cli.engine.mid_epoch import save_mid_epoch
from bogc_cli.engine.modality_dropout import ModalityDropout
from bogc_cli.engine.optim import build_optimizer, build_scheduler
from bogc_cli.engine.prerequisites import train_prerequisites
from bogc_cli.engine.progress import TrainProgress
from bogc_cli.engine.provenance import data_info, environment
from bogc_cli.engine.resume import check_same_recipe, restore, saved_recipe
from bogc_cli.engine.run_lock import claim_run_dir
from bogc_cli.engine.run_state import RunState
from bogc_cli.engine.runtime import autocast_factory, keep_freed_host_memory, pick_device, seed_everything
from bogc_cli.engine.saving import RunWriter
from bogc_cli.engine.selection import validate_epoch
from bogc_cli.engine.setup import RunParts, build_parts, resolved_recipe, run_dir_for
from bogc_cli.fusion import StepContext, method_label
from bogc_cli.recipe import Recipe
from bogc_cli.tracking import build_trackers

__all__ = ["Callback", "Diverged", "RunResult", "RunStopped", "train_run"]

# what a stop asked for at an epoch's end, in rising strength (data-parallel, the strongest of any process wins)
_GO_ON, _CALLBACK_STOP, _SIGNAL_STOP = 0, 1, 2


def train_run(recipe: Recipe, console: Console, overwrite: bool = False, resume: bool = False,
              callbacks: Sequence[Callback] = (), run_dir: Path | None = None) -> RunResult | None:
    """Train one seed of a recipe end to end and evaluate its best-validation checkpoint on test.

    The run directory is locked while training; earlier results in it are refused unless ``overwrite``.
    With ``resume``, a finished run is returned as it is and an unfinished one continues after the
    last epoch its ``last.pt`` holds (model, optimiser, scheduler, method state, RNG and data order),
    so it ends exactly as an uninterrupted run would.

    ``callbacks`` (engine/callbacks.py) see the run start, each step, each epoch's record and the run's
    end; one may stop the run after an epoch, which then raises ``RunStopped`` (resumable). The trackers
    of ``output.trackers`` (bogc_cli/tracking/) come first. Ctrl-C or
    SIGTERM raise ``StopRequested`` after checkpointing; bad input, ``UserError`` (``Diverged``, ``DiskFull``).

    Started by torchrun, the processes train data-parallel (engine/distributed.py); process 0
    writes the run directory, runs the callbacks and returns the result, the others return None.

    ``run_dir``: where the run is written (default ``run_dir_for(recipe)``); runs the method needs first (UMT's
    teachers when the recipe names none) are trained inside it (engine/prerequisites.py).
    """
    assert recipe.seeds is None, "train_run takes a single-seed recipe (Recipe.for_seed)"
    started = time.perf_counter()
    resolved = resolved_recipe(recipe)
    distributed = distributed_start(resolved.train.device)
    if distributed is not None and not distributed.is_main:
        console = Console(quiet=True)
    seed_everything(resolved.seed, resolved.train.deterministic)  # the same seed: the same initial weights
    parts = build_parts(resolved)  # data and recipe mistakes are reported before anything is written
    for note in parts.data.notes:  # what the data loader decided for the user (carve-outs, missing classes)
        console.print(f"[yellow]warning:[/yellow] {rich_escape(str(note))}", highlight=False)
    run_dir = run_dir_for(resolved) if run_dir is None else run_dir
    parts = train_prerequisites(parts, resolved, run_dir, console, overwrite, resume, distributed, train_run)
    parts.method_cls.before_training(parts.options, parts.model, resolved, parts.data.classes)  # e.g. a warm start
    if resolved.train.modality_dropout:
        ModalityDropout.check(resolved.train.modality_dropout, parts.model.modalities)
    main = distributed is None or distributed.is_main
    if main:  # output.trackers: refused (not installed, a store that cannot be opened) before anything is written
        callbacks = [*build_trackers(resolved, run_dir), *callbacks]
    with claim_run_dir(run_dir, overwrite, allow_existing=resume) if main else nullcontext():
        if resume and (run_dir / "eval.json").is_file():
            if (saved := saved_recipe(run_dir)) is not None:
                check_same_recipe(saved, resolved.to_dict(), run_dir)
            return _finished(run_dir, console) if main else None
        try:
            return _train_locked(resolved, parts, run_dir, console, started, resume, distributed, callbacks)
        except DiskFull as exc:
            raise DiskFull(f"{exc}. Training stopped; add --resume to continue {run_dir} from its last "
                           "complete checkpoint") from None


def _finished(run_dir: Path, console: Console) -> RunResult:
    done = json.loads((run_dir / "eval.json").read_text())
    console.print(f"{run_dir} is already finished (eval.json): nothing to resume")
    metric = done.get("select_metric", "accuracy")
    return RunResult(run_dir, done["seed"], done["epoch"], done[f"val_{metric}"], done, done.get("train_seconds", 0.0),
                     metric)


def _train_locked(resolved: Recipe, parts: RunParts, run_dir: Path, console: Console, started: float,
                  resume: bool = False, distributed: Distributed | None = None,
                  callbacks: Sequence[Callback] = ()) -> RunResult | None:
    """Build the run's parts (in the order that draws the same initial weights as ever), resume it if
    asked, train the remaining epochs and evaluate best.pt on test; the callbacks see it all."""
    cfg = resolved.train
    main = distributed is None or distributed.is_main
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_host_memory()  # no page faults for each step's temporaries (runtime.keep_freed_host_memory)
    model = prepare_model(parts.model, cfg, device)
    loaders = build_loaders(parts, resolved, device, distributed)
    recipe_dict = resolved.to_dict()
    ctx = RunContext(resolved, parts, run_dir, console, device, loaders, autocast_factory(device, cfg.precision),
                     distributed, RunWriter(run_dir, recipe_dict, data_info(parts), main),
                     Callbacks(callbacks if main else ()), started)
    if main:
        ctx.writer.begin(resolved.to_yaml(), {**environment(device), **fast_path_summary(cfg, device, loaders.workers),
                                              "processes": distributed.world if distributed else 1,
                                              "encoders": parts.model.encoder_sources(),
                                              **({"prerequisites": parts.prerequisites} if parts.prerequisites
                                                 else {})})
    state = _build_state(ctx, model)
    if state.conflict is not None and ctx.main:  # samples after the steps, like any callback
        ctx.callbacks.items.append(state.conflict)
    if resume:
        restore(state, run_dir, recipe_dict, console)
    try:
        ctx.callbacks.on_run_start(_run_start(ctx, state, recipe_dict))
        step_ms = _fit(ctx, state)
        result = _evaluate_after_training(ctx, state, step_ms) if main else None
    except BaseException as exc:
        ctx.callbacks.on_run_end(_ending(exc, state.epoch))
        raise
    ctx.callbacks.on_run_end(RunEnd("finished", state.epoch, result=result))
    return result


def _evaluate_after_training(ctx: RunContext, state: RunState, step_ms: list[float]) -> RunResult:
    """``final_evaluation`` under Ctrl-C/SIGTERM. Training is complete and ``last.pt`` holds its last epoch,
    so a signal abandons the evaluation at once (``eval.json`` is written last, atomically) and says so: the
    same command with ``--resume`` evaluates the finished run. Without this, SIGTERM kept its default action
    here and the process died without a word (exit -15)."""
    try:
        with GracefulStop(at_once=True):
            return final_evaluation(ctx, state, step_ms)
    except StopRequested as stop:
        ctx.console.print(f"{stop}: stopped during the final evaluation; training is complete, checkpoint saved in "
                          f"{ctx.run_dir / 'last.pt'}")
        raise


def _run_start(ctx: RunContext, state: RunState, recipe: dict) -> RunStart:
    """Where the run starts or continues: the first epoch, and the global steps its checkpoint holds."""
    per_epoch = len(ctx.loaders.train)
    if state.partial is not None:  # continues inside the epoch a mid-epoch checkpoint stopped in
        first, done = state.partial["epoch"], (state.partial["epoch"] - 1) * per_epoch + state.partial["tally"]["steps"]
    else:
        first, done = state.epoch + 1, state.epoch * per_epoch
    return RunStart(ctx.run_dir, recipe, first, ctx.recipe.train.epochs, per_epoch, list(state.records), done)


def _build_state(ctx: RunContext, model: torch.nn.Module) -> RunState:
    """The optimiser, schedule, method (which may add parameters of its own) and batch transforms of a fresh run."""
    recipe, cfg, parts = ctx.recipe, ctx.recipe.train, ctx.parts
    optimizer = build_optimizer(model.parameters(), recipe.optim, fused=fused_optimizer(cfg, ctx.device),
                                backbone=model.backbone_parameters())
    scheduler = build_scheduler(optimizer, recipe.optim, cfg.epochs)
    step_ctx = StepContext(device=ctx.device, optimizer=optimizer, autocast=ctx.autocast,
                           grad_clip=recipe.optim.grad_clip, holdout=ctx.loaders.holdout,
                           train_eval=ctx.loaders.train_eval, distributed=ctx.distributed,
                           batch_size=cfg.batch_size)
    method = parts.method_cls(parts.options, model, step_ctx)
    transforms = BatchTransforms.for_run(cfg, parts.data.modalities, parts.model.modalities, recipe.seed, ctx.device)
    conflict = None if not cfg.conflict_every else GradientConflict(
        model, method.fused_loss, ctx.loaders.train.dataset.split, cfg.batch_size, cfg.conflict_every, ctx.device,
        ctx.autocast)
    return RunState(model, optimizer, scheduler, method, ctx.loaders.train.generator, transforms, conflict)


def _fit(ctx: RunContext, state: RunState) -> list[float]:
    """Train from the epoch after ``state.epoch`` to ``train.epochs``; returns this session's step times (ms).
    Ctrl-C or SIGTERM stop it after the step in progress, checkpointed (``StopRequested``)."""
    recipe = ctx.recipe
    title = f"{recipe.dataset_label()}/{method_label(recipe)}/seed{recipe.seed}"
    step_ms: list[float] = []
    with GracefulStop() as stop, TrainProgress(ctx.console, title, recipe.train.epochs, len(ctx.loaders.train),
                                                  ctx.parts.model.task.metric, ctx.parts.model.task.task) \
            as progress:
        for epoch in range(state.epoch + 1, recipe.train.epochs + 1):
            step_ms += _run_epoch(ctx, state, epoch, stop, progress)
    return step_ms


def _run_epoch(ctx: RunContext, state: RunState, epoch: int, stop: GracefulStop, progress: TrainProgress) -> list[float]:
    """One epoch's steps, then validation and model selection, best.pt, last.pt, metrics.jsonl and the
    callbacks' ``on_epoch_end``; returns its step times. A stop asked for during the steps checkpoints the
    step reached; one asked for later (or by a callback), the epoch; both then end the run."""
    cfg, device, distributed, model = ctx.recipe.train, ctx.device, ctx.distributed, state.model
    model.train()
    tally = begin_epoch(state, epoch, ctx.loaders.train, device, distributed, ctx.main)
    epoch_order = state.order.get_state()  # draws this epoch's batch order
    try:
        finished = _train_epoch(state.method, model, ctx.loaders.train, device, epoch, progress, cfg.max_bad_steps,
                                tally=tally, should_stop=partial(_stop_asked, stop, distributed, device),
                                transform=state.transforms or None, distributed=distributed,
                                global_rows=(ctx.loaders.train.batch_sampler.rows, cfg.batch_size),
                                callbacks=ctx.callbacks)
        record = epoch_record(tally, epoch) if finished else None
    except Diverged as exc:
        kept = (f"{ctx.run_dir / 'last.pt'} holds epoch {epoch - 1}, from before the fault" if epoch > 1 else
                "no checkpoint was written (the fault came in the first epoch)")
        raise Diverged(f"{exc}; {kept}") from None
    if record is None:  # a stop came during the steps
        _stop_mid_epoch(ctx, state, epoch, epoch_order, tally, stop)
    end_epoch(state, record, epoch, device, distributed)
    if state.conflict is not None and ctx.main:
        record.update(state.conflict.epoch_values())
    if ctx.main and validate_epoch(state, record, epoch, ctx.loaders.val, device, ctx.autocast,
                                   ctx.parts.data.classes):
        ctx.writer.best(state)
    state.records.append(record)
    state.epoch = epoch
    ctx.writer.last(state)
    ctx.writer.metrics(state.records)
    reason = None
    if ctx.main:
        progress.epoch_done(record)
        reason = ctx.callbacks.on_epoch_end(epoch, record)
    if distributed is not None:
        distributed.barrier()  # the others wait while process 0 validates and writes
    _stop_at_epoch_end(ctx, epoch, stop, reason)
    return tally.step_ms


def _train_epoch(method, model, loader, device: torch.device, epoch: int, progress: TrainProgress,
                 max_bad_steps: int = 10, **kwargs) -> bool:
    """``epoch.train_epoch`` over ``loader``'s batches, each moved to ``device`` (``to_device``) as it is
    taken. (Tests replace this function, or ``to_device``, to stop or poison a run at a chosen batch.)"""
    return train_epoch(method, model, (to_device(raw, device) for raw in loader), device, epoch, progress,
                       max_bad_steps, **kwargs)


def _stop_asked(stop: GracefulStop, distributed: Distributed | None, device: torch.device) -> bool:
    """Whether a stop signal has come; data-parallel, every process must stop at the same step, so: on any
    of them (one collective)."""
    flag = stop.requested is not None
    return flag if distributed is None else distributed.any(flag, device)


def _stop_mid_epoch(ctx: RunContext, state: RunState, epoch: int, epoch_order: torch.Tensor, tally,
                    stop: GracefulStop) -> None:
    """Checkpoint the step reached (every process takes part) and end the run: ``StopRequested``."""
    save_mid_epoch(state, ctx.writer, epoch, epoch_order, tally, ctx.distributed)
    ctx.console.print(f"{stop.requested or 'stop'}: stopped at epoch {epoch}, step {tally.steps}; "
                      f"checkpoint saved in {ctx.run_dir / 'last.pt'}")
    if ctx.distributed is not None:
        ctx.distributed.barrier()  # no process may exit while process 0 still writes
    raise StopRequested(stop.requested or "stop")


def _stop_at_epoch_end(ctx: RunContext, epoch: int, stop: GracefulStop, reason: str | None) -> None:
    """End the run after epoch ``epoch`` (its checkpoint is complete) if a signal came during validation or
    saving (``StopRequested``) or a callback gave a ``reason`` (``RunStopped``); one collective agrees on it."""
    asked = _SIGNAL_STOP if stop.requested is not None else _CALLBACK_STOP if reason is not None else _GO_ON
    agreed = asked if ctx.distributed is None else ctx.distributed.most(asked, ctx.device)
    if agreed == _GO_ON:
        return
    why = (stop.requested or "stop") if agreed == _SIGNAL_STOP else (reason or "a callback of process 0")
    ctx.console.print(f"{why}: stopped after epoch {epoch}; checkpoint saved in {ctx.run_dir / 'last.pt'}")
    if agreed == _SIGNAL_STOP:
        raise StopRequested(why)
    raise RunStopped(ctx.run_dir, epoch, why)


def _ending(exc: BaseException, epochs_done: int) -> RunEnd:
    """How a run that raised ``exc`` ended, for the callbacks."""
    if isinstance(exc, RunStopped):
        return RunEnd("stopped", epochs_done, exc.reason)
    if isinstance(exc, KeyboardInterrupt):
        return RunEnd("stopped", epochs_done, str(exc) or "interrupted")
    return RunEnd("failed", epochs_done, str(exc) or type(exc).__name__)
