"""Everything a run's checkpoint restores, in one object: ``RunState``.

``state_dict()`` is last.pt's content beyond its header (engine/checkpoint.py ``checkpoint_header``)::

    epoch       epochs complete
    val         the last validation metrics
    model, method, optimizer, scheduler     their state_dicts
    resume:
        rng       Python, NumPy and torch generators (runtime.rng_state)
        loader    the batch-order generator (the training loader's ``generator``)
        records   metrics.jsonl's records so far
        best      [best validation score (the task's selection metric), its epoch]
        <name>    each batch transform's generator (augment, modality_dropout)
        conflict  the gradient-conflict sampling's sums of the epoch in progress (engine/conflict.py)
        partial   only in a checkpoint written inside an epoch (engine/mid_epoch.py)

and ``load_state_dict`` puts a run back exactly there, so a resumed run ends bitwise as an
uninterrupted one (CPU). The layout is the one checkpoints of earlier versions have, so they resume too.
"""

from __future__ import annotations

from typing import Any

import torch

from bogc_cli.engine.batch_transforms import BatchTransforms
from bogc_cli.engine.runtime import rng_state, set_rng_state
from bogc_cli.fusion.base import Method


class RunState:
    """The model, optimiser, scheduler and method; the random and data-order generators; the epoch
    tally, the records, the best epoch so far; and, while a run resumes inside an epoch, that epoch's
    saved progress (``partial``)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, method: Method,
                 order: torch.Generator, transforms: BatchTransforms, conflict=None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.method = method
        self.order = order  # draws each epoch's batch order
        self.transforms = transforms
        self.conflict = conflict  # GradientConflict (engine/conflict.py), or None when train.conflict_every is 0
        self.epoch = 0  # epochs complete
        self.records: list[dict] = []
        self.best_score = -1.0  # the selection metric's best value (tasks.TaskSpec.metric); epoch 0: none yet
        self.best_epoch = 0
        self.val: dict = {}  # the last validation metrics
        self.partial: dict | None = None  # the epoch a mid-epoch checkpoint stopped in (engine/mid_epoch.py)

    @property
    def best_accuracy(self) -> float:
        """``best_score`` under its classification name (the validation accuracy of a default run)."""
        return self.best_score

    @best_accuracy.setter
    def best_accuracy(self, value: float) -> None:
        self.best_score = value

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's content (see the module docstring); the global RNG state is read now."""
        resume = {"rng": rng_state(), "loader": self.order.get_state(), "records": self.records,
                  "best": [self.best_score, self.best_epoch], **self.transforms.state_dict()}
        if self.conflict is not None:
            resume["conflict"] = self.conflict.state_dict()
        if self.partial is not None:
            resume["partial"] = self.partial
        return {"epoch": self.epoch, "val": self.val, "model": self.model.state_dict(),
                "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "resume": resume}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` (a last.pt as loaded): every part, and the global RNG."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        resume = state["resume"]
        self.records, self.val = resume["records"], state["val"]
        self.best_score, self.best_epoch = resume["best"]
        self.order.set_state(resume["loader"])
        set_rng_state(resume["rng"])
        self.transforms.load_state_dict(resume)
        if self.conflict is not None and "conflict" in resume:
            self.conflict.load_state_dict(resume["conflict"])
        self.epoch = state["epoch"]
        self.partial = resume.get("partial")
