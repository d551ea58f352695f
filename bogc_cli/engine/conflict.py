"""Gradient conflict over training: the cosine between the fusion loss's gradient and each modality loss's
gradient on that modality's encoder, sampled every ``train.conflict_every`` steps, for every method.

For encoder m with parameters ``theta_m`` (all of them, flattened into one vector)::

    cos_m = < dL_0/dtheta_m , dL_m/dtheta_m > / (|dL_0/dtheta_m| |dL_m/dtheta_m|)

``L_0`` is the fusion loss (``Method.fused_loss``: cross-entropy of the fused logits) and ``L_m`` the
cross-entropy of modality m's unimodal logits. For the methods that train with unimodal losses (uniform,
bogc, mmpareto, ...) ``L_m`` is their own unimodal loss; for the methods that have none (joint, ogm_ge
with fusion slices, ...) it is the loss the unimodal head (a probe under joint, a slice of the fusion
head under ``fusion-slices``) would send the encoder if it were trained through it -- the same measure
for every method. -1 means the two losses pull the encoder in opposite directions, 0 that they are
unrelated, 1 that they agree. MMPareto (Wei & Hu, ICML 2024) decides on this cosine (its
``method.mmpareto.cos.<m>`` is the same quantity on the training batch).

Sampling: at the global steps g = (epoch - 1) * steps_per_epoch + step with (g - 1) % every == 0, after
the step, on the k-th batch (k = (g - 1) // every, cycling) of the rows trained on in their stored order,
``train.batch_size`` rows, in train mode (the batch statistics the step would use). The measurement
leaves training as it was: the random generators (``torch.random.fork_rng``) and the model's buffers
(BatchNorm statistics, running feature means) are put back, and gradients go to ``torch.autograd.grad``,
not to ``p.grad``. metrics.jsonl gets, for each epoch with a sample, ``conflict.cos.<m>`` (the mean over
its samples) and ``conflict.samples``; an epoch of fewer than ``every`` steps may have none. The epoch's
sums are part of last.pt (``state_dict``), so a run resumed inside an epoch logs what an uninterrupted
one logs. Data-parallel, process 0 samples (callbacks run there).

``train.conflict_every``'s default keeps joint training of the quickstart within 5% of its time without
sampling (``benchmarks/conflict_overhead.py``); 0 turns sampling off.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bogc_cli.data.loader import ArrayDataset, Batch, to_device
from bogc_cli.engine.callbacks import Callback, RunStart
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.tasks.losses import task_loss

PREFIX = "conflict.cos."


def conflict_cosines(model: MultimodalModel, fused_loss: Callable, batch: Batch, autocast) -> dict[str, float]:
    """``{m: cos_m}`` on ``batch`` at the model's current weights, in its current mode (NaN where a gradient
    is zero, and for an encoder with no trainable parameter, e.g. a frozen pretrained one: nothing of it
    is updated, so there is no conflict to measure). ``fused_loss(outputs, labels)``: the method's fusion
    loss. ``p.grad`` is left alone; a forward in train mode updates the model's buffers
    (``GradientConflict.measure`` puts them back)."""
    params = {m: [p for p in model.encoders[m].parameters() if p.requires_grad] for m in model.modalities}
    cosines = {m: float("nan") for m in model.modalities}
    mods = [m for m in model.modalities if params[m]]
    if not mods:
        return cosines
    with autocast():
        out = model(batch.inputs)
    fused = fused_loss(out, batch.labels)
    every = [p for m in mods for p in params[m]]
    g0 = torch.autograd.grad(fused, every, retain_graph=True, allow_unused=True)
    start = 0
    for i, m in enumerate(mods):
        own = task_loss(model.task, out.unimodal_logits[m], batch.labels)  # the run's task loss (tasks/losses.py)
        gm = torch.autograd.grad(own, params[m], retain_graph=i < len(mods) - 1, allow_unused=True)
        a = _flat(g0[start:start + len(params[m])], params[m])
        b = _flat(gm, params[m])
        start += len(params[m])
        norm = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
        cosines[m] = float(torch.dot(a, b) / norm) if norm > 0 else float("nan")
    return cosines


def _flat(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads, params)])


class GradientConflict(Callback):
    """Samples ``conflict_cosines`` every ``every`` steps (``on_step``) and hands each epoch's means to the
    epoch's record (``epoch_values``). ``state_dict`` holds the epoch's sums so far (last.pt keeps them).

    ``rows``: the rows trained on (``SplitArrays``), read ``batch_size`` at a time in their stored order."""

    def __init__(self, model: MultimodalModel, fused_loss: Callable, rows, batch_size: int, every: int,
                 device: torch.device, autocast):
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self.model, self.fused_loss = model, fused_loss
        self.rows, self.batch_size = ArrayDataset(rows), batch_size
        self.every, self.device, self.autocast = every, device, autocast
        self.steps_per_epoch = 1
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0

    # ------------------------------------------------------------ callback
    def on_run_start(self, run: RunStart) -> None:
        self.steps_per_epoch = run.steps_per_epoch

    def on_step(self, epoch, step, loss, logs) -> None:
        g = (epoch - 1) * self.steps_per_epoch + step
        if (g - 1) % self.every == 0:
            self.add(self.measure((g - 1) // self.every))

    # ------------------------------------------------------------ measuring
    def batch(self, k: int) -> Batch:
        """The ``k``-th batch of the rows in order, cycling."""
        n = len(self.rows)
        start = (k % math.ceil(n / self.batch_size)) * self.batch_size
        return to_device(self.rows.__getitems__(list(range(start, min(n, start + self.batch_size)))), self.device)

    def measure(self, k: int) -> dict[str, float]:
        """The cosines on the ``k``-th batch, leaving the model's buffers and the generators as they were."""
        model, batch = self.model, self.batch(k)
        buffers = [b.detach().clone() for b in model.buffers()]
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                return conflict_cosines(model, self.fused_loss, batch, self.autocast)
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)

    def add(self, cosines: dict[str, float]) -> None:
        self.samples += 1
        for m, c in cosines.items():
            if not math.isnan(c):
                self.sums[m] = self.sums.get(m, 0.0) + c
                self.counts[m] = self.counts.get(m, 0) + 1

    def epoch_values(self) -> dict[str, float]:
        """``conflict.cos.<m>`` (mean over the epoch's samples) and ``conflict.samples``; empty when the epoch
        had no sample. Starts the next epoch's sums."""
        values = {f"{PREFIX}{m}": self.sums[m] / self.counts[m] for m in self.sums}
        if self.samples:
            values["conflict.samples"] = self.samples
        self.sums, self.counts, self.samples = {}, {}, 0
        return values

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.samples = int(state["samples"])


__all__ = ["GradientConflict", "PREFIX", "conflict_cosines"]
