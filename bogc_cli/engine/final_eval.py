"""The end of a run: the best-validation checkpoint evaluated on test, and eval.json."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bogc_cli.atomic import write_json
from bogc_cli.engine.balance_eval import run_balance_metrics
from bogc_cli.engine.checkpoint import load_checkpoint
from bogc_cli.engine.context import RunContext
from bogc_cli.engine.evaluate import evaluate_predictions
from bogc_cli.engine.run_state import RunState
from bogc_cli.engine.setup import run_identity
from bogc_cli.fusion import method_label


@dataclass
class RunResult:
    """A finished run: ``test`` is eval.json's content; ``seconds`` the time this process took; ``val_score``:
    the best epoch's validation ``select_metric`` (the task's selection metric; accuracy by default)."""

    run_dir: Path
    seed: int
    best_epoch: int
    val_score: float
    test: dict
    seconds: float
    select_metric: str = "accuracy"

    @property
    def val_accuracy(self) -> float:
        """The validation score under its classification name (accuracy, for a default run)."""
        return self.val_score


def final_evaluation(ctx: RunContext, state: RunState, step_ms: list[float]) -> RunResult:
    """``Method.on_train_end`` (its end-of-run files), then best.pt's weights evaluated on the test split;
    eval.json = the run's identity, the test metrics (accuracy, macro-F1, per class, each modality's
    head; the task's metrics for multilabel and regression runs), the balance metrics (contributions, linear probes, calibration, cost; reliability.png), the best
    epoch and its validation accuracy, timings (``step_ms``: this process's step times) and the rows trained
    on and held out."""
    method, model, cfg = state.method, state.model, ctx.recipe.train
    method.on_train_end(ctx.run_dir, state.records)
    model.load_state_dict(load_checkpoint(ctx.run_dir / "best.pt")["model"])
    recipe = ctx.recipe
    title = f"{recipe.dataset_label()}/{method_label(recipe)}/seed{recipe.seed}"
    # one pass over test gives the predictions and the balance metrics' features (engine/balance_eval.py)
    balance = run_balance_metrics(model, ctx.parts.data.splits, cfg.eval_batch_size, ctx.device, ctx.autocast,
                                  ctx.run_dir, title)
    spec = model.task
    test = {**evaluate_predictions(balance.test, ctx.parts.data.classes, spec), **balance.fields}
    seconds = time.perf_counter() - ctx.started
    summary = {
        **run_identity(ctx.recipe), "split": "test", "checkpoint": "best.pt", "epoch": state.best_epoch, **test,
        **({"val_accuracy": state.best_score} if spec.metric == "accuracy" else {}),
        f"val_{spec.metric}": state.best_score,
        "step_time_ms_median": statistics.median(step_ms) if step_ms else float("nan"),
        "epoch_time_s_mean": statistics.fmean(r["epoch_time_s"] for r in state.records),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in state.records),
        "train_seconds": seconds,
        "train_rows": ctx.loaders.train_rows,
        "holdout_rows": ctx.loaders.holdout_rows,
    }
    write_json(ctx.run_dir / "eval.json", summary)
    return RunResult(ctx.run_dir, ctx.recipe.seed, state.best_epoch, state.best_score, summary, seconds, spec.metric)
