"""Load a finished run (or a checkpoint) back and evaluate it on a split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bogc_cli.atomic import write_json
from bogc_cli.data.bundle import dataset_root
from bogc_cli.data.loader import make_loader
from bogc_cli.engine.balance_eval import balance_loaders, balance_metrics
from bogc_cli.engine.contribution import check_modality_count
from bogc_cli.engine.checkpoint import load_checkpoint, resolve_checkpoint
from bogc_cli.engine.evaluate import evaluate_predictions
from bogc_cli.engine.runtime import autocast_factory, pick_device
from bogc_cli.engine.setup import RunParts, build_parts, run_identity
from bogc_cli.errors import UserError
from bogc_cli.fusion import method_label
from bogc_cli.recipe import Recipe, validate_recipe


@dataclass
class LoadedRun:
    checkpoint: Path
    run_dir: Path
    recipe: Recipe
    parts: RunParts
    device: torch.device
    autocast: object
    epoch: int

    @property
    def model(self):
        return self.parts.model

    def loader(self, split: str):
        if split not in self.parts.data.splits:
            raise UserError(f"split {split!r} does not exist; valid: {', '.join(self.parts.data.splits)}")
        return make_loader(self.parts.data.splits[split], self.recipe.train.eval_batch_size, shuffle=False)


def load_run(target: str | Path, device: str = "auto", data: str | Path | None = None) -> LoadedRun:
    """Rebuild the model and data of a run directory or checkpoint file (on ``device``).

    ``data``: the folder that holds the run's prepared data now, when it has moved since training
    (``--data``); by default the ``dataset.root`` the run was trained with.

    Raises:
        UserError: the checkpoint is missing or corrupt, the data is not where the run says (naming
            ``--data``), or it is not the data the run was trained on.
    """
    path = resolve_checkpoint(target)
    state = load_checkpoint(path)
    saved = state["recipe"]
    if data is not None:
        saved = {**saved, "dataset": {**saved["dataset"], "root": str(Path(data).expanduser().resolve())}}
    recipe = validate_recipe(saved, f"recipe saved in {path}")
    _require_data(recipe, data)
    parts = build_parts(recipe, load_weights=False)  # the checkpoint holds every weight
    if parts.data.classes != state["data"]["classes"]:
        raise UserError(f"the data at {dataset_root(recipe)} has classes {parts.data.classes}, but {path} was "
                        f"trained on {state['data']['classes']}: pass --data DIR with the folder of the data it "
                        "was trained on")
    dev = pick_device(device)
    parts.model.load_state_dict(state["model"])
    parts.model.to(dev).eval()
    return LoadedRun(path, path.parent, recipe, parts, dev, autocast_factory(dev, recipe.train.precision),
                     int(state.get("epoch", 0)))


def _require_data(recipe: Recipe, given: str | Path | None) -> None:
    """Refuse, naming ``--data``, when the run's data is not at its root (it moved since training)."""
    name = recipe.dataset.name
    if name == "synthetic":
        if given is not None:
            raise UserError("--data: this run was trained on the built-in synthetic dataset, which is generated "
                            "and has no folder; leave --data out")
        return
    root = dataset_root(recipe)
    if root.is_dir() if name == "arrays" else (root / "manifest.json").is_file():
        return
    why = "no such folder" if not root.exists() else "no prepared data (manifest.json) in it"
    if given is not None:
        raise UserError(f"--data {given}: {why}; give the folder that holds this run's prepared {name} data "
                        f"(the folder `bogc prepare {name} --out ...` wrote)")
    raise UserError(f"the {name} data this run was trained on is no longer at {root} ({why}: moved, renamed or "
                    f"not copied?); pass --data DIR with the folder that holds it now")


def evaluate_run(run: LoadedRun, split: str = "test", shapley: bool = True) -> tuple[dict, Path]:
    """Evaluate on ``split``; write eval.json (best.pt on test) or eval-<ckpt>-<split>.json; return (result, path).

    Beside accuracy, macro-F1 and the heads' accuracy, the balance metrics (engine/balance_eval.py) of
    ``split``: modality contributions (left out with ``shapley=False``; refused with ``ShapleyTooLarge``
    above ``MAX_MODALITIES`` modalities), linear probes (``C`` chosen on val), calibration and cost; the
    reliability diagram goes to the run directory."""
    if shapley:  # before any work
        check_modality_count(list(run.model.modalities))
    title = f"{run.recipe.dataset_label()} / {method_label(run.recipe)} / seed {run.recipe.seed}: {split}"
    run.loader(split)  # refuses an unknown split
    loaders = balance_loaders(run.parts.data.splits, split, run.recipe.train.eval_batch_size)
    balance = balance_metrics(run.model, loaders, run.device, run.autocast, shapley=shapley, strict=True,
                              run_dir=run.run_dir if _is_main_eval(run, split) else None, title=title)
    result = evaluate_predictions(balance.test, run.parts.data.classes, run.model.task)
    result = {**run_identity(run.recipe), "split": split,
              "checkpoint": run.checkpoint.name, "epoch": run.epoch, **result, **balance.fields}
    if _is_main_eval(run, split):
        path = run.run_dir / "eval.json"
        previous = _read_json(path)
        # keep the training-time fields (timings, val accuracy) that only training knows
        result = {**previous, **result}
    else:
        path = run.run_dir / f"eval-{run.checkpoint.stem}-{split}.json"
    write_json(path, result)
    return result, path


def _is_main_eval(run: LoadedRun, split: str) -> bool:
    """best.pt on test: what eval.json and reliability.png hold."""
    return split == "test" and run.checkpoint.name == "best.pt"


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
