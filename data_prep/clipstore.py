"""Resumable, parallel writing of a cache whose samples are decoded one by one (clips, volumes).

A preparer lists its samples as ``Item``s (split already decided, validation carve-out included)
and gives a module-level ``decode(item) -> {modality: array}`` function. ``build_store`` then:

- preallocates ``<split>/<modality>.npy`` in a staging folder ``<out>/.partial/`` (sparse files,
  memory-mapped, so the dataset never has to fit in RAM);
- decodes items in ``workers`` processes (or in this process when ``workers`` is 1) and writes
  each result into its row; a progress bar with rate and ETA runs on a terminal, one log line per
  tenth of the work elsewhere;
- records every finished item in ``.partial/journal.tsv`` (only after its rows are flushed), so a
  run killed at any point and started again with the same inputs redoes only unfinished items;
- leaves out items whose decode raised ``SkipItem`` (or any decoder error), reporting each with
  its reason, and compacts the arrays so the final cache holds only the kept rows;
- keeps items whose decode returned a ``WARNING`` entry (a silent clip, blank frames) and reports
  each with its warning.

The finished splits are moved to ``<out>/<split>/`` and returned memory-mapped; the caller then
writes the manifest (``bogc_cli.data.cache.write_manifest``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bogc_cli.atomic import save_numpy, write_json, write_text
from bogc_cli.data.cache import SPLITS, SplitArrays
from bogc_cli.engine.graceful_stop import signal_on_parent_death
from bogc_cli.errors import UserError
from data_prep._common import Log, no_log

STAGING = ".partial"
JOURNAL = "journal.tsv"
PLAN = "plan.json"
COPY_ROWS = 256  # rows per chunk when compacting
FLUSH_SECONDS = 2.0

IN_WORKER = False
"""True inside a decoding worker process: decoders should then use one thread each (the
workers already fill the cores; nested thread pools only contend)."""


def _worker_init() -> None:
    global IN_WORKER
    IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it keeps what was written
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@dataclass(frozen=True)
class Item:
    """One sample to prepare: a unique ``key`` (stored in ids.txt), its ``split`` and integer ``label``,
    and ``source``: whatever ``decode`` needs (paths, offsets); it must pickle."""

    key: str
    split: str
    label: int
    source: Any


class SkipItem(Exception):
    """Raised by a decode function: leave the item out, reporting the message as the reason."""


WARNING = "__warning__"
"""Key of an optional ``str`` in a decode function's result: keep the item, but report this warning."""


Layout = dict[str, tuple[tuple[int, ...], str]]
"""Per modality: the per-sample shape and the storage dtype (``"uint8"``, ``"float16"``, ...)."""

Decode = Callable[[Item], dict[str, np.ndarray]]


def _die_with_parent() -> None:
    """End this worker when the parent dies (SIGKILL included), instead of idling on as an orphan."""
    parent = os.getppid()
    if signal_on_parent_death(signal.SIGKILL) and os.getppid() == parent:  # the parent may have died already
        return
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def build_store(out: Path, items: list[Item], layout: Layout, decode: Decode, *, fingerprint: str,
                workers: int = 1, log: Log = no_log, noun: str = "clips"
                ) -> tuple[dict[str, SplitArrays], list[dict[str, str]], list[str]]:
    """Decode ``items`` into ``out/<split>/``; returns the kept splits (memory-mapped), the skipped items
    (``{"file", "reason"}``) and the warnings about kept items (``"<file>: <warning>"``).

    ``fingerprint`` identifies the inputs and parameters: a staging folder left by an interrupted run
    with the same fingerprint is resumed, any other is discarded. Splits appear in SPLITS order.
    """
    out = Path(out)
    staging = out / STAGING
    by_split = {s: [it for it in items if it.split == s] for s in SPLITS}
    by_split = {s: its for s, its in by_split.items() if its}
    unknown = {it.split for it in items} - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}")
    plan = {"fingerprint": fingerprint, "layout": {m: [list(s), d] for m, (s, d) in layout.items()},
            "splits": {s: [it.key for it in its] for s, its in by_split.items()}}
    done, warned = _resume_or_reset(staging, plan, log, noun)
    _check_space(staging, {s: len(its) for s, its in by_split.items()}, layout)
    arrays = {s: {m: _open_rows(staging / s / f"{m}.npy", (len(its), *shape), dtype)
                  for m, (shape, dtype) in layout.items()} for s, its in by_split.items()}
    todo = [(s, row, it) for s, its in by_split.items() for row, it in enumerate(its) if (s, row) not in done]
    _run(todo, arrays, layout, decode, staging / JOURNAL, done, warned, workers, log, noun, total=len(items))
    skipped = [{"file": _describe(by_split[s][row]), "reason": reason}
               for (s, row), reason in sorted(done.items()) if reason is not None]
    warnings = [f"{_describe(by_split[s][row])}: {text}" for (s, row), text in sorted(warned.items())
                if done.get((s, row), "") is None]
    splits = _finish(out, staging, by_split, arrays, done)
    return splits, skipped, warnings


# ---------------------------------------------------------------------------------------------
# staging and resuming


def _resume_or_reset(staging: Path, plan: dict, log: Log, noun: str
                     ) -> tuple[dict[tuple[str, int], str | None], dict[tuple[str, int], str]]:
    """Rows already finished in ``staging`` by an earlier run with the same plan: ``{(split, row): skip reason}``
    and ``{(split, row): warning}``. A staging folder whose arrays are gone (a run stopped while moving
    finished splits out) cannot be trusted and is started again."""
    plan_path = staging / PLAN
    if plan_path.is_file():
        try:
            same = json.loads(plan_path.read_text()) == json.loads(json.dumps(plan))
        except json.JSONDecodeError:
            same = False
        if same:
            done, warned = _read_journal(staging / JOURNAL)
            arrays_present = all((staging / split / f"{m}.npy").is_file()
                                 for split in {s for s, _ in done} for m in plan["layout"])
            if arrays_present:
                if done:
                    log(f"resuming: {len(done)} {noun} already done in an earlier run")
                return done, warned
            log("the unfinished preparation's arrays are incomplete: starting again")
        else:
            log("discarding an unfinished preparation with other inputs or parameters")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write_json(plan_path, plan)
    return {}, {}


def _read_journal(path: Path) -> tuple[dict[tuple[str, int], str | None], dict[tuple[str, int], str]]:
    done: dict[tuple[str, int], str | None] = {}
    warned: dict[tuple[str, int], str] = {}
    if not path.is_file():
        return done, warned
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) not in (3, 4) or not fields[1].isdigit():
            continue  # a line cut short by a kill: that item is simply redone
        split, row, reason = fields[:3]
        done[(split, int(row))] = reason or None
        if len(fields) == 4 and fields[3]:
            warned[(split, int(row))] = fields[3]
    return done, warned


def _check_space(staging: Path, rows: dict[str, int], layout: Layout) -> None:
    """Refuse to start when the disk cannot hold the arrays: memory-mapped writes to a full disk do not
    fail cleanly (the process dies of SIGBUS), so the space is checked up front. Space already taken by
    an interrupted run's arrays counts as available."""
    needed = sum(n * int(np.prod(shape)) * np.dtype(dtype).itemsize
                 for n in rows.values() for shape, dtype in layout.values())
    taken = sum(f.stat().st_blocks * 512 for f in staging.rglob("*.npy"))
    free = shutil.disk_usage(staging).free
    if needed - taken > free:
        gib = 1024 ** 3
        raise UserError(f"not enough disk space for the prepared arrays in {staging.parent}: they need "
                        f"{needed / gib:.2f} GiB, {free / gib:.2f} GiB is free. Free some space or choose "
                        "another --out, then run the same command again")


def _open_rows(path: Path, shape: tuple[int, ...], dtype: str) -> np.memmap:
    """The staging array at ``path`` (created sparse when absent), memory-mapped for writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return np.lib.format.open_memmap(path, mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)


def _describe(item: Item) -> str:
    """How a skipped item is named in the report: its file (``source.describe()``, or the source itself
    when it is a path), else its key."""
    source = item.source
    if callable(getattr(source, "describe", None)):
        return str(source.describe())
    return str(source) if isinstance(source, (str, Path)) else item.key


# ---------------------------------------------------------------------------------------------
# decoding


def _decode_safely(decode: Decode, item: Item, layout: Layout) -> dict[str, np.ndarray] | str:
    """``decode(item)`` checked against ``layout`` (its ``WARNING`` entry, if any, passed on); a string is
    the reason to skip the item."""
    try:
        result = decode(item)
    except SkipItem as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any decoder failure on one file must not end the run
        return f"cannot decode ({type(exc).__name__}: {exc})"
    for m, (shape, _) in layout.items():
        if m not in result or tuple(result[m].shape) != tuple(shape):
            got = None if m not in result else tuple(result[m].shape)
            return f"decoder returned {m} of shape {got}, expected {tuple(shape)}"
    return result


def _run(todo: list[tuple[str, int, Item]], arrays: dict[str, dict[str, np.memmap]], layout: Layout,
         decode: Decode, journal_path: Path, done: dict, warned: dict, workers: int, log: Log, noun: str,
         total: int) -> None:
    if not todo:
        return
    journal = open(journal_path, "a", encoding="utf-8")
    pending_lines: list[str] = []
    last_flush = time.monotonic()
    progress = _Progress(len(todo), total - len(todo), total, log, noun)

    def record(split: str, row: int, result: dict[str, np.ndarray] | str) -> None:
        nonlocal last_flush
        warning = ""
        if isinstance(result, str):
            reason = _one_line(result)
        else:
            reason = ""
            warning = _one_line(result.get(WARNING) or "")
            for m, arr in result.items():
                if m in layout:
                    arrays[split][m][row] = arr
        pending_lines.append(f"{split}\t{row}\t{reason}" + (f"\t{warning}" if warning else "") + "\n")
        done[(split, row)] = reason or None
        if warning:
            warned[(split, row)] = warning
        progress.advance()
        if time.monotonic() - last_flush > FLUSH_SECONDS:
            _flush(arrays, journal, pending_lines)
            last_flush = time.monotonic()

    try:
        if workers <= 1:
            for split, row, item in todo:
                record(split, row, _decode_safely(decode, item, layout))
        else:
            _run_pool(todo, decode, layout, workers, record)
    finally:
        _flush(arrays, journal, pending_lines)
        journal.close()
        progress.close()


def _one_line(text: str) -> str:
    return str(text).replace("\t", " ").replace("\n", " ")


def _run_pool(todo, decode: Decode, layout: Layout, workers: int, record) -> None:
    """Decode in ``workers`` spawned processes, at most ``4 * workers`` items in flight."""
    context = multiprocessing.get_context("spawn")  # fork after torch's threads start is unsafe
    queue = iter(todo)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
        in_flight = {}
        for split, row, item in queue:
            in_flight[pool.submit(_decode_safely, decode, item, layout)] = (split, row)
            if len(in_flight) >= 4 * workers:
                break
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                split, row = in_flight.pop(future)
                record(split, row, future.result())
                nxt = next(queue, None)
                if nxt is not None:
                    in_flight[pool.submit(_decode_safely, decode, nxt[2], layout)] = (nxt[0], nxt[1])


def _flush(arrays: dict[str, dict[str, np.memmap]], journal, lines: list[str]) -> None:
    """Rows reach the disk before the journal says they are done."""
    if not lines:
        return
    for split_arrays in arrays.values():
        for arr in split_arrays.values():
            arr.flush()
    journal.writelines(lines)
    journal.flush()
    os.fsync(journal.fileno())
    lines.clear()


class _Progress:
    """A rich progress bar with ETA on a terminal; a log line per tenth of the work otherwise."""

    def __init__(self, todo: int, already: int, total: int, log: Log, noun: str):
        self.todo, self.count, self.log, self.noun = todo, 0, log, noun
        self.start = time.monotonic()
        self.next_report = max(1, todo // 10)
        self.bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn(f"preparing {noun}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("prepare", total=total, completed=already, rate="")
            self.bar.start()

    def advance(self) -> None:
        self.count += 1
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(self.task, advance=1, rate=f"{rate:.1f}/s")
        elif self.count >= self.next_report or self.count == self.todo:
            eta = (self.todo - self.count) / rate if rate > 0 else 0.0
            self.log(f"{self.count}/{self.todo} {self.noun} ({rate:.1f}/s, ETA {eta:.0f} s)")
            self.next_report += max(1, self.todo // 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------------------------
# finishing


def _finish(out: Path, staging: Path, by_split: dict[str, list[Item]], arrays: dict[str, dict[str, np.memmap]],
            done: dict) -> dict[str, SplitArrays]:
    """Move (or compact, when items were skipped) each split into ``out/<split>/``; returns them memory-mapped."""
    missing = [(s, r) for s, its in by_split.items() for r in range(len(its)) if (s, r) not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} items were not processed")
    splits = {}
    for split, its in by_split.items():
        keep = np.array([r for r in range(len(its)) if done[(split, r)] is None], np.int64)
        final = out / split
        final.mkdir(parents=True, exist_ok=True)
        inputs = {}
        for m, arr in arrays[split].items():
            target = final / f"{m}.npy"
            if len(keep) == len(its):
                arr.flush()
                del arr
                os.replace(staging / split / f"{m}.npy", target)
            else:
                _compact(arr, keep, target)
            inputs[m] = np.load(target, mmap_mode="r")
        labels = np.array([its[r].label for r in keep], np.int64)
        ids = [its[r].key for r in keep]
        save_numpy(final / "labels.npy", labels)
        write_text(final / "ids.txt", "".join(f"{k}\n" for k in ids))
        splits[split] = SplitArrays(inputs, labels, ids)
    arrays.clear()
    shutil.rmtree(staging)
    return splits


def _compact(source: np.memmap, keep: np.ndarray, target: Path) -> None:
    """Copy rows ``keep`` of ``source`` to a new ``.npy`` at ``target`` in chunks (atomic rename)."""
    tmp = target.with_name(f".{target.name}.tmp")
    needed = len(keep) * source[:1].nbytes
    if needed > shutil.disk_usage(target.parent).free:  # see _check_space: a memmap cannot fail cleanly
        raise UserError(f"not enough disk space to write {target} ({needed / 1024 ** 2:.0f} MiB): free some space "
                        "and run the same command again (the decoded clips are kept and not redone)")
    dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=source.dtype, shape=(len(keep), *source.shape[1:]))
    for start in range(0, len(keep), COPY_ROWS):
        dest[start:start + COPY_ROWS] = source[keep[start:start + COPY_ROWS]]
    dest.flush()
    del dest
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
