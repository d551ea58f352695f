"""The train loop: one run = one recipe at one seed, written to its run directory.

Run directory (``results/<experiment>/<dataset>/<method>/seed<N>/``):
``recipe.yaml`` (resolved) and ``environment.json``, ``metrics.jsonl`` (one line per epoch),
``best.pt`` (highest validation accuracy; never chosen on test), ``last.pt`` (with optimiser
and scheduler state), ``eval.json`` (test metrics of best.pt).
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bogc_cli import __version__
from bogc_cli.atomic import DiskFull, write_json, write_text
from bogc_cli.data.augment import DeviceAugment
from bogc_cli.data.cache import SplitArrays, carve_validation
from bogc_cli.data.loader import make_loader, to_device
from bogc_cli.engine.checkpoint import load_checkpoint, load_resume_checkpoint, save_checkpoint
from bogc_cli.engine.distributed import Distributed
from bogc_cli.engine.distributed import start as distributed_start
from bogc_cli.engine.evaluate import evaluate_predictions, predict
from bogc_cli.engine.fast_path import fast_path_summary, fused_optimizer, prepare_model, worker_count
from bogc_cli.engine.graceful_stop import GracefulStop, StopRequested
from bogc_cli.engine.modality_dropout import ModalityDropout
from bogc_cli.engine.optim import build_optimizer, build_scheduler
from bogc_cli.engine.progress import TrainProgress
from bogc_cli.engine.runtime import (autocast_factory, peak_memory_mb, pick_device, rng_state, seed_everything,
                                     set_rng_state)
from bogc_cli.engine.run_lock import claim_run_dir
from bogc_cli.engine.setup import build_parts, resolved_recipe, run_dir_for, run_identity
from bogc_cli.errors import UserError
from bogc_cli.fusion import StepContext, method_label
from bogc_cli.recipe import Recipe


@dataclass
class RunResult:
    run_dir: Path
    seed: int
    best_epoch: int
    val_accuracy: float
    test: dict
    seconds: float


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    env = {"bogc": __version__, "git_commit": _git_commit(), "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def data_info(parts) -> dict:
    return {"classes": parts.data.classes,
            "modalities": {m: vars(s) for m, s in parts.data.modalities.items()}}


def train_run(recipe: Recipe, console: Console, overwrite: bool = False, resume: bool = False) -> RunResult | None:
    """Train one seed of a recipe end to end and evaluate its best-validation checkpoint on test.

    The run directory is locked while training; earlier results in it are refused unless ``overwrite``.
    With ``resume``, a finished run is returned as it is and an unfinished one continues after the
    last epoch its ``last.pt`` holds (model, optimiser, scheduler, method state, RNG and data order),
    so it ends exactly as an uninterrupted run would.

    Started by torchrun, the processes train data-parallel (engine/distributed.py); process 0
    writes the run directory and returns the result, the others return None.
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
        console.print(f"[yellow]warning:[/yellow] {note}", highlight=False)
    parts.method_cls.before_training(parts.options, parts.model, resolved, parts.data.classes)  # e.g. a warm start
    if resolved.train.modality_dropout:
        ModalityDropout.check(resolved.train.modality_dropout, parts.model.modalities)
    run_dir = run_dir_for(resolved)
    main = distributed is None or distributed.is_main
    with claim_run_dir(run_dir, overwrite, allow_existing=resume) if main else nullcontext():
        if resume and (run_dir / "eval.json").is_file():
            return _finished(run_dir, console) if main else None
        try:
            return _train_locked(resolved, parts, run_dir, console, started, resume, distributed)
        except DiskFull as exc:
            raise DiskFull(f"{exc}. Training stopped; add --resume to continue {run_dir} from its last "
                           "complete checkpoint") from None


def _finished(run_dir: Path, console: Console) -> RunResult:
    done = json.loads((run_dir / "eval.json").read_text())
    console.print(f"{run_dir} is already finished (eval.json): nothing to resume")
    return RunResult(run_dir, done["seed"], done["epoch"], done["val_accuracy"], done, done.get("train_seconds", 0.0))


@dataclass
class _Loaders:
    train: Any
    holdout: Any
    val: Any
    train_eval: Any
    workers: int
    train_rows: int
    holdout_rows: int


def _build_loaders(parts, resolved: Recipe, device: torch.device, distributed: Distributed | None) -> _Loaders:
    """Training batches (this process's shard of each global batch when data-parallel), the method's
    held-out rows, validation, and an unshuffled pass over the rows trained on."""
    cfg = resolved.train
    workers = worker_count(cfg.num_workers, device, distributed.local_world if distributed else 1)
    pin = device.type == "cuda"
    train_split, holdout_split = _holdout(parts, resolved)
    train = make_loader(train_split, cfg.batch_size, shuffle=True, seed=resolved.seed, num_workers=workers,
                        pin_memory=pin, shard=distributed.shard if distributed else None)
    holdout = None if holdout_split is None else make_loader(
        holdout_split, cfg.eval_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    val = make_loader(parts.data.splits["val"], cfg.eval_batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin)
    train_eval = make_loader(train_split, cfg.eval_batch_size, shuffle=False)
    return _Loaders(train, holdout, val, train_eval, workers, len(train_split),
                    0 if holdout_split is None else len(holdout_split))


def _batch_transforms(cfg, parts, seed: int, device: torch.device) -> dict[str, Any]:
    """Named per-batch edits of training batches, in the order applied: device augmentation, modality dropout."""
    transforms: dict[str, Any] = {}
    if cfg.augment.active:
        kinds = {m: spec.kind for m, spec in parts.data.modalities.items()}
        transforms["augment"] = DeviceAugment(cfg.augment, kinds, seed, device)
    if cfg.modality_dropout:
        transforms["modality_dropout"] = ModalityDropout(cfg.modality_dropout, parts.model.modalities, seed)
    return transforms


def _train_locked(resolved: Recipe, parts, run_dir: Path, console: Console, started: float,
                  resume: bool = False, distributed: Distributed | None = None) -> RunResult | None:
    seed = resolved.seed
    cfg = resolved.train
    main = distributed is None or distributed.is_main
    device = pick_device(cfg.device)
    model = prepare_model(parts.model, cfg, device)
    loaders = _build_loaders(parts, resolved, device, distributed)
    train_loader = loaders.train
    if main:
        write_text(run_dir / "recipe.yaml", resolved.to_yaml())
        env = {**environment(device), **fast_path_summary(cfg, device, loaders.workers),
               "processes": distributed.world if distributed else 1}
        write_json(run_dir / "environment.json", env)

    optimizer = build_optimizer(model.parameters(), resolved.optim, fused=fused_optimizer(cfg, device))
    scheduler = build_scheduler(optimizer, resolved.optim, cfg.epochs)
    autocast = autocast_factory(device, cfg.precision)
    ctx = StepContext(device=device, optimizer=optimizer, autocast=autocast, grad_clip=resolved.optim.grad_clip,
                      holdout=loaders.holdout, train_eval=loaders.train_eval, distributed=distributed,
                      batch_size=cfg.batch_size)
    method = parts.method_cls(parts.options, model, ctx)
    transforms = _batch_transforms(cfg, parts, seed, device)
    recipe_dict = resolved.to_dict()
    info = data_info(parts)

    title = f"{resolved.dataset_label()}/{method_label(resolved)}/seed{seed}"
    records: list[dict] = []
    best_acc, best_epoch, start, last_val = -1.0, 0, 1, {}
    partial = None  # the epoch a mid-epoch checkpoint stopped in
    if resume and (state := load_resume_checkpoint(run_dir, lambda m: console.print(f"[yellow]{m}[/yellow]"))):
        _check_same_recipe(state["recipe"], recipe_dict, run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        extra = state["resume"]
        records, (best_acc, best_epoch), last_val = extra["records"], extra["best"], state["val"]
        train_loader.generator.set_state(extra["loader"])
        set_rng_state(extra["rng"])
        for name, transform in transforms.items():
            transform.load_state_dict(extra[name])
        start = state["epoch"] + 1
        partial = extra.get("partial")
        where = (f"at epoch {partial['epoch']}, step {partial['tally']['steps'] + 1}" if partial else
                 f"after epoch {state['epoch']}")
        console.print(f"resuming {run_dir} {where}")
    elif resume:
        console.print(f"nothing to resume in {run_dir}: starting at epoch 1")

    def save_last(epoch_done: int, partial_epoch: dict | None = None) -> None:
        if not main:
            return
        resume_state = {"rng": rng_state(), "loader": train_loader.generator.get_state(), "records": records,
                        "best": [best_acc, best_epoch]}
        resume_state.update({name: t.state_dict() for name, t in transforms.items()})
        if partial_epoch is not None:
            resume_state["partial"] = partial_epoch
        save_checkpoint(run_dir / "last.pt", model=model, recipe=recipe_dict, epoch=epoch_done, val=last_val,
                        data=info, method_state=method.state_dict(), optimizer=optimizer, scheduler=scheduler,
                        keep_previous=True, resume=resume_state)

    def agreed(flag: bool) -> bool:
        """Data-parallel, every process must stop at the same step: true if true on any of them."""
        return flag if distributed is None else distributed.any(flag, device)

    def edit(batch, part):
        for transform in transforms.values():
            batch = transform(batch, part)
        return batch

    all_step_ms: list[float] = []
    with GracefulStop() as stop, TrainProgress(console, title, cfg.epochs, len(train_loader)) as progress:
        for epoch in range(start, cfg.epochs + 1):
            model.train()
            if partial is not None:  # finish the epoch the last run stopped in, from its next batch
                tally = EpochTally.from_state(partial["tally"], device, sums=main)
                if (mine := _own_partial(partial, distributed)) is not None:  # exactly where this process was
                    tally = EpochTally.from_state(mine["tally"], device)
                    set_rng_state(mine["rng"])
                    _set_float_buffers(model, mine["buffers"])
                train_loader.generator.set_state(partial["loader"])
                train_loader.batch_sampler.start_next_epoch_at(tally.steps)
                method.on_epoch_resume(epoch)
                partial = None
            else:
                tally = EpochTally.begin(device)
                method.on_epoch_start(epoch)
            epoch_order = train_loader.generator.get_state()  # draws this epoch's batch order

            def stop_mid_epoch(tally: EpochTally, epoch: int = epoch, epoch_order=epoch_order) -> None:
                processes = None
                if distributed is not None:
                    # each process's own sums, RNG and BatchNorm statistics, so that a resume with as many
                    # processes continues each exactly; and their totals, for a resume with another count
                    processes = distributed.gather_to_main(
                        {"tally": tally.state(), "rng": rng_state(), "buffers": _float_buffers(model)})
                    tally.add_up(distributed)
                    distributed.average_buffers(model)
                save_last(epoch - 1, {"epoch": epoch, "loader": epoch_order, "tally": tally.state(),
                                      "processes": processes})
                console.print(f"{stop.requested or 'stop'}: stopped at epoch {epoch}, step {tally.steps}; "
                              f"checkpoint saved in {run_dir / 'last.pt'}")
                if distributed is not None:
                    distributed.barrier()  # no process may exit while process 0 still writes
                raise StopRequested

            try:
                record, step_ms = _train_epoch(method, model, train_loader, device, epoch, progress,
                                               cfg.max_bad_steps, tally=tally, transform=edit if transforms else None,
                                               stop_requested=lambda: agreed(stop.requested is not None),
                                               on_stop=stop_mid_epoch, distributed=distributed,
                                               global_rows=(loaders.train_rows, cfg.batch_size))
            except Diverged as exc:
                kept = (f"{run_dir / 'last.pt'} holds epoch {epoch - 1}, from before the fault" if epoch > 1 else
                        "no checkpoint was written (the fault came in the first epoch)")
                raise Diverged(f"{exc}; {kept}") from None
            all_step_ms += step_ms
            if distributed is not None:
                distributed.average_buffers(model)
            record.update(method.on_epoch_end(epoch))
            record["lr"] = scheduler.get_last_lr()[0]
            scheduler.step()
            record["peak_memory_mb"] = peak_memory_mb(device)
            if main:
                val = evaluate_predictions(predict(model, loaders.val, device, autocast), parts.data.classes)
                last_val = val
                record.update({"val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]})
                record.update({f"val_unimodal_accuracy.{m}": a for m, a in val["unimodal_accuracy"].items()})
            records.append(record)
            if main and val["accuracy"] > best_acc:
                best_acc, best_epoch = val["accuracy"], epoch
                save_checkpoint(run_dir / "best.pt", model=model, recipe=recipe_dict, epoch=epoch, val=val,
                                data=info, method_state=method.state_dict())
            save_last(epoch)
            if main:
                write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
                progress.epoch_done(record)
            if distributed is not None:
                distributed.barrier()  # the others wait while process 0 validates and writes
            if agreed(stop.requested is not None):  # during validation or saving: the epoch's checkpoint is complete
                console.print(f"{stop.requested or 'stop'}: stopped after epoch {epoch}; checkpoint saved in "
                              f"{run_dir / 'last.pt'}")
                raise StopRequested

    if not main:
        return None
    method.on_train_end(run_dir, records)
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    test_loader = make_loader(parts.data.splits["test"], cfg.eval_batch_size, shuffle=False)
    test = evaluate_predictions(predict(model, test_loader, device, autocast), parts.data.classes)
    seconds = time.perf_counter() - started
    summary = {
        **run_identity(resolved), "split": "test", "checkpoint": "best.pt", "epoch": best_epoch, **test,
        "val_accuracy": best_acc,
        "step_time_ms_median": statistics.median(all_step_ms) if all_step_ms else float("nan"),
        "epoch_time_s_mean": statistics.fmean(r["epoch_time_s"] for r in records),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
        "train_seconds": seconds,
        "train_rows": loaders.train_rows,
        "holdout_rows": loaders.holdout_rows,
    }
    write_json(run_dir / "eval.json", summary)
    return RunResult(run_dir, seed, best_epoch, best_acc, summary, seconds)


def _holdout(parts, recipe: Recipe) -> tuple[SplitArrays, SplitArrays | None]:
    """(rows to train on, rows held out of train for the method) -- never val or test rows."""
    train = parts.data.splits["train"]
    fraction = parts.method_cls.holdout_fraction(parts.options)
    if fraction <= 0:
        return train, None
    keep, held = carve_validation(train.labels, fraction, recipe.dataset.split_seed)
    return train.subset(keep), train.subset(held)


def _check_same_recipe(saved: dict, current: dict, run_dir: Path) -> None:
    """Resuming under another recipe would silently mix two experiments: refuse, naming the keys."""
    if saved == current:
        return

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(current)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    raise UserError(f"cannot resume {run_dir}: its recipe differs in {', '.join(keys[:6])} "
                    f"(was {', '.join(f'{k}={a.get(k)!r}' for k in keys[:3])}); resume with the same recipe, "
                    "or start over with --overwrite")


class Diverged(UserError):
    """Too many non-finite steps in a row: the run stops; ``last.pt`` still holds the epoch before."""


def _float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.detach().cpu().clone() for b in model.buffers() if b.is_floating_point()]


def _set_float_buffers(model: torch.nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, value in zip((b for b in model.buffers() if b.is_floating_point()), saved, strict=True):
            b.copy_(value)


def _own_partial(partial: dict, distributed: Distributed | None) -> dict | None:
    """This process's part of a data-parallel mid-epoch checkpoint, when the job has as many processes."""
    processes = partial.get("processes")
    if distributed is None or not processes or len(processes) != distributed.world:
        return None
    return processes[distributed.rank]


@dataclass
class EpochTally:
    """Running sums of the epoch in progress: the loss and correct counts (device scalars), the
    per-source logs (device scalars, summed over rows), rows seen, steps taken (bad ones included),
    step times and the seconds spent. Saved in a mid-epoch checkpoint so the epoch can be finished."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    log_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0
    steps: int = 0
    bad: int = 0
    in_a_row: int = 0
    step_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def begin(cls, device: torch.device) -> "EpochTally":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(),
                "log_sums": {k: v.cpu() for k, v in self.log_sums.items()}, "seen": self.seen,
                "steps": self.steps, "bad": self.bad, "in_a_row": self.in_a_row, "step_ms": list(self.step_ms),
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device, sums: bool = True) -> "EpochTally":
        """The tally a checkpoint saved; ``sums=False`` keeps its step counts but starts its sums at zero
        (data-parallel, the saved sums are already every process's, and process 0 alone takes them)."""
        tensors = {k: state[k].to(device) for k in ("loss_sum", "correct")}
        logs = {k: v.to(device) for k, v in state["log_sums"].items()}
        rest = {k: state[k] for k in ("seen", "steps", "bad", "in_a_row", "seconds")}
        if not sums:
            tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
            logs = {k: torch.zeros_like(v) for k, v in logs.items()}
            rest["seen"] = 0
        return cls(**tensors, log_sums=logs, step_ms=list(state["step_ms"]), **rest)

    def add_up(self, distributed: Distributed) -> None:
        """Replace the sums by their totals over every process (one collective)."""
        keys = sorted(self.log_sums)
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device)
        loss_sum, correct, seen, *logs = distributed.sum([self.loss_sum, self.correct, seen,
                                                          *(self.log_sums[k] for k in keys)])
        self.loss_sum, self.correct, self.seen = loss_sum, correct, int(seen)
        self.log_sums = dict(zip(keys, logs))


def _train_epoch(method, model, loader, device, epoch: int, progress: TrainProgress,
                 max_bad_steps: int = 10, tally: EpochTally | None = None,
                 stop_requested=lambda: False, on_stop=None, transform=None,
                 distributed: Distributed | None = None,
                 global_rows: tuple[int, int] | None = None) -> tuple[dict, list[float]]:
    """One epoch, or the rest of one when ``tally`` holds its first steps (the loader then yields
    only the batches after them). A step whose loss or gradient is not finite is skipped (no update),
    counted in ``bad_steps`` and left out of the epoch's averages; ``max_bad_steps`` in a row raise
    ``Diverged``. After every step, if ``stop_requested()``, ``on_stop(tally)`` is called (it saves
    a checkpoint and raises). ``transform(batch, part)`` (augmentation, modality dropout) edits each batch
    before the step; data-parallel, ``part`` = (start, stop, rows) places it in the global batch.

    Data-parallel, ``global_rows`` = (rows in the split, global batch size) tells each step what share
    of its global batch this process holds, and the epoch's sums are added up across processes."""
    model.train()
    tally = tally if tally is not None else EpochTally.begin(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_epoch = time.perf_counter()
    for step, raw in enumerate(loader, start=tally.steps + 1):
        batch = to_device(raw, device)
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
        else:
            tally.in_a_row = 0
            n = len(batch)
            tally.loss_sum += result.loss * n
            tally.correct += (result.fused_logits.argmax(1) == batch.labels).sum()
            for k, v in result.logs.items():
                tally.log_sums[k] = tally.log_sums.get(k, 0) + v.detach().float() * n
            tally.seen += n
            progress.step(epoch, step, float(result.loss) if progress.live else None)
        if stop_requested() and on_stop is not None:
            tally.seconds += time.perf_counter() - t_epoch
            on_stop(tally)
    if distributed is not None:  # the epoch's figures over every process's rows
        tally.add_up(distributed)
    if tally.seen == 0:
        raise Diverged(f"training diverged: every step of epoch {epoch} had a NaN/inf loss or gradient. Lower "
                       "optim.lr, set optim.grad_clip, or check the data for NaN/inf values")
    seen = tally.seen
    record = {
        "epoch": epoch,
        "train_loss": float(tally.loss_sum) / seen,
        "train_accuracy": float(tally.correct) / seen,
        **{f"method.{k}": float(v) / seen for k, v in tally.log_sums.items()},
        "epoch_time_s": tally.seconds + time.perf_counter() - t_epoch,
        "step_time_ms_median": statistics.median(tally.step_ms),
        "step_time_s": sum(tally.step_ms) / 1000,  # inside method.step; the rest of the epoch waited on input
        "steps": len(tally.step_ms),
        "bad_steps": tally.bad,
    }
    return record, tally.step_ms
