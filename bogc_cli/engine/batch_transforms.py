"""Per-batch edits of training batches (device augmentation, modality dropout), applied in that order.

Each transform draws from a generator of its own, seeded from the run seed and saved in checkpoints
under the transform's name, so a resumed run draws the same crops, flips, masks and dropped modalities.
"""

from __future__ import annotations

from typing import Any

import torch

from bogc_cli.data.augment import DeviceAugment
from bogc_cli.data.loader import Batch
from bogc_cli.engine.modality_dropout import ModalityDropout
from bogc_cli.recipe import TrainBlock


class BatchTransforms:
    """Named transforms ``transform(batch, part) -> batch``; false when there are none (the loop then
    skips the call). ``part`` = (start, stop, rows) places a data-parallel shard in its global batch."""

    def __init__(self, transforms: dict[str, Any] | None = None):
        self.transforms = dict(transforms or {})

    @classmethod
    def for_run(cls, cfg: TrainBlock, modalities: dict[str, Any], used: list[str], seed: int,
                device: torch.device) -> "BatchTransforms":
        """From ``train.augment`` and ``train.modality_dropout``; ``modalities``: the data's specs (their
        ``kind`` chooses each augmentation), ``used``: the model's modalities (dropout draws over them)."""
        transforms: dict[str, Any] = {}
        if cfg.augment.active:
            transforms["augment"] = DeviceAugment(cfg.augment, {m: spec.kind for m, spec in modalities.items()},
                                                  seed, device)
        if cfg.modality_dropout:
            transforms["modality_dropout"] = ModalityDropout(cfg.modality_dropout, used, seed)
        return cls(transforms)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __call__(self, batch: Batch, part: tuple[int, int, int] | None = None) -> Batch:
        for transform in self.transforms.values():
            batch = transform(batch, part)
        return batch

    def state_dict(self) -> dict[str, dict]:
        """``{name: the transform's state}``."""
        return {name: t.state_dict() for name, t in self.transforms.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore each transform from ``state[name]`` (other keys of ``state`` are left alone)."""
        for name, transform in self.transforms.items():
            transform.load_state_dict(state[name])
