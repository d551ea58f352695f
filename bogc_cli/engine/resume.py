"""``--resume``: put a run back where its newest sound last.pt left it, under the same recipe only."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bogc_cli.engine.checkpoint import load_resume_checkpoint
from bogc_cli.engine.run_state import RunState
from bogc_cli.errors import UserError


def restore(state: RunState, run_dir: Path, recipe: dict, console: Console) -> None:
    """Load the newest sound ``last.pt`` of ``run_dir`` (else ``last.prev.pt``; a damaged one is reported)
    into ``state`` and say where the run continues; with neither, say that it starts at epoch 1.

    Raises ``UserError`` when the checkpoint's recipe differs from ``recipe`` (the resolved one, as a dict)."""
    checkpoint = load_resume_checkpoint(run_dir, lambda m: console.print(f"[yellow]{m}[/yellow]"))
    if checkpoint is None:
        console.print(f"nothing to resume in {run_dir}: starting at epoch 1")
        return
    check_same_recipe(checkpoint["recipe"], recipe, run_dir)
    state.load_state_dict(checkpoint)
    partial = state.partial
    where = (f"at epoch {partial['epoch']}, step {partial['tally']['steps'] + 1}" if partial else
             f"after epoch {state.epoch}")
    console.print(f"resuming {run_dir} {where}")


def check_same_recipe(saved: dict, current: dict, run_dir: Path) -> None:
    """Resuming under another recipe would silently mix two experiments: refuse, naming the keys."""
    if saved == current:
        return
    a, b = _flat(saved), _flat(current)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    raise UserError(f"cannot resume {run_dir}: its recipe differs in {', '.join(keys[:6])} "
                    f"(was {', '.join(f'{k}={a.get(k)!r}' for k in keys[:3])}); resume with the same recipe, "
                    "or start over with --overwrite")


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
