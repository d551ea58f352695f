"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, each a ``Callback`` (engine/callbacks.py).

A recipe asks for them with ``output.trackers: [tensorboard, mlflow, wandb]`` (any combination; none by
default). ``build_trackers`` makes the callbacks of a run before anything is written: a tracker whose
package is not installed (``pip install -e ".[track]"``), or an MLflow store that cannot be opened, is
one ``UserError`` (exit 2) then. Their packages are imported only here, only when asked for, so a run
without trackers never loads them.

What each writes, and how a resumed run continues the same tracker run without repeating a step, is in
the module of each (tensorboard.py, mlflow_tracker.py, wandb_tracker.py) and in README "Watching runs".
Data-parallel, ``train_run`` builds them on process 0 alone.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from bogc_cli.engine.callbacks import Callback
from bogc_cli.errors import UserError
from bogc_cli.recipe import Recipe

#: tracker name -> the package it needs (import name, pip name)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_installed(names: list[str]) -> None:
    """Raise ``UserError`` naming every tracker in ``names`` whose package is missing, and the fix."""
    missing = [n for n in names if not installed(PACKAGES[n][0])]
    if missing:
        pips = " ".join(PACKAGES[n][1] for n in missing)
        raise UserError(f"output.trackers: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                        f"pip install -e \".[track]\" (or pip install {pips}), or remove "
                        f"{'it' if len(missing) == 1 else 'them'} from output.trackers")


def build_trackers(recipe: Recipe, run_dir: Path) -> list[Callback]:
    """The tracker callbacks ``recipe.output.trackers`` asks for, for the run in ``run_dir`` (not yet written).

    Raises ``UserError`` when a tracker's package is missing or broken, or its store cannot be opened."""
    names = list(recipe.output.trackers)
    if not names:
        return []
    require_installed(names)
    trackers: list[Callback] = []
    for name in names:
        if name == "tensorboard":
            from bogc_cli.tracking.tensorboard import TensorBoardTracker

            trackers.append(TensorBoardTracker(run_dir, recipe.output.log_every_n_steps))
        elif name == "mlflow":
            from bogc_cli.tracking.mlflow_tracker import MlflowTracker

            trackers.append(MlflowTracker(recipe, run_dir))
        else:
            from bogc_cli.tracking.wandb_tracker import WandbTracker

            trackers.append(WandbTracker(recipe, run_dir))
    return trackers


def import_or_refuse(module: str, tracker: str):
    """``importlib.import_module(module)``; an installed package that fails to import (a broken install,
    a clashing dependency) is a ``UserError`` naming the tracker, not a traceback."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the package raised while importing
        raise UserError(f"output.trackers: {tracker} is installed but cannot be imported ({module}: "
                        f"{type(exc).__name__}: {exc}); reinstall it (pip install -e \".[track]\") or remove it "
                        "from output.trackers") from None


__all__ = ["PACKAGES", "build_trackers", "import_or_refuse", "installed", "require_installed"]
