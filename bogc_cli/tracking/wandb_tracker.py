"""Weights & Biases: one W&B run per run directory, offline unless the user configured otherwise.

Mode: ``WANDB_MODE`` when set (``online`` after ``wandb login``, ``disabled``, ...), else ``offline``: the run
is written under ``<run_dir>/wandb/offline-run-*`` and reaches no network (system statistics and machine
metadata, which would probe the host, are off too); ``wandb sync <run_dir>/wandb/offline-run-*`` uploads it
later. Project: ``output.wandb_project`` (default ``bogc``); group: the experiment; name:
``<dataset>/<method>/seed<N>``; config: the resolved recipe.

Logged like TensorBoard (names: tracking/metrics.py) against the global step: ``step/`` figures every
``output.log_every_n_steps`` steps, ``epoch/`` figures at each epoch's last step; when the run finishes,
eval.json's test figures in the run summary and the run's figures as images.

The W&B run id is kept in ``<run_dir>/wandb.json`` and a resumed run continues it (``resume="allow"``),
logging from the first step after its checkpoint: W&B drops a step below one it already has, so an online
run never shows a step twice; offline, each session is its own folder of the same run id.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path

import torch

from bogc_cli.atomic import write_json
from bogc_cli.engine.callbacks import Callback, RunEnd, RunStart
from bogc_cli.errors import UserError
from bogc_cli.recipe import Recipe
from bogc_cli.tracking import import_or_refuse
from bogc_cli.tracking.metrics import figures, global_step, numeric, run_name, test_metrics

RUN_FILE = "wandb.json"


class WandbTracker(Callback):
    def __init__(self, recipe: Recipe, run_dir: Path):
        self.wandb = import_or_refuse("wandb", "wandb")
        self.run_dir = run_dir
        self.project, self.group, self.name = recipe.output.wandb_project, recipe.experiment, run_name(recipe)
        self.every = recipe.output.log_every_n_steps
        self.mode = os.environ.get("WANDB_MODE") or "offline"
        self.run = None
        self.steps_per_epoch = 1

    def on_run_start(self, run: RunStart) -> None:
        wandb = self.wandb
        self.steps_per_epoch = run.steps_per_epoch
        try:
            saved = json.loads((self.run_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            saved = {}
        run_id = saved.get("run_id") or uuid.uuid4().hex[:12]  # W&B ids: letters and digits
        quiet = {"x_disable_stats": True, "x_disable_meta": True, "x_disable_machine_info": True,
                 "disable_code": True, "disable_job_creation": True} if self.mode == "offline" else {}
        if self.mode == "offline":
            _wait_for_a_new_session_folder(self.run_dir / "wandb", run_id)
        try:
            self.run = wandb.init(project=self.project, group=self.group, name=self.name, id=run_id, resume="allow",
                                  dir=str(self.run_dir), config=run.recipe, mode=self.mode, reinit="create_new",
                                  settings=wandb.Settings(console="off", silent=True, **quiet))
        except Exception as exc:  # noqa: BLE001 - wandb's errors (wandb.Error, network, settings)
            raise UserError(f"wandb ({self.mode}) could not start a run in {self.run_dir}: {exc}; check WANDB_MODE "
                            "and `wandb login`, or remove wandb from output.trackers") from None
        write_json(self.run_dir / RUN_FILE, {"run_id": run_id, "project": self.project, "mode": self.mode})
        if not saved:  # new to this run (perhaps added on resume): the epochs before it, from metrics.jsonl
            for record in run.records:
                self._epoch(record["epoch"], record)

    def on_step(self, epoch: int, step: int, loss: torch.Tensor | None, logs: dict[str, torch.Tensor]) -> None:
        g = global_step(epoch, step, self.steps_per_epoch)
        if not self.every or g % self.every or loss is None:
            return
        values = {"step/train_loss": float(loss), **{f"step/method.{k}": float(v) for k, v in logs.items()}}
        self.run.log(values, step=g)

    def on_epoch_end(self, epoch: int, record: dict) -> str | None:
        self._epoch(epoch, record)
        return None

    def _epoch(self, epoch: int, record: dict) -> None:
        self.run.log({f"epoch/{k}": v for k, v in numeric(record).items()}, step=epoch * self.steps_per_epoch)

    def on_run_end(self, end: RunEnd) -> None:
        if self.run is None:
            return
        if end.status == "finished" and end.result is not None:
            for name, value in test_metrics(end.result.test).items():
                self.run.summary[f"test/{name}"] = value
            images = {f"figures/{p.stem}": self.wandb.Image(str(p)) for p in figures(self.run_dir)}
            if images:
                self.run.log(images, step=end.epochs_done * self.steps_per_epoch)
        self.run.summary["bogc/status"] = end.status
        self.run.finish(exit_code=0 if end.status == "finished" else 1)
        self.run = None
        # finish() returns before wandb's service has written the last records of the session's log
        # (run-<id>.wandb: measured 7 bytes of ~1 kB on a loaded machine); teardown waits for them, so the
        # offline run is complete when bogc reports the run ended (the next run in this process starts a service)
        self.wandb.teardown()


def _wait_for_a_new_session_folder(root: Path, run_id: str) -> None:
    """Waits (under a second) until ``root`` has no offline session folder of ``run_id`` named by this second.

    wandb names an offline session ``offline-run-<YYYYmmdd_HHMMSS>-<id>`` by the local second it starts
    (``Settings._start_datetime``); a resumed session starting within the same second as the one before it would
    write into that folder and replace its ``run-<id>.wandb`` log, losing the steps logged before the resume.
    """
    while (root / f"offline-run-{datetime.now().strftime('%Y%m%d_%H%M%S')}-{run_id}").exists():
        time.sleep(0.02)
