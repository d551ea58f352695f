"""What every tracker logs, named alike: the figures of metrics.jsonl and eval.json, the recipe's keys.

Names are metrics.jsonl's keys (``train_loss``, ``val_accuracy``, ``method.bogc.alpha.audio``, ``lr``, ...):
under ``epoch/`` once per epoch, under ``step/`` every ``output.log_every_n_steps`` steps (the step's
loss as ``step/train_loss`` and the method's per-step values as ``step/method.<name>``), and eval.json's
test figures under ``test/`` when a run finishes. TensorBoard and W&B plot them against the global step
``(epoch - 1) * steps_per_epoch + step`` (an epoch's figures at its last step); MLflow against the epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: eval.json keys that are the test split's figures (the rest identify the run or time it): classification's, and
#: the multilabel and regression runs' metrics (tasks/metrics.py) with each head's selection metric
_TEST_KEYS = ("accuracy", "macro_f1", "unimodal_accuracy", "per_class_accuracy",
              "micro_f1", "weighted_f1", "samples_f1", "map", "subset_accuracy",
              "mae", "corr", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7",
              "unimodal_micro_f1", "unimodal_mae")


def global_step(epoch: int, step: int, steps_per_epoch: int) -> int:
    """Step ``step`` (from 1) of epoch ``epoch`` (from 1) counted over the whole run, from 1."""
    return (epoch - 1) * steps_per_epoch + step


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics.jsonl record (booleans and texts left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def test_metrics(eval_json: dict[str, Any]) -> dict[str, float]:
    """eval.json's test figures, nested ones flattened: ``{"accuracy": .., "unimodal_accuracy.audio": ..}``."""
    return numeric(flatten({k: eval_json[k] for k in _TEST_KEYS if k in eval_json}))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (lists and other values kept as they are)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def figures(run_dir: Path) -> list[Path]:
    """The figures a run wrote into its directory (e.g. bogc_diagnostics.png), by name."""
    return sorted(run_dir.glob("*.png"))



def run_name(recipe) -> str:
    """``<dataset>/<method>/seed<N>`` of a resolved ``Recipe``: the run's place below its experiment folder."""
    from bogc_cli.engine.setup import run_identity

    who = run_identity(recipe)
    return f"{who['dataset']}/{who['method']}/seed{who['seed']}"
