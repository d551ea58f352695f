"""What a run uses and its checkpoint does not hold: rebuilt from the recipe each time the run starts or
resumes (what a checkpoint restores is engine/run_state.py's ``RunState``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from bogc_cli.engine.callbacks import Callbacks
from bogc_cli.engine.distributed import Distributed
from bogc_cli.engine.loaders import Loaders
from bogc_cli.engine.saving import RunWriter
from bogc_cli.engine.setup import RunParts
from bogc_cli.recipe import Recipe


@dataclass
class RunContext:
    """``recipe``: resolved, single seed; ``autocast``: a zero-argument callable returning the autocast
    context of ``train.precision``; ``distributed``: None unless data-parallel; ``started``: the run's
    ``time.perf_counter()`` start."""

    recipe: Recipe
    parts: RunParts
    run_dir: Path
    console: Console
    device: torch.device
    loaders: Loaders
    autocast: Callable
    distributed: Distributed | None
    writer: RunWriter
    callbacks: Callbacks = field(default_factory=Callbacks)
    started: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        """Whether this process validates and writes (process 0, or the only one)."""
        return self.distributed is None or self.distributed.is_main
