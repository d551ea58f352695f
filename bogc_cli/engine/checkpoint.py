"""Checkpoints: everything needed to rebuild the model and its data without the original command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bogc_cli import __version__
from bogc_cli.atomic import save_torch
from bogc_cli.errors import UserError


def save_checkpoint(path: Path, *, model, recipe: dict, epoch: int, val: dict, data: dict,
                    method_state: dict | None = None, optimizer=None, scheduler=None) -> None:
    state: dict[str, Any] = {
        "format": "bogc-checkpoint/1",
        "version": __version__,
        "epoch": epoch,
        "recipe": recipe,
        "val": val,
        "data": data,
        "model": model.state_dict(),
        "method": method_state or {},
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    save_torch(path, state)


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
    if not isinstance(state, dict) or state.get("format") != "bogc-checkpoint/1":
        raise UserError(f"{path} is not a bogc checkpoint")
    return state
