"""Batches from split arrays: whole batches are sliced at once (no per-sample collate)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bogc_cli.data.cache import SplitArrays


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


def make_loader(split: SplitArrays, batch_size: int, shuffle: bool, seed: int = 0,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole-batch slices; shuffling is seeded (same order for the same seed)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ArrayDataset(split), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_identity, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, drop_last=False)


def to_device(raw: dict, device: torch.device) -> Batch:
    """Move a raw batch to ``device`` and convert inputs to float32 (uint8 -> [0, 1])."""
    inputs = {}
    for m, x in raw["inputs"].items():
        x = x.to(device, non_blocking=True)
        inputs[m] = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return Batch(inputs, raw["labels"].to(device, non_blocking=True), raw["index"])
