"""Warm starts from this tool's own finished runs: run directories named in a method's options.

A method names runs by directory (``{seed}`` in a path becomes the run's seed, so each seed starts from
the runs of its own seed); ``best.pt`` of a finished run (one with ``eval.json``) supplies the weights.
Every entry is checked before any weight is copied, so a refused warm start leaves the model as built,
and each refusal is a ``UserError`` naming the option, the path and the fix (exit 2 before anything is
written: ``Method.before_training`` runs before the run directory is claimed).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from bogc_cli.engine.checkpoint import load_checkpoint
from bogc_cli.errors import UserError
from bogc_cli.models.multimodal import MultimodalModel


def template_problem(path: str) -> str | None:
    """Why a warm-start path template is unusable (only ``{seed}`` may be substituted), or None."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(path) if name is not None]
    except ValueError as exc:
        return f"is not a valid path template ({exc})"
    if any(name != "seed" for name in fields):
        return "may only contain the placeholder {seed}"
    return None


def recipe_modalities(recipe) -> list[str]:
    """The modalities a recipe's run will have, known before any data is read (empty when only the data
    knows: arrays, a synthetic set with its own specs), so a warm-start key that names no modality is
    refused when the recipe is read, not after a sweep has trained the runs it needs."""
    from bogc_cli.data.registry import DATASETS

    if recipe.dataset.modalities:
        return list(recipe.dataset.modalities)
    info = DATASETS.get(recipe.dataset.name)
    if info is None or recipe.dataset_options().get("specs"):
        return []
    return list(info.modalities)


def runs_problem(option: str, runs: dict[str, str], recipe, also: tuple[str, ...] = ()) -> str | None:
    """Why an option naming runs (``{key: path template}``, e.g. ``method.warm_start``) is unusable, naming the
    entry, or None: a path that is no usable ``{seed}`` template, or a key that is neither one of ``also`` (e.g.
    I2M2's ``joint``) nor a modality of ``recipe``'s dataset (checked when the recipe is read, so a sweep does
    not train the runs it needs first)."""
    known = recipe_modalities(recipe)
    for key, path in runs.items():
        problem = template_problem(path)
        if problem:
            return f"{option}.{key}: {path!r} {problem}"
        if known and key not in (*also, *known):
            what = " nor ".join([*(repr(a) for a in also), f"a modality of dataset {recipe.dataset.name!r}"])
            return (f"{option}: {key!r} is {'neither ' if also else 'not '}{what}; valid keys: "
                    f"{', '.join([*also, *known])}")
    return None


def warm_start_dir(path: str, seed: int) -> Path:
    """The run directory a ``warm_start`` entry names for this seed (``{seed}`` substituted)."""
    return Path(path.format(seed=seed)).expanduser()


def finished_checkpoint(where: str, what: str, run_dir: Path,
                        otherwise: str = "or remove the key to start from scratch") -> dict:
    """``best.pt`` of a finished run directory, or a ``UserError`` naming ``where`` (the option), the path and
    the fix; ``what`` names the run it should be (e.g. ``"unimodal (audio)"``), ``otherwise`` the alternative to
    training it."""
    if not run_dir.is_dir():
        raise UserError(f"{where}: {run_dir} is not a run directory (it does not exist); train the {what} run "
                        f"first, {otherwise}")
    if not (run_dir / "best.pt").is_file() or not (run_dir / "eval.json").is_file():
        raise UserError(f"{where}: {run_dir} is not a finished run (no best.pt or eval.json); finish it with "
                        "`bogc train <its recipe> --resume` first")
    return load_checkpoint(run_dir / "best.pt")


def check_classes(where: str, run_dir: Path, state: dict, classes: list[str]) -> None:
    """``UserError`` unless the run in ``run_dir`` (its checkpoint ``state``) was trained on ``classes``."""
    trained_on = state.get("data", {}).get("classes")
    if trained_on != classes:
        raise UserError(f"{where}: {run_dir} was trained on classes {trained_on}, this run's data has {classes}; "
                        "point it at a run on the same dataset")


def copy_planned(model: MultimodalModel, plan: list[tuple[str, Path, dict, list[tuple[str, str]]]]) -> dict[str, Path]:
    """Copy every checked entry of ``plan`` (``(key, run_dir, state, [(name here, name there)])``) into ``model``;
    returns ``{key: run_dir}``. Called only after every entry has been checked."""
    ours = model.state_dict()
    with torch.no_grad():
        for _, _, state, pairs in plan:
            for mine, source in pairs:
                ours[mine].copy_(state["model"][source])
    return {key: run_dir for key, run_dir, _, _ in plan}


def unimodal_encoder_pairs(where: str, key: str, state: dict, model: MultimodalModel,
                           run_dir: Path) -> list[tuple[str, str]]:
    """``(name here, name in the checkpoint)`` of modality ``key``'s encoder (and its running feature mean) taken
    from ``state``, a ``unimodal`` run of ``key``; refused when the run is another kind or its model differs."""
    method = state["recipe"].get("method", {})
    if method.get("name") != "unimodal" or method.get("modality") != key:
        raise UserError(f"{where}: {run_dir} is a {method.get('name')!r} run, not a unimodal run of {key!r} "
                        f"(method.name: unimodal, method.modality: {key})")
    ours, theirs = model.state_dict(), state["model"]
    pairs = [(n, n) for n in ours if n.startswith(f"encoders.{key}.")] + [(f"feature_mean_{key}",) * 2]
    for mine, source in pairs:
        if source not in theirs:
            raise UserError(f"{where}: the model in {run_dir} does not match this run's: it has no {source}; "
                            "train it with this run's model block and modalities")
        if tuple(theirs[source].shape) != tuple(ours[mine].shape):
            raise UserError(f"{where}: the model in {run_dir} does not match this run's: {source} is "
                            f"{list(theirs[source].shape)} there, {list(ours[mine].shape)} here; train it with this "
                            "run's model block")
    return pairs


def plan_unimodal_runs(option: str, runs: dict[str, str], model: MultimodalModel, seed: int, classes: list[str],
                       otherwise: str = "or remove the key to start from scratch"
                       ) -> list[tuple[str, Path, dict, list[tuple[str, str]]]]:
    """Check every entry of ``runs`` = ``{modality: RUN_DIR}`` (the option ``option``, e.g. ``method.warm_start``) as
    a finished ``unimodal`` run of that modality whose encoder fits ``model``'s; returns the plan ``copy_planned``
    takes, ``(modality, run_dir, state, [(name here, name there)])``. ``otherwise``: the fix besides training a
    missing run."""
    plan = []
    for key, path in runs.items():
        where = f"{option}.{key}"
        if key not in model.modalities:
            raise UserError(f"{option}: {key!r} is not a modality of this run; valid keys: "
                            f"{', '.join(model.modalities)}")
        run_dir = warm_start_dir(path, seed)
        state = finished_checkpoint(where, f"unimodal ({key})", run_dir, otherwise)
        check_classes(where, run_dir, state, classes)
        plan.append((key, run_dir, state, unimodal_encoder_pairs(where, key, state, model, run_dir)))
    return plan


def load_unimodal_encoders(option: str, runs: dict[str, str], model: MultimodalModel, seed: int,
                           classes: list[str]) -> dict[str, Path]:
    """Start each named modality's encoder from a ``unimodal`` run of it: ``runs`` = ``{modality: RUN_DIR}`` (the
    option ``option``, e.g. ``method.warm_start``). Checks every entry, then copies; returns ``{modality: run}``."""
    return copy_planned(model, plan_unimodal_runs(option, runs, model, seed, classes))
