"""One writer per run directory: a lock held while training, and no silent overwrite of results.

``claim_run_dir`` takes ``<run_dir>/.lock`` with ``flock`` (released by the kernel when the
process ends, however it ends, so a crashed run never leaves a stale lock) and refuses:

- a directory another live process is training into (whatever ``--overwrite`` says);
- a directory that already holds results of an earlier run, unless ``overwrite`` is set, in which
  case those results are removed before training starts.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from bogc_cli.engine.checkpoint import checkpoint_files
from bogc_cli.errors import UserError

LOCK = ".lock"
#: What a run writes; with --overwrite these are removed before the new run starts.
RESULT_FILES = ("eval.json", *checkpoint_files(), "metrics.jsonl", "recipe.yaml", "environment.json",
                "missing_modality.csv", "missing_modality.png", "missing_modality.pdf",
                # the trackers' (bogc_cli/tracking/): TensorBoard's event folder, the MLflow and W&B run ids
                # (a new run gets new tracker runs) and W&B's offline folder
                "tensorboard", "mlflow.json", "wandb.json", "wandb")
RESULT_GLOBS = ("eval-*.json", "missing_modality-*.csv", "missing_modality-*.png", "missing_modality-*.pdf")


class RunLock:
    """The held lock of one run directory; ``release()`` (or leaving the ``with`` block) frees it."""

    def __init__(self, run_dir: Path, handle):
        self.run_dir, self._handle = run_dir, handle

    def release(self) -> None:
        if self._handle is not None:  # the file stays: unlinking it would let two processes lock two inodes
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def existing_results(run_dir: Path) -> list[str]:
    """Names of result files already in ``run_dir``."""
    if not run_dir.is_dir():
        return []
    names = [n for n in RESULT_FILES if (run_dir / n).exists()]
    return names + sorted(p.name for g in RESULT_GLOBS for p in run_dir.glob(g))


def refuse_existing(run_dir: Path) -> None:
    """Raise when ``run_dir`` holds results (call before any training, for every seed of a command)."""
    found = existing_results(run_dir)
    if found:
        state = "a finished run" if "eval.json" in found else "an unfinished run"
        raise UserError(f"{run_dir} already holds {state} ({', '.join(found[:4])}): pass --resume to continue it "
                        "(a finished run is kept as it is), --overwrite to replace it, or choose another --out, "
                        "experiment or seed")


def claim_run_dir(run_dir: Path, overwrite: bool, allow_existing: bool = False) -> RunLock:
    """Lock ``run_dir`` for this process; with ``overwrite`` clear earlier results, else refuse them
    (unless ``allow_existing``: a resume continues them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{run_dir} is being written by a run in progress (pid {holder}): wait for it to finish, "
                        "or choose another --out, experiment or seed") from None
    lock = RunLock(run_dir, handle)
    try:
        if overwrite:
            for name in existing_results(run_dir):
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        elif not allow_existing:
            refuse_existing(run_dir)
    except BaseException:
        lock.release()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return lock
