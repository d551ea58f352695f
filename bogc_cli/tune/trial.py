"""One trial of a tune: an ordinary run of the trial's recipe, its validation score the objective.

The run directory is ``<out>/<experiment>-tune/<dataset>/<method>-trial<N>/seed<S>`` (``method.tag`` =
``trial<N>``, after the recipe's own tag), so it can be inspected, resumed (``bogc train
<run>/recipe.yaml --resume``) and tabulated by ``bogc report <out>/<experiment>-tune`` like any run. The
objective is ``eval.json``'s ``val_accuracy``: the best validation accuracy, at the epoch model selection
keeps (multilabel and regression runs: their selection metric, ``val_micro_f1`` or minus ``val_mae``, as
``tasks.record_score`` signs it for a study that maximises); test figures are never looked at.
``Pruning`` reports each epoch's validation score to Optuna
and stops the run at that epoch boundary when the pruner says so (engine/callbacks.py: the run's
checkpoint is complete, so even a pruned trial can be resumed by hand).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import optuna
from rich.console import Console

from bogc_cli.engine.callbacks import Callback, RunStart, RunStopped
from bogc_cli.engine.epoch import Diverged
from bogc_cli.engine.setup import run_dir_for
from bogc_cli.engine.trainer import train_run
from bogc_cli.errors import UserError
from bogc_cli.tasks import record_score
from bogc_cli.tune.study import ERROR, EXCESS, INTERRUPTED, RUN_DIR, SLOT, TRIAL_LOCK, is_excess


class TrialFailed(Exception):
    """The trial's parameters gave no result (training diverged, or the recipe refuses their combination):
    an outcome of the search, recorded as a FAIL trial; the tune goes on."""


class Excess(Exception):
    """The budget was taken before this trial's number came: it yields (FAIL, ``bogc.excess``)."""


class Pruning(Callback):
    """Reports the validation accuracy of every epoch (those a resumed run did before, too) to the Optuna
    ``trial`` and stops the run at an epoch boundary when the study's pruner prunes it."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.metric: str | None = None  # train.select_metric of the run (None: its task's default)

    def on_run_start(self, run: RunStart) -> None:
        self.metric = (run.recipe.get("train") or {}).get("select_metric")
        for record in run.records:  # a retry is a new Optuna trial: the epochs its run did before
            self.trial.report(record_score(record, self.metric), record["epoch"])

    def on_epoch_end(self, epoch: int, record: dict) -> str | None:
        score = record_score(record, self.metric)
        self.trial.report(score, epoch)
        if self.trial.should_prune():
            return (f"trial {self.trial.number} pruned by Optuna at epoch {epoch} (validation score "
                    f"{score:.3f})")
        return None


class TrialLock:
    """``flock`` on ``<trial folder>/.trial.lock`` while a trial runs: a tune that starts later sees a
    RUNNING trial whose lock is free as one killed (study.recover)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = open(folder / TRIAL_LOCK, "a+")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise UserError(f"{folder} is being trained by another bogc tune process (a retry of the same trial); "
                            "wait for it") from None

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.close()


def objective(trial: optuna.Trial, target, budget: int, console: Console, held: list) -> float:
    """Train ``target``'s recipe with the trial's parameters; the best validation accuracy. A new trial
    takes the next slot (or yields to the budget: ``Excess``); a retry resumes its slot's run directory.
    ``held`` receives the trial's lock, released once Optuna has recorded the trial."""
    slot = trial.user_attrs.get(SLOT)
    if slot is None:
        if is_excess(trial.study, trial, budget):
            trial.set_user_attr(EXCESS, True)
            raise Excess()
        slot = trial.number
        trial.set_user_attr(SLOT, slot)
    held.append(TrialLock(target.trial_folder(slot)))
    values = target.space.suggest(trial)
    try:
        recipe = target.trial_recipe(slot, values)
    except UserError as exc:  # a combination the recipe refuses (each value alone was checked up front)
        trial.set_user_attr(ERROR, str(exc))
        raise TrialFailed(str(exc)) from None
    run_dir = run_dir_for(recipe)
    trial.set_user_attr(RUN_DIR, str(run_dir))
    console.print(f"trial {trial.number}" + (f" (continues trial slot {slot})" if slot != trial.number else "")
                  + f": {', '.join(f'{k}={_short(v)}' for k, v in values.items())} -> {run_dir}", highlight=False)
    try:
        result = train_run(recipe, console, resume=slot != trial.number, callbacks=[Pruning(trial)])
    except RunStopped as exc:
        raise optuna.TrialPruned(exc.reason) from None
    except Diverged as exc:
        trial.set_user_attr(ERROR, str(exc))
        raise TrialFailed(str(exc)) from None
    except BaseException as exc:  # Ctrl-C, SIGTERM, a full disk, a bug: the run is resumable, so is the trial
        trial.set_user_attr(INTERRUPTED, True)
        trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}"[:500])
        raise
    return record_score({f"val_{result.select_metric}": result.val_score}, result.select_metric)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
