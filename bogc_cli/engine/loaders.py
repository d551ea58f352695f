"""The data loaders of a run: training batches, the method's held-out rows, validation, and an unshuffled
pass over the rows trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bogc_cli.data.cache import SplitArrays, carve_validation
from bogc_cli.data.loader import make_loader
from bogc_cli.engine.distributed import Distributed
from bogc_cli.engine.fast_path import worker_count
from bogc_cli.engine.setup import RunParts
from bogc_cli.recipe import Recipe


@dataclass
class Loaders:
    """``train.generator`` draws the batch order (a checkpoint saves it); ``holdout`` is None unless the
    method holds rows out of train (``Method.holdout_fraction``)."""

    train: Any
    holdout: Any
    val: Any
    train_eval: Any
    workers: int
    train_rows: int
    holdout_rows: int


def build_loaders(parts: RunParts, resolved: Recipe, device: torch.device, distributed: Distributed | None) -> Loaders:
    """Training batches (this process's shard of each global batch when data-parallel), the method's
    held-out rows, validation, and an unshuffled pass over the rows trained on."""
    cfg = resolved.train
    workers = worker_count(cfg.num_workers, device, distributed.local_world if distributed else 1)
    pin = device.type == "cuda"
    train_split, holdout_split = holdout(parts, resolved)
    train = make_loader(train_split, cfg.batch_size, shuffle=True, seed=resolved.seed, num_workers=workers,
                        pin_memory=pin, shard=distributed.shard if distributed else None)
    held = None if holdout_split is None else make_loader(
        holdout_split, cfg.eval_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    val = make_loader(parts.data.splits["val"], cfg.eval_batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin)
    train_eval = make_loader(train_split, cfg.eval_batch_size, shuffle=False)
    return Loaders(train, held, val, train_eval, workers, len(train_split),
                   0 if holdout_split is None else len(holdout_split))


def holdout(parts: RunParts, recipe: Recipe) -> tuple[SplitArrays, SplitArrays | None]:
    """(rows to train on, rows held out of train for the method) -- never val or test rows."""
    train = parts.data.splits["train"]
    fraction = parts.method_cls.holdout_fraction(parts.options)
    if fraction <= 0:
        return train, None
    keep, held = carve_validation(train.labels, fraction, recipe.dataset.split_seed)
    return train.subset(keep), train.subset(held)
