"""Task types: what a dataset's targets are and what follows from it for a run.

``classification`` (one class per sample), ``multilabel`` (any subset of ``C`` labels per sample) and
``regression`` (one real-valued target per sample). The storage form of each is the cache's
(``data/cache.py``: int64 ``[N]``, uint8 multi-hot ``[N, C]``, float32 ``[N]``); this package owns the
rest: how many outputs a head has (``output_dim``), the loss (``tasks/losses.py``), the metrics and the
model-selection metric (``tasks/metrics.py``, ``SELECTION``).

A run's task is its dataset's (``Manifest.task``); ``dataset.task`` in a recipe may only restate it
(``resolve_task``), except for a raw ``arrays`` folder read directly, which declares nothing of its own: there
it says how ``labels.npy`` is read (``data/arrays.py``). Recipe validation refuses a task the dataset cannot
hold (``DatasetInfo.tasks``). Each method declares the task types its rule is defined for (``Method.tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bogc_cli.data.cache import TASKS
from bogc_cli.errors import UserError

#: The loss of a regression run (``train.regression_loss``): L1 (MulT's and CGGM's ``nn.L1Loss`` for
#: CMU-MOSI/MOSEI; the default) or the mean squared error.
REGRESSION_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class Selection:
    """The metrics a task's model selection may use (``train.select_metric``), its default, and which of
    them are better when lower (errors); every other one is better when higher."""

    default: str
    metrics: tuple[str, ...]
    lower_is_better: tuple[str, ...] = ()


SELECTION: dict[str, Selection] = {
    "classification": Selection("accuracy", ("accuracy", "macro_f1")),
    "multilabel": Selection("micro_f1", ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "map")),
    "regression": Selection("mae", ("mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7"),
                            lower_is_better=("mae",)),
}


@dataclass(frozen=True)
class TaskSpec:
    """A run's task and the settings that depend on it: ``regression_loss`` (``l1`` | ``mse``, regression
    only) and ``select_metric`` (the validation metric best.pt is chosen on; None: the task's default)."""

    task: str = "classification"
    regression_loss: str = "l1"
    select_metric: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; one of {', '.join(TASKS)}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"unknown regression loss {self.regression_loss!r}; one of {', '.join(REGRESSION_LOSSES)}")

    @property
    def metric(self) -> str:
        """The model-selection metric (``train.select_metric`` or the task's default)."""
        return self.select_metric or SELECTION[self.task].default

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in SELECTION[self.task].lower_is_better

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet) in the selection metric's direction; a tie
        keeps the earlier epoch, and a NaN wins only when there is nothing yet (so a run always has a best epoch)."""
        if value != value:  # NaN (e.g. a correlation of constant predictions)
            return best is None
        if best is None or best != best:
            return True
        return value > best if self.higher_is_better else value < best


def record_score(record: dict, select_metric: str | None = None) -> float:
    """The validation score in an epoch's ``metrics.jsonl`` record (or ``eval.json``), signed so that higher is
    better (an error such as MAE is negated): what a search that maximises (``bogc tune``) optimises.
    ``select_metric``: ``train.select_metric`` (None: the task's default, read from which figures the record
    holds: ``val_accuracy`` classification, ``val_micro_f1`` multilabel, ``val_mae`` regression)."""
    if select_metric is None:
        select_metric = next(s.default for s in SELECTION.values() if f"val_{s.default}" in record)
    value = float(record[f"val_{select_metric}"])
    lower = any(select_metric in s.lower_is_better for s in SELECTION.values())
    return -value if lower else value


def output_dim(task: str, num_classes: int) -> int:
    """Outputs of every head: ``C`` logits (classification), ``C`` independent logits (multilabel), 1 value
    (regression)."""
    return 1 if task == "regression" else num_classes


def check_select_metric(task: str, metric: str | None, where: str = "train.select_metric") -> str | None:
    """A reason ``metric`` cannot select the model of a ``task`` run, or None."""
    if metric is None or metric in SELECTION[task].metrics:
        return None
    return (f"{where} {metric!r} is not a {task} metric; choose one of {', '.join(SELECTION[task].metrics)} "
            f"(default {SELECTION[task].default})")


def resolve_task(declared: str, asked: str | None, dataset: str, where: str) -> str:
    """The task of a run on data that declares ``declared`` when the recipe's ``dataset.task`` is ``asked``.

    ``asked`` may only restate ``declared``: a cache's targets are stored in its task's form, and turning
    one into another (class indices into values, a multi-hot row into one class) would invent a meaning the
    data does not have (a raw ``arrays`` folder is read in the form ``asked`` names, so it always agrees).
    Raises ``UserError`` naming the fix otherwise."""
    if asked is None or asked == declared:
        return declared
    raise UserError(f"dataset.task {asked!r}: the {dataset} data at {where} holds {declared} targets, and a recipe "
                    f"cannot turn them into {asked} ones; remove dataset.task, or prepare the data for {asked} (e.g. "
                    "`bogc prepare mosi --preset regression` for CMU-MOSI's continuous sentiment, `bogc prepare "
                    "arrays --task ...` for your own arrays)")


__all__ = ["REGRESSION_LOSSES", "SELECTION", "Selection", "TASKS", "TaskSpec", "check_select_metric", "output_dim",
           "record_score", "resolve_task"]
