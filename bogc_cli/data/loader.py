"""Batches from split arrays: whole batches are sliced at once (no per-sample collate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bogc_cli.data.cache import SplitArrays
from bogc_cli.engine.graceful_stop import ignore_interrupts_in_worker


@dataclass
class Batch:
    """``inputs[m]``: ``[B, *shape_m]`` float32 on the device; ``labels``: ``[B]`` int64; ``index``: rows in the split."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class ArrayDataset(Dataset):
    """A split as a map-style dataset whose ``__getitems__`` returns one stacked batch.

    Arrays keep their storage dtype (uint8 frames, float16 spectrograms) until they reach
    the device, where ``to_device`` converts them, so little memory crosses the bus.
    """

    def __init__(self, split: SplitArrays):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        return {
            "inputs": {m: torch.from_numpy(np.ascontiguousarray(a[idx])) for m, a in self.split.inputs.items()},
            "labels": torch.from_numpy(np.ascontiguousarray(self.split.labels[idx])),
            "index": torch.from_numpy(idx),
        }


def _identity(batch):
    return batch


class EpochBatches(Sampler[list[int]]):
    """Row indices of one epoch cut into batches: a fresh seeded permutation per epoch (``shuffle``) or
    the split in order; ``start_next_epoch_at(k)`` makes the next epoch begin at batch ``k`` (0-based) of
    the same permutation, so a run resumed in mid-epoch sees the batches it had not reached yet.

    The permutation is drawn exactly as ``RandomSampler`` + ``BatchSampler`` draw it, so run
    results match those of earlier versions that used them."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 shard: Callable[[list[int]], list[int]] | None = None):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.shard = shard  # data-parallel: this process's rows of each global batch
        self._skip = 0

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def start_next_epoch_at(self, batch: int) -> None:
        self._skip = batch

    def __iter__(self):
        skip, self._skip = self._skip, 0
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else range(self.n)
        for start in range(skip * self.batch_size, self.n, self.batch_size):
            rows = list(order[start:start + self.batch_size])
            yield rows if self.shard is None else self.shard(rows)
        if self.shuffle:  # RandomSampler draws one more (empty-sliced) permutation when exhausted
            torch.randperm(self.n, generator=self.generator)


def make_loader(split: SplitArrays, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, pin_memory: bool = False,
                shard: Callable[[list[int]], list[int]] | None = None) -> DataLoader:
    """A DataLoader over whole-batch slices; shuffling is seeded (same order for the same seed).

    ``loader.batch_sampler`` is an ``EpochBatches``; ``loader.generator`` holds the shuffling state.
    With workers, batches are sliced from the memory-mapped arrays in other processes and land in
    pinned memory (``pin_memory``), a few batches ahead of the training loop."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    batches = EpochBatches(len(split), batch_size, shuffle, generator, shard)
    return DataLoader(ArrayDataset(split), batch_sampler=batches, generator=generator,
                      collate_fn=_identity, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=ignore_interrupts_in_worker if num_workers > 0 else None)


def to_device(raw: dict, device: torch.device) -> Batch:
    """Move a raw batch to ``device`` and convert inputs to float32 (uint8 -> [0, 1])."""
    inputs = {}
    for m, x in raw["inputs"].items():
        x = x.to(device, non_blocking=True)
        inputs[m] = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return Batch(inputs, raw["labels"].to(device, non_blocking=True), raw["index"])
