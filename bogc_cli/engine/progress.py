"""Live training display: a rich progress bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


#: The per-epoch line's name for the tally's ``train_accuracy`` (tasks/losses.py ``batch_hits``) per task.
TRAIN_HITS = {"classification": "train acc", "multilabel": "train exact-match", "regression": "train acc-2"}


class TrainProgress:
    """Shows epoch, step, the last step's loss, last validation accuracy and the run's ETA (``-`` for a figure
    not known yet: the loss before the first step, validation accuracy before the first epoch ends)."""

    def __init__(self, console: Console, title: str, epochs: int, steps_per_epoch: int, metric: str = "accuracy",
                 task: str = "classification"):
        self.console = console
        # what the tally's train_accuracy counts (tasks/losses.py batch_hits), named for the task
        self.train_label = TRAIN_HITS[task]
        self.metric = metric  # the validation figure shown: the run's selection metric
        label = "acc" if metric == "accuracy" else metric
        self.title = title
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.live = console.is_terminal
        self.val_acc = float("nan")
        self.progress = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                TextColumn("step {task.fields[step]}/{task.fields[steps]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn(f"val {label} " + "{task.fields[val]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task(title, total=epochs * steps_per_epoch, epoch=0, epochs=epochs,
                                               step=0, steps=steps_per_epoch, loss="-", val="-")

    def __enter__(self) -> "TrainProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def step(self, epoch: int, step: int, loss: float | None) -> None:
        if self.progress is not None:
            fields = {"epoch": epoch, "step": step}
            if loss is not None:  # before the first finite step the bar shows "loss -", never "loss nan"
                fields["loss"] = f"{loss:.4f}"
            self.progress.update(self.task, advance=1, **fields)

    def note(self, message: str) -> None:
        """A warning line (above the live bar on a terminal)."""
        self.console.print(f"[yellow]warning:[/yellow] {rich_escape(str(message))}", highlight=False)

    def epoch_done(self, record: dict) -> None:
        self.val_acc = record[f"val_{self.metric}"]
        label = "acc" if self.metric == "accuracy" else self.metric
        if self.progress is not None:
            self.progress.update(self.task, val=f"{self.val_acc:.3f}")
        else:
            self.console.print(
                f"{self.title} epoch {record['epoch']}/{self.epochs}  loss {record['train_loss']:.4f}  "
                f"{self.train_label} {record['train_accuracy']:.3f}  val {label} {self.val_acc:.3f}  "
                f"lr {record['lr']:.2e}  {record['epoch_time_s']:.1f}s"
                + (f"  skipped {record['bad_steps']} non-finite step(s)" if record.get("bad_steps") else ""),
                highlight=False)
