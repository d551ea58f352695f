"""Sweep files: datasets x methods x seeds, each cell an ordinary run directory.

A sweep file (``recipes/paper/*.yaml``)::

    experiment: paper-local          # results/<experiment>/<dataset>/<method>/seed<N>/
    out: results                     # results root (default)
    seeds: [0, 1, 2]
    set: {model.fill: zero-input}    # overrides for every cell
    datasets:                        # name -> folder of per-method recipes, or {recipes: | base:, set:}
      avdigits: recipes/avdigits
      cremad: {base: recipes/cremad/joint.yaml}   # one recipe, method.name set per cell
    methods:                         # recipe names in those folders, or variants of one
      - joint
      - {recipe: joint, tag: moddrop, set: {train.modality_dropout: {audio: 0.3}}}
    missing: {rates: [0, 0.1, 0.3, 0.5, 0.7, 1.0], seed: 0}   # null: no robustness evaluation

Planning reads and validates every cell's recipe (so a mistake is found before anything runs) but
never the data, so ``--dry-run`` works on a machine without the datasets. A cell whose run directory
holds a run made with another recipe (the sweep's ``set:`` or a recipe changed since) is ``changed``:
``bogc reproduce`` refuses it, naming the keys, unless ``--overwrite`` asks to train it again.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from bogc_cli.engine.missing import DEFAULT_RATES
from bogc_cli.engine.resume import recipe_differences, saved_recipe
from bogc_cli.engine.run_lock import existing_results
from bogc_cli.engine.setup import resolved_recipe, run_dir_for, run_identity
from bogc_cli.errors import UserError
from bogc_cli.recipe import load_recipe
from bogc_cli.schema import PathPart, Seed, StrictModel, format_validation_error
from bogc_cli.yaml_source import read_yaml_file


class DatasetEntry(StrictModel):
    recipes: str | None = Field(None, description="folder holding <method>.yaml recipes for this dataset")
    base: str | None = Field(None, description="or one recipe for every method: each cell sets method.name")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for this dataset's cells")


class MethodEntry(StrictModel):
    recipe: str = Field(description="recipe name (file stem) in each dataset's folder; with a dataset's base "
                        "recipe, the method name")
    tag: PathPart | None = Field(None, description="variant name: the run's method becomes <method>-<tag>")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for this variant")


class MissingEval(StrictModel):
    rates: list[float] = Field(list(DEFAULT_RATES), min_length=1)
    seed: Seed = 0
    fill: str | None = None


class Sweep(StrictModel):
    experiment: PathPart
    out: str = "results"
    seeds: list[Seed] = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)
    datasets: dict[str, DatasetEntry | str] = Field(min_length=1)
    methods: list[MethodEntry | str] = Field(min_length=1)
    missing: MissingEval | None = MissingEval()

    @model_validator(mode="after")
    def _unique_seeds(self) -> "Sweep":
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise ValueError(f"seeds must be distinct: {', '.join(map(str, twice))} given twice (each seed is one run)")
        return self


@dataclass
class Cell:
    """One run: a dataset, a method (variant) and a seed; ``overrides`` are ``--set`` strings."""

    dataset: str
    method: str
    seed: int
    recipe: Path
    overrides: list[str]
    run_dir: Path
    status: str = "todo"  # done | partial | todo | changed (its run was made with another recipe)
    seconds: float | None = None  # training time, when done
    data: str | None = None  # the prepared data's folder (None: synthetic), for the missing-modality step
    changed: dict[str, tuple] = field(default_factory=dict)  # key -> (the run's value, the sweep's now)
    overwrite: bool = False  # a changed cell the user asked to train again (`reproduce --overwrite`)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"

    def train_args(self) -> list[str]:
        args = ["train", str(self.recipe), "--seeds", str(self.seed), "--overwrite" if self.overwrite else "--resume"]
        for o in self.overrides:
            args += ["--set", o]
        return args


@dataclass
class Plan:
    sweep: Sweep
    source: Path
    cells: list[Cell] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return Path(self.sweep.out) / self.sweep.experiment

    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.status != "done"]

    def estimate_seconds(self, cell: Cell) -> float | None:
        """Mean training time of finished cells of the same dataset and method, else of the dataset."""
        done = [c for c in self.cells if c.seconds is not None]
        for same in (lambda c: (c.dataset, c.method) == (cell.dataset, cell.method), lambda c: c.dataset == cell.dataset):
            times = [c.seconds for c in done if same(c)]
            if times:
                return statistics.fmean(times)
        return None


def _dotted(overrides: dict[str, Any]) -> list[str]:
    """``{"train.epochs": 5, "train.modality_dropout": {"audio": 0.3}}`` -> ``--set`` strings (values as YAML)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in overrides.items()]


def read_sweep(path: Path) -> Sweep:
    data, source = read_yaml_file(path, "sweep file", "give the path of a sweep YAML (see recipes/paper/)")
    try:
        return Sweep.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source, Sweep, data=data)) from None


def make_plan(path: Path, out: Path | None = None) -> Plan:
    """Every cell of the sweep with its validated recipe, run directory and status."""
    sweep = read_sweep(path)
    if out is not None:
        sweep.out = str(out)
    plan = Plan(sweep, path)
    base = path.parent
    for dataset, entry in sweep.datasets.items():
        entry = DatasetEntry(recipes=entry) if isinstance(entry, str) else entry
        if (entry.recipes is None) == (entry.base is None):
            raise UserError(f"{path}: datasets.{dataset}: give either recipes (a folder of <method>.yaml) or base "
                            "(one recipe whose method.name each cell sets)")
        where = _local(Path(entry.recipes or entry.base), base)
        if not (where.is_dir() if entry.recipes else where.is_file()):
            raise UserError(f"{path}: datasets.{dataset}: {entry.recipes or entry.base} not found (relative paths "
                            "are taken from the current folder, then from the sweep file's)")
        for method in sweep.methods:
            method = MethodEntry(recipe=method) if isinstance(method, str) else method
            recipe = where if entry.base else where / f"{method.recipe}.yaml"
            if not recipe.is_file():
                have = ", ".join(sorted(p.stem for p in where.glob("*.yaml")))
                raise UserError(f"{path}: method {method.recipe!r} has no recipe {recipe}; that folder has: {have}")
            overrides = (([f"method.name={method.recipe}"] if entry.base else [])
                         + _dotted(sweep.set) + _dotted(entry.set) + _dotted(method.set)
                         + [f"experiment={sweep.experiment}", f"output.dir={sweep.out}"])
            if method.tag:
                overrides.append(f"method.tag={method.tag}")
            try:
                rec = load_recipe(recipe, overrides)
            except UserError as exc:
                raise UserError(f"{path}: cell {dataset}/{method.recipe}{'-' + method.tag if method.tag else ''} "
                                f"(its recipe with the sweep's set: overrides): {exc}") from None
            for seed in sweep.seeds:
                single = rec.for_seed(seed)
                who = run_identity(single)  # the dataset label and method label the run directory uses
                resolved = resolved_recipe(single)
                data = None if single.dataset.name == "synthetic" else resolved.dataset.root
                cell = Cell(who["dataset"], who["method"], seed, recipe, overrides, run_dir_for(single), data=data)
                _set_status(cell, sweep.missing is not None, resolved.to_dict())
                plan.cells.append(cell)
    _refuse_duplicates(plan, path)
    return plan


def _local(path: Path, sweep_folder: Path) -> Path:
    """``path`` as given when it exists from the current folder (or is absolute), else next to the sweep file."""
    return path if path.is_absolute() or path.exists() else sweep_folder / path


def _set_status(cell: Cell, wants_missing: bool, recipe: dict) -> None:
    """done, partial or todo; ``changed`` when the run directory holds a run (finished or not) of another recipe
    than ``recipe`` (the cell's resolved recipe now), so that a finished run never stands for a changed cell."""
    eval_json = cell.run_dir / "eval.json"
    saved = saved_recipe(cell.run_dir)
    cell.changed = recipe_differences(saved, recipe) if saved is not None else {}
    if cell.changed:
        cell.status = "changed"
    elif eval_json.is_file() and (not wants_missing or (cell.run_dir / "missing_modality.csv").is_file()):
        cell.status = "done"
    elif existing_results(cell.run_dir):
        cell.status = "partial"
    if eval_json.is_file():
        try:
            cell.seconds = float(json.loads(eval_json.read_text())["train_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            pass


def _refuse_duplicates(plan: Plan, path: Path) -> None:
    seen: dict[Path, str] = {}
    for c in plan.cells:
        if c.run_dir in seen:
            raise UserError(f"{path}: two cells would write the same run directory {c.run_dir} ({seen[c.run_dir]} "
                            f"and {c.name}); give one of the method variants a tag")
        seen[c.run_dir] = c.name
