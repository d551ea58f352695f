"""Runs a run trains first, inside its own directory: UMT's unimodal teachers when ``method.teachers`` names none.

A method lists them (``Method.prerequisite_runs``: ``{name: single-seed recipe}``); each is trained as an ordinary
run directory ``<run_dir>/<name>`` (its own recipe.yaml, checkpoints, metrics and eval.json), resuming one already
started and keeping one already finished, so a stopped run and its ``--resume`` continue where they were. The
method's options then name them (``Method.with_prerequisites``) and the run records them in environment.json
(``prerequisites``). The global random state is put back afterwards, so the run itself draws what it would draw
with the same runs named in its recipe.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console

from bogc_cli.engine.run_lock import refuse_existing
from bogc_cli.engine.setup import RunParts
from bogc_cli.errors import UserError
from bogc_cli.recipe import Recipe, validate_recipe


def train_prerequisites(parts: RunParts, recipe: Recipe, run_dir: Path, console: Console, overwrite: bool,
                        resume: bool, distributed: Any, train: Callable[..., Any]) -> RunParts:
    """Train the runs ``parts``' method needs first (none for most methods) and return ``parts`` whose options name
    them. ``train``: ``engine.trainer.train_run`` (called as ``train(recipe, console, overwrite=, resume=,
    run_dir=)``, resuming a directory that exists). An earlier run's results in ``run_dir`` are refused before
    anything trains (unless ``resume`` or ``overwrite``: then ``overwrite`` retrains the prerequisites too);
    data-parallel runs are refused (one process trains the prerequisites, and the runs are then named in the
    recipe)."""
    planned = parts.method_cls.prerequisite_runs(parts.options, recipe, list(parts.model.modalities))
    if not planned:
        return parts
    needed = {key: validate_recipe(data, f"{key} (the recipe of a run {recipe.method.name} trains first)")
              for key, data in planned.items()}
    name = recipe.method.name
    if distributed is not None:
        raise UserError(f"method {name}: a data-parallel run cannot train the runs it needs first "
                        f"({', '.join(needed)}); train them with one process and name them in the recipe (see "
                        f"`bogc list`, {name})")
    if not (resume or overwrite):
        refuse_existing(run_dir)
    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    trained: dict[str, Path] = {}
    console.print(f"method {name}: the recipe names none of the runs it needs ({', '.join(needed)}): training them "
                  f"first, inside {run_dir}", highlight=False)
    try:
        for key, sub in needed.items():
            where = run_dir / key
            console.print(f"method {name}: training {key}, a {sub.method.name} run of this recipe (same data, model, "
                          f"optimiser, epochs and seed), in {where}", highlight=False)
            train(sub, console, overwrite=overwrite, resume=where.is_dir(), run_dir=where)  # a started one continues
            trained[key] = where
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
    console.print(f"method {name}: {', '.join(trained)} ready; training the {name} run", highlight=False)
    return replace(parts, options=parts.method_cls.with_prerequisites(parts.options, trained),
                   prerequisites={k: str(v) for k, v in trained.items()})


__all__ = ["train_prerequisites"]
