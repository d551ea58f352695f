"""What a run writes into its directory while it trains: recipe.yaml and environment.json at the start,
best.pt when validation improves, last.pt after every epoch (and inside one, on a stop), metrics.jsonl.

Every write is atomic (bogc_cli/atomic.py), and last.pt keeps its predecessor as last.prev.pt, so a
failure mid-write (a kill, a full disk) leaves every earlier file whole. Data-parallel, process 0
alone writes: on the other processes a ``RunWriter`` does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from bogc_cli.atomic import write_json, write_text
from bogc_cli.engine.checkpoint import checkpoint_header, save_checkpoint, write_checkpoint
from bogc_cli.engine.run_state import RunState


class RunWriter:
    """``recipe``: the resolved recipe as a dict and ``data``: the data's classes and modalities, both
    stored in every checkpoint so it can be used without the original command."""

    def __init__(self, run_dir: Path, recipe: dict, data: dict, main: bool = True):
        self.run_dir, self.recipe, self.data, self.main = run_dir, recipe, data, main

    def begin(self, recipe_yaml: str, environment: dict) -> None:
        if self.main:
            write_text(self.run_dir / "recipe.yaml", recipe_yaml)
            write_json(self.run_dir / "environment.json", environment)

    def last(self, state: RunState) -> None:
        """last.pt: everything a resume needs (``RunState.state_dict``)."""
        if self.main:
            write_checkpoint(self.run_dir / "last.pt", {**checkpoint_header(self.recipe, self.data),
                                                        **state.state_dict()}, keep_previous=True)

    def best(self, state: RunState) -> None:
        """best.pt: the model and method of the best epoch (``state.best_epoch``, validated as ``state.val``)."""
        if self.main:
            save_checkpoint(self.run_dir / "best.pt", model=state.model, recipe=self.recipe, epoch=state.best_epoch,
                            val=state.val, data=self.data, method_state=state.method.state_dict())

    def metrics(self, records: list[dict]) -> None:
        """metrics.jsonl: one line per epoch."""
        if self.main:
            write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
