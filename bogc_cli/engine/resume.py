"""``--resume``: put a run back where its newest sound last.pt left it, under the same recipe only.

The recipe check (``check_same_recipe``) also serves a finished run kept by ``--resume``, the CLI's check of
every seed before the first trains, and the sweep planner (a cell whose run has another recipe is not done).
"""

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


#: Where things are, not what a run is: they may differ between a run and its resume (the data moved,
#: the command runs from another folder) without mixing two experiments.
LOCATION_KEYS = ("dataset.root", "output.dir")
#: How a run is watched (output.trackers and their settings), never what it computes: a resume may add a
#: tracker, and a recipe of a version without them resumes.
WATCH_KEYS = tuple(f"output.{k}" for k in ("trackers", "log_every_n_steps", "mlflow_uri", "wandb_project"))
#: Labels, not set-up: ``protocol`` names how the set-up was chosen and changes no training, so a run begun
#: before its sweep named a protocol (or before the key existed) continues, and stays done, under the label.
LABEL_KEYS = ("protocol",)


def check_same_recipe(saved: dict, current: dict, run_dir: Path) -> None:
    """Continuing ``run_dir`` (or keeping its finished run) under another recipe would silently mix two
    experiments: refuse, naming the keys.

    ``saved``: the resolved recipe the run was started with (its checkpoint's, or its ``recipe.yaml``);
    ``current``: the resolved recipe of the command now."""
    diff = recipe_differences(saved, current)
    if diff:
        state = "finished" if (run_dir / "eval.json").is_file() else "unfinished"
        raise UserError(f"{run_dir} holds a {state} run of another recipe: it differs in {describe_differences(diff)}. "
                        "Continue it with the recipe it was started with, pass --overwrite to train it again "
                        "with this one, or choose another --out, experiment or seed")


def recipe_differences(saved: dict, current: dict) -> dict[str, tuple]:
    """``{dotted key: (saved value, current value)}`` for every key on which two resolved recipes differ,
    ``LOCATION_KEYS``, ``WATCH_KEYS`` and ``LABEL_KEYS`` aside. The saved recipe is first filled in with
    today's defaults where it validates, so an option added to bogc since the run was made (at its default)
    is no difference."""
    a, b = _flat(_with_defaults(saved)), _flat(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in LOCATION_KEYS + WATCH_KEYS + LABEL_KEYS}


def describe_differences(diff: dict[str, tuple], most: int = 4) -> str:
    """``train.epochs (was 3, now 5), optim.lr (was 0.001, now 0.002)``; at most ``most`` keys, then a count."""
    items = [f"{k} (was {a!r}, now {b!r})" for k, (a, b) in list(diff.items())[:most]]
    more = len(diff) - most
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def saved_recipe(run_dir: Path) -> dict | None:
    """The resolved recipe a run directory was started with (its ``recipe.yaml``, written before the first
    epoch), or None."""
    import yaml

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _with_defaults(saved: dict) -> dict:
    from bogc_cli.engine.setup import resolved_recipe
    from bogc_cli.recipe import validate_recipe

    try:
        return resolved_recipe(validate_recipe(saved)).to_dict()
    except UserError:  # written by a bogc whose recipe keys differ: compared as it is
        return saved


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty block stays a value)."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out
