"""Modality dropout during training (``train.modality_dropout: {audio: 0.3}``): robustness training.

Each training sample loses modality m with probability p_m: its input is zeroed, which is what
``model.fill: zero-input`` does to a missing modality at evaluation, so pair the two when comparing
robustness. A sample never loses every modality (one it would lose is kept, chosen at random).
Masks come from a generator of their own, saved in checkpoints, so a resumed run draws the same ones.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError


class ModalityDropout:
    def __init__(self, rates: dict[str, float] | float, modalities: list[str], seed: int):
        if not isinstance(rates, dict):  # one rate for every modality
            rates = {m: float(rates) for m in modalities}
        self.check(rates, modalities)
        self.modalities = list(modalities)
        self.rates = torch.tensor([float(rates.get(m, 0.0)) for m in self.modalities])
        self.generator = torch.Generator().manual_seed(seed + 7_919)  # apart from the data-order generator

    @staticmethod
    def check(rates: dict[str, float] | float, modalities: list[str]) -> None:
        unknown = sorted(set(rates) - set(modalities)) if isinstance(rates, dict) else []
        if unknown:
            raise UserError(f"train.modality_dropout names {unknown}, which the run does not use; its modalities: "
                            f"{', '.join(modalities)}")

    def __call__(self, batch: Batch, part: tuple[int, int, int] | None = None) -> Batch:
        """The batch with dropped inputs zeroed (new tensors; inputs ``[B, ...]`` keep their shapes).

        ``part`` = (start, stop, rows): the batch is rows start..stop of a global batch of ``rows``
        (data-parallel); draws are made for the global batch, so every process agrees with one process."""
        start, stop, n = part if part is not None else (0, len(batch), len(batch))
        k = len(self.modalities)
        drop = torch.rand(n, k, generator=self.generator) < self.rates                  # [rows, M]
        everything = drop.all(dim=1)
        if everything.any():  # keep one modality of such samples, uniformly chosen
            keep = torch.randint(k, (n,), generator=self.generator)
            drop[everything, keep[everything]] = False
        drop = drop[start:stop]                                                          # [B, M]
        inputs = {}
        for j, m in enumerate(self.modalities):
            x = batch.inputs[m]
            present = (~drop[:, j]).to(device=x.device, dtype=x.dtype)
            inputs[m] = x * present.view(-1, *([1] * (x.dim() - 1)))
        return replace(batch, inputs=inputs)  # labels, index and variant as they were

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
