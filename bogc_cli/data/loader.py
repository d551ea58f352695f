"""Batches from split arrays: whole batches are sliced at once (no per-sample collate)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bogc_cli.data.cache import SplitArrays
from bogc_cli.engine.graceful_stop import loader_worker_init


@dataclass
class Batch:
    """``inputs[m]``: ``[B, *shape_m]`` float32 on the device; ``labels``: ``[B]`` int64 (classification),
    ``[B, C]`` uint8 (multilabel) or ``[B]`` float32 (regression), as the cache stores them; ``index``: rows in the split;
    ``variant``: ``[B]`` int64 (CPU), which re-sampled variant of its row each sample is (0: the row as stored; a
    method that re-samples the training set says what the others mean: ``Method.training_entries``), or None."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor
    variant: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class ArrayDataset(Dataset):
    """A split as a map-style dataset whose ``__getitems__`` returns one stacked batch.

    Arrays keep their storage dtype (uint8 frames, float16 spectrograms) until they reach
    the device, where ``to_device`` converts them, so little memory crosses the bus.
    An index ``i >= len`` is an entry of a re-sampled epoch (``resampled_entries``): row ``i % len``,
    variant ``i // len``.
    """

    def __init__(self, split: SplitArrays):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> dict:
        variant, idx = np.divmod(np.asarray(indices, dtype=np.int64), len(self.split))
        return {
            "inputs": {m: torch.from_numpy(np.ascontiguousarray(a[idx])) for m, a in self.split.inputs.items()},
            "labels": torch.from_numpy(np.ascontiguousarray(self.split.labels[idx])),
            "index": torch.from_numpy(idx),
            "variant": torch.from_numpy(variant),
        }


def _identity(batch):
    return batch


class EpochBatches(Sampler[list[int]]):
    """Row indices of one epoch cut into batches: a fresh seeded permutation per epoch (``shuffle``) or
    the split in order; ``start_next_epoch_at(k)`` makes the next epoch begin at batch ``k`` (0-based) of
    the same permutation, so a run resumed in mid-epoch sees the batches it had not reached yet.

    ``use_entries(entries)`` makes the following epochs run over a re-sampled training set instead of
    each row once: the permutation is then of the entries (``resampled_entries``), so the batch order
    stays a function of the generator's state and the entries alone.

    ``generator`` is consumed only here: one ``randperm`` per epoch, and one more once the epoch is
    exhausted (as ``RandomSampler`` + ``BatchSampler`` draw them), so its state after ``k`` epochs
    depends on the seed, ``k`` and those epochs' entry counts alone."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 shard: Callable[[list[int]], list[int]] | None = None):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.shard = shard  # data-parallel: this process's rows of each global batch
        self._skip = 0
        self.entries: list[int] | None = None  # a re-sampled epoch's entries; None: every row once

    @property
    def rows(self) -> int:
        """Entries per epoch: the split's rows, or the re-sampled epoch's entries."""
        return self.n if self.entries is None else len(self.entries)

    def __len__(self) -> int:
        return (self.rows + self.batch_size - 1) // self.batch_size

    def start_next_epoch_at(self, batch: int) -> None:
        self._skip = batch

    def use_entries(self, entries: torch.Tensor | None) -> None:
        """Train the following epochs on ``entries`` (``[N]`` int64 codes from ``resampled_entries``), or, with
        None, on every row once."""
        self.entries = None if entries is None else entries.tolist()

    def __iter__(self):
        skip, self._skip = self._skip, 0
        n = self.rows
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else range(n)
        if self.entries is not None:
            order = [self.entries[i] for i in order]
        for start in range(skip * self.batch_size, n, self.batch_size):
            rows = list(order[start:start + self.batch_size])
            yield rows if self.shard is None else self.shard(rows)
        if self.shuffle:  # RandomSampler draws one more (empty-sliced) permutation when exhausted
            torch.randperm(n, generator=self.generator)


def resampled_entries(copies: torch.Tensor) -> torch.Tensor:
    """The entries of a re-sampled epoch: every row once, then ``copies[v - 1, i]`` extra copies of row ``i`` as
    variant ``v`` (row by row, variants in order). ``copies``: ``[V, n]`` non-negative ints; returns ``[N]`` int64
    codes ``v * n + i`` (``ArrayDataset`` decodes them; ``Batch.variant`` carries ``v``), ``N = n + copies.sum()``."""
    if copies.dim() != 2 or bool((copies < 0).any()):
        raise ValueError(f"copies must be a [variants, rows] tensor of non-negative counts, got {tuple(copies.shape)}")
    variants, n = copies.shape
    codes = (torch.arange(1, variants + 1).view(-1, 1) * n + torch.arange(n)).T.reshape(-1)  # row-major: row, variant
    return torch.cat([torch.arange(n), codes.repeat_interleave(copies.T.reshape(-1).long())])


#: Offset of the worker-seed generator from the run seed (apart from the order, dropout and augmentation ones).
WORKER_SEED_OFFSET = 15_485_863


class EpochLoader(DataLoader):
    """A ``DataLoader`` over ``EpochBatches`` whose random streams depend on the seed alone, never on the
    number of worker processes.

    torch draws the workers' base seed from ``DataLoader.generator`` each time it builds an iterator:
    every epoch without workers or persistent workers, once per run with persistent workers, once more
    after a resume; with ``generator=None`` it draws from the global torch generator (the one dropout
    and torchaudio's masking use). Either way a stream that training depends on would be consumed a
    worker-count-dependent number of times (issue 17, kind 4: epoch-2 loss 7.417 with 0 workers,
    7.408 with 2). Here that base seed always comes from ``worker_seeds``, a generator of its own
    seeded from the run seed, which nothing else reads; the workers only slice arrays (augmentation
    and modality dropout run in the main process, with generators of their own), so the seed they
    get changes no result.

    ``generator`` stays the batch-order generator (``batch_sampler.generator``), the one a checkpoint
    saves and restores; only ``EpochBatches`` draws from it.
    """

    def __init__(self, dataset: Dataset, batches: EpochBatches, worker_seed: int, **kwargs):
        super().__init__(dataset, batch_sampler=batches, generator=batches.generator, **kwargs)
        self.worker_seeds = torch.Generator().manual_seed(worker_seed)

    def __iter__(self):
        order, self.generator = self.generator, self.worker_seeds  # what torch's iterator draws its base seed from
        try:
            return super().__iter__()
        finally:
            self.generator = order


def make_loader(split: SplitArrays, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, pin_memory: bool = False,
                shard: Callable[[list[int]], list[int]] | None = None) -> EpochLoader:
    """A DataLoader over whole-batch slices; shuffling is seeded (same order for the same seed, whatever
    ``num_workers``).

    ``loader.batch_sampler`` is an ``EpochBatches``; ``loader.generator`` holds the shuffling state
    (``None`` unshuffled). With workers, batches are sliced from the memory-mapped arrays in other
    processes and land in pinned memory (``pin_memory``), a few batches ahead of the training loop."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    batches = EpochBatches(len(split), batch_size, shuffle, generator, shard)
    return EpochLoader(ArrayDataset(split), batches, worker_seed=(seed + WORKER_SEED_OFFSET) % 2**64,
                       collate_fn=_identity, num_workers=num_workers, pin_memory=pin_memory,
                       persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
                       worker_init_fn=partial(loader_worker_init, os.getpid()) if num_workers > 0 else None)


def to_device(raw: dict, device: torch.device) -> Batch:
    """Move a raw batch to ``device`` and convert inputs to float32 (uint8 -> [0, 1])."""
    inputs = {}
    for m, x in raw["inputs"].items():
        x = x.to(device, non_blocking=True)
        inputs[m] = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return Batch(inputs, raw["labels"].to(device, non_blocking=True), raw["index"], raw.get("variant"))
