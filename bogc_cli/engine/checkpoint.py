"""Checkpoints: everything needed to rebuild the model and its data without the original command."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from bogc_cli import __version__
from bogc_cli.atomic import save_torch, write_text
from bogc_cli.errors import UserError


FORMAT = "bogc-checkpoint/1"


def checkpoint_header(recipe: dict, data: dict) -> dict[str, Any]:
    """What every checkpoint starts with: format, bogc version, the resolved recipe, the data's classes and
    modalities (enough to rebuild the model without the original command)."""
    return {"format": FORMAT, "version": __version__, "recipe": recipe, "data": data}


def save_checkpoint(path: Path, *, model, recipe: dict, epoch: int, val: dict, data: dict,
                    method_state: dict | None = None, optimizer=None, scheduler=None,
                    resume: dict | None = None, keep_previous: bool = False) -> None:
    """Write a checkpoint of ``model`` (and, given, its optimiser, scheduler and ``resume`` state) with
    ``write_checkpoint``.

    ``resume`` holds what continuing training needs beyond the model (RNG and data-order states, the
    epoch history)."""
    state: dict[str, Any] = {**checkpoint_header(recipe, data), "epoch": epoch, "val": val,
                             "model": model.state_dict(), "method": method_state or {}}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if resume is not None:
        state["resume"] = resume
    write_checkpoint(path, state, keep_previous)


def write_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write a checkpoint's ``state`` (``checkpoint_header`` and the rest) atomically, then its sha256
    beside it (``<name>.sha256``).

    With ``keep_previous`` the new checkpoint is written in full as ``<stem>.next.pt`` first, then the
    existing ``path`` becomes ``<stem>.prev.pt`` and the new one takes its name, so a checkpoint damaged
    later still leaves the one before it."""
    if not keep_previous:
        save_torch(path, state)
        write_text(checksum_path(path), f"{file_sha256(path)}  {path.name}\n")
        return
    # Written in full beside the old one before anything is renamed, so a failed write (a full
    # disk, a kill) never costs the checkpoint already there.
    staged = staged_path(path)
    save_torch(staged, state)
    write_text(checksum_path(staged), f"{file_sha256(staged)}  {path.name}\n")
    if path.is_file():
        previous = previous_path(path)
        os.replace(path, previous)
        if checksum_path(path).is_file():
            os.replace(checksum_path(path), checksum_path(previous))
    os.replace(staged, path)
    os.replace(checksum_path(staged), checksum_path(path))


def checkpoint_files() -> list[str]:
    """Every file name the trainer's checkpoints occupy in a run directory (checksums and the kept
    predecessor included)."""
    last = Path("last.pt")
    names = ["best.pt", last.name, previous_path(last).name, staged_path(last).name]
    return names + [checksum_path(Path(n)).name for n in names]


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def staged_path(path: Path) -> Path:
    """Where a checkpoint is written in full before it replaces ``path``."""
    return path.with_name(f"{path.stem}.next{path.suffix}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path) -> str | None:
    """Why ``path`` cannot be trusted (missing, checksum mismatch), or None when it checks out."""
    if not path.is_file():
        return "missing"
    sums = checksum_path(path)
    if not sums.is_file():
        return "no checksum file"
    expected = (sums.read_text().split() or [""])[0]
    return None if expected == file_sha256(path) else "checksum mismatch (truncated or modified)"


def load_resume_checkpoint(run_dir: Path, log) -> dict[str, Any] | None:
    """The newest sound ``last.pt`` (or ``last.prev.pt``) of ``run_dir`` for resuming, else None.

    A damaged one is reported through ``log`` and the previous one used."""
    for path in (run_dir / "last.pt", previous_path(run_dir / "last.pt")):
        problem = verified(path)
        if problem == "missing":
            continue
        if problem is None:
            try:
                state = load_checkpoint(path)
            except UserError as exc:
                problem = str(exc)
            else:
                if "resume" in state:
                    return state
                problem = "written by a bogc without resume support"
        log(f"{path} cannot be used ({problem}); trying the checkpoint before it")
    return None


def resolve_checkpoint(target: str | Path) -> Path:
    """A run directory (-> its best.pt) or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        path = target / "best.pt"
        if not path.is_file():
            raise UserError(f"{target} has no best.pt: it is not a finished run directory "
                            f"(expected results/<experiment>/<dataset>/<method>/seed<N>/)")
        return path
    if not target.is_file():
        raise UserError(f"{target} does not exist: give a run directory or a .pt checkpoint")
    return target


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); it is corrupt or not "
                        f"a bogc checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a bogc checkpoint")
    return state
