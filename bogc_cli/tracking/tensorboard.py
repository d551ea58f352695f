"""TensorBoard: event files in ``<run_dir>/tensorboard/``, written with ``torch.utils.tensorboard``.

Scalars (names: tracking/metrics.py): every epoch's metrics.jsonl figures under ``epoch/`` at the epoch's
last global step, the step loss and the method's per-step values (its coefficients) under ``step/`` every
``output.log_every_n_steps`` global steps, eval.json's test figures under ``test/`` and the figures the run
wrote (``*.png``, e.g. bogc_diagnostics.png) under ``figures/`` when it finishes; the recipe as text.
``tensorboard --logdir results/<experiment>`` shows each run as ``<dataset>/<method>/seed<N>/tensorboard``.

A resumed run writes a new event file into the same folder with ``purge_step`` = the first global step it
trains (the checkpoint's steps + 1), so the events a killed session wrote after its checkpoint are
dropped by TensorBoard's readers (the Python ``EventAccumulator`` and the Rust data server alike) and
every step is shown once, with the resumed session's value. Epoch figures are written after the epoch's
checkpoint and flushed at once, so they are never ahead of it; those of checkpointed epochs that no event
file holds (a kill between last.pt and the flush, or TensorBoard added on resume) are written from
metrics.jsonl when the run resumes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from bogc_cli.engine.callbacks import Callback, RunEnd, RunStart
from bogc_cli.tracking import import_or_refuse
from bogc_cli.tracking.metrics import figures, global_step, numeric, test_metrics

FOLDER = "tensorboard"


class TensorBoardTracker(Callback):
    """``every``: step scalars every that many global steps (0: none). Raises ``UserError`` when
    ``torch.utils.tensorboard`` (the ``tensorboard`` package) cannot be imported."""

    def __init__(self, run_dir: Path, every: int = 50):
        self._summary_writer = import_or_refuse("torch.utils.tensorboard", "tensorboard").SummaryWriter
        self.log_dir = run_dir / FOLDER
        self.every = every
        self.writer = None
        self.steps_per_epoch = 1

    def on_run_start(self, run: RunStart) -> None:
        self.steps_per_epoch = run.steps_per_epoch
        logged = self._logged_epochs() if run.resumed else set()
        self.writer = self._summary_writer(log_dir=str(self.log_dir),
                                           purge_step=run.steps_done + 1 if run.resumed else None, flush_secs=30)
        if not logged:
            self.writer.add_text("recipe", "```\n" + yaml.safe_dump(run.recipe, sort_keys=False) + "```", 0)
        for record in run.records:  # epochs the checkpoint holds that no event file has (a tracker added on
            if record["epoch"] not in logged:  # resume, a kill between last.pt and the flush): from metrics.jsonl
                self._epoch(record["epoch"], record)
        self.writer.flush()

    def _logged_epochs(self) -> set[int]:
        """The epochs whose figures the event files already hold (read back with TensorBoard's own loader)."""
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        epochs = set()
        for path in sorted(self.log_dir.glob("events.out.tfevents.*")):
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("summary") and any(v.tag == "epoch/epoch" for v in event.summary.value):
                    epochs.add(event.step // self.steps_per_epoch)
        return epochs

    def on_step(self, epoch: int, step: int, loss: torch.Tensor | None, logs: dict[str, torch.Tensor]) -> None:
        g = global_step(epoch, step, self.steps_per_epoch)
        if not self.every or g % self.every or loss is None:
            return
        self.writer.add_scalar("step/train_loss", float(loss), g)
        for name, value in logs.items():
            self.writer.add_scalar(f"step/method.{name}", float(value), g)

    def on_epoch_end(self, epoch: int, record: dict) -> str | None:
        self._epoch(epoch, record)
        self.writer.flush()
        return None

    def _epoch(self, epoch: int, record: dict) -> None:
        g = epoch * self.steps_per_epoch
        for name, value in numeric(record).items():
            self.writer.add_scalar(f"epoch/{name}", value, g)

    def on_run_end(self, end: RunEnd) -> None:
        if self.writer is None:
            return
        if end.status == "finished" and end.result is not None:
            g = end.epochs_done * self.steps_per_epoch
            for name, value in test_metrics(end.result.test).items():
                self.writer.add_scalar(f"test/{name}", value, g)
            for png in figures(end.result.run_dir):
                self.writer.add_image(f"figures/{png.stem}", _rgb(png), g, dataformats="HWC")
        self.writer.close()
        self.writer = None


def _rgb(png: Path):
    """A PNG file as an H x W x 3 uint8 array."""
    import numpy as np
    from matplotlib.image import imread

    image = imread(png)  # floats in [0, 1] for PNG, H x W x (3 | 4), or H x W
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return (np.clip(image[..., :3], 0, 1) * 255).astype(np.uint8)
