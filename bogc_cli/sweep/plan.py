"""Sweep files: datasets x methods x seeds, each cell an ordinary run directory.

A sweep file (``recipes/paper/*.yaml``)::

    experiment: paper-common         # results/<experiment>/<dataset>/<method>/seed<N>/
    out: results                     # results root (default)
    protocol: common                 # every cell's recipe key `protocol` (as-published | common | custom);
                                     # absent: each recipe's own (default custom)
    seeds: [0, 1, 2]
    set: {model.fill: zero-input}    # overrides for every cell
    keep:                            # common protocol: per method, the keys outside its method block that
      ogm_ge: {model.unimodal_logits: fusion-slices}   # belong to its rule, kept on the shared base
      cggm: {optim.grad_clip: 0.8}
    datasets:                        # name -> a folder of per-method recipes, or {recipes:, base:, set:, protocol:}
      avdigits: recipes/avdigits                        # each cell: recipes/avdigits/<method>.yaml
      brats_grade: {base: recipes/brats_grade/joint.yaml}   # each cell: the base, method.name set
      cremad: {base: recipes/cremad/joint.yaml, recipes: recipes/cremad}   # the base, with the `method:`
                                                        # block of recipes/cremad/<method>.yaml where it exists
    methods:                         # recipe names in those folders (or method names), or variants of one
      - joint
      - {recipe: joint, tag: moddrop, set: {train.modality_dropout: {audio: 0.3}}}
      - {recipe: unimodal-audio, datasets: [cremad]}    # only on these datasets
      - recipe: i2m2                 # cells it needs: each key gets the run directory of that method's cell
        needs:                       # of the same dataset and seed, which trains first
          method.warm_start.joint: joint
          method.warm_start.audio: unimodal-audio
    missing: {rates: [0, 0.1, 0.3, 0.5, 0.7, 1.0], seed: 0}   # null: no robustness evaluation

Where a cell's recipe comes from:

* ``recipes:`` alone: the method's own recipe, ``<folder>/<recipe>.yaml``, as written.
* ``base:`` alone: the base recipe with ``method.name: <recipe>`` (the method's code defaults).
* both: the base recipe (the shared protocol: data, model, optimiser, schedule, epochs, batch) with
  the whole ``method:`` block of ``<folder>/<recipe>.yaml`` when that file exists (the method's
  hyper-parameters as its own recipe sets them), else ``method.name: <recipe>``.

On a base, ``keep[<method name>]`` is applied next: keys outside the ``method:`` block that belong to
the method's rule, not to the protocol (a clip the rule relies on, the unimodal logits it scores).
Then come ``set`` (sweep, dataset, method entry, in that order; the last wins), the experiment and
output folder, the tag and the protocol. Keep never holds ``method.*`` keys (those come from the
method's recipe or ``set``). Where a method's own recipe declares ``protocol: as-published``, every
kept value must equal that recipe's: a kept key is the reference's own value, stated once.

Protocols (the recipe key ``protocol``; the dataset entry's ``protocol`` overrides the sweep's):
``as-published`` cells must be built from the method's own recipe (``recipes:`` alone) and that
file must declare ``protocol: as-published`` (its comment names the reference script);
``common`` cells must be built on a ``base``. Reports keep the protocols apart.

Dependencies: ``needs: {recipe key: method}`` names, for each key, the method (its label, as in the
run path: ``unimodal-audio``, ``joint-moddrop``) of another cell of the same dataset and seed; the
key gets that cell's run directory, the cell trains after it, and fails to plan when it is missing
or the needs form a cycle. ``--dry-run`` lists cells in run order with what each needs. A finished (or
started) dependant whose dependency will train again is ``changed``, naming the need: it started from
the old run.

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
from bogc_cli.recipe import Protocol, Recipe, load_recipe, read_yaml
from bogc_cli.schema import PathPart, Seed, StrictModel, format_validation_error
from bogc_cli.yaml_source import read_yaml_file


class DatasetEntry(StrictModel):
    recipes: str | None = Field(None, description="folder holding <method>.yaml recipes for this dataset")
    base: str | None = Field(None, description="one recipe for every method (the shared protocol): each cell "
                             "sets method.name, or takes the method: block of recipes/<method>.yaml")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for this dataset's cells")
    protocol: Protocol | None = Field(None, description="this dataset's cells' protocol (default: the sweep's)")


class MethodEntry(StrictModel):
    recipe: str = Field(description="recipe name (file stem) in each dataset's folder; with a dataset's base "
                        "recipe alone, the method name")
    tag: PathPart | None = Field(None, description="variant name: the run's method becomes <method>-<tag>")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for this variant")
    needs: dict[str, str] = Field(default_factory=dict, description="recipe key -> method of the cell (same "
                                  "dataset and seed) whose run directory fills it; that cell trains first")
    datasets: list[str] | None = Field(None, min_length=1, description="only on these datasets (default: all)")


class MissingEval(StrictModel):
    rates: list[float] = Field(list(DEFAULT_RATES), min_length=1)
    seed: Seed = 0
    fill: str | None = None


class Sweep(StrictModel):
    experiment: PathPart
    out: str = "results"
    protocol: Protocol | None = None
    seeds: list[Seed] = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)
    keep: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datasets: dict[str, DatasetEntry | str] = Field(min_length=1)
    methods: list[MethodEntry | str] = Field(min_length=1)
    missing: MissingEval | None = MissingEval()

    @model_validator(mode="after")
    def _unique_seeds(self) -> "Sweep":
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise ValueError(f"seeds must be distinct: {', '.join(map(str, twice))} given twice (each seed is one run)")
        return self


@dataclass(eq=False)
class Cell:
    """One run: a dataset, a method (variant) and a seed; ``overrides`` are ``--set`` strings; ``needs``:
    the cells whose run directories it takes (they train first)."""

    dataset: str
    method: str
    seed: int
    recipe: Path
    overrides: list[str]
    run_dir: Path
    protocol: str = "custom"
    needs: list["Cell"] = field(default_factory=list)
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

    def resolved(self) -> Recipe:
        """This cell's single-seed recipe, as ``bogc train`` will save it (method defaults filled in)."""
        return resolved_recipe(load_recipe(self.recipe, self.overrides).for_seed(self.seed))


@dataclass
class Plan:
    sweep: Sweep
    source: Path
    cells: list[Cell] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return Path(self.sweep.out) / self.sweep.experiment

    def todo(self) -> list[Cell]:
        """The unfinished cells in run order (every cell after the cells it needs)."""
        return run_order([c for c in self.cells if c.status != "done"])

    def ordered(self) -> list[Cell]:
        return run_order(self.cells)

    def estimate_seconds(self, cell: Cell) -> float | None:
        """Mean training time of finished cells of the same dataset and method, else of the dataset."""
        done = [c for c in self.cells if c.seconds is not None]
        for same in (lambda c: (c.dataset, c.method) == (cell.dataset, cell.method), lambda c: c.dataset == cell.dataset):
            times = [c.seconds for c in done if same(c)]
            if times:
                return statistics.fmean(times)
        return None


def run_order(cells: list[Cell]) -> list[Cell]:
    """``cells`` in their order, except that a cell comes after every cell of the list it needs (stable)."""
    members = set(map(id, cells))
    placed: set[int] = set()
    order: list[Cell] = []

    def place(cell: Cell) -> None:
        if id(cell) in placed:
            return
        placed.add(id(cell))  # planning refused cycles
        for dep in cell.needs:
            if id(dep) in members:
                place(dep)
        order.append(cell)

    for cell in cells:
        place(cell)
    return order


def _dotted(overrides: dict[str, Any]) -> list[str]:
    """``{"train.epochs": 5, "train.modality_dropout": {"audio": 0.3}}`` -> ``--set`` strings (values as YAML,
    each on one line however long: they go into command lines and the Slurm task file)."""
    def text(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip().removesuffix("...").strip()

    return [f"{k}={text(v)}" for k, v in overrides.items()]


def read_sweep(path: Path) -> Sweep:
    data, source = read_yaml_file(path, "sweep file", "give the path of a sweep YAML (see recipes/paper/)")
    try:
        sweep = Sweep.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source, Sweep, data=data)) from None
    _check_sweep(sweep, path)
    return sweep


def _check_sweep(sweep: Sweep, path: Path) -> None:
    from bogc_cli.fusion import METHODS

    for method, keys in sweep.keep.items():
        if method not in METHODS:
            raise UserError(f"{path}: keep.{method}: not a method; valid: {', '.join(METHODS)}")
        for key in keys:
            if key == "method" or key.startswith("method.") or key in ("protocol", "experiment"):
                raise UserError(f"{path}: keep.{method}.{key}: keep holds keys outside the method block that "
                                "its rule owns (model.*, optim.*, train.*); set method options in the method's "
                                "recipe or in the method entry's set")
    for method in sweep.methods:
        if isinstance(method, MethodEntry):
            unknown = [d for d in method.datasets or [] if d not in sweep.datasets]
            if unknown:
                raise UserError(f"{path}: method {method.recipe!r}: datasets {unknown} are not in this sweep's "
                                f"datasets ({', '.join(sweep.datasets)})")


@dataclass
class _Source:
    """Where one dataset's cells come from."""

    name: str
    folder: Path | None
    base: Path | None
    protocol: str | None
    set: dict[str, Any]


def _dataset_source(sweep: Sweep, name: str, entry: DatasetEntry | str, path: Path) -> _Source:
    entry = DatasetEntry(recipes=entry) if isinstance(entry, str) else entry
    if entry.recipes is None and entry.base is None:
        raise UserError(f"{path}: datasets.{name}: give recipes (a folder of <method>.yaml), base (one recipe "
                        "whose method.name each cell sets), or both (the base's protocol with each method's "
                        "own method: block)")
    folder = _local(Path(entry.recipes), path.parent) if entry.recipes else None
    base = _local(Path(entry.base), path.parent) if entry.base else None
    for given, found, what in ((entry.recipes, folder, "is_dir"), (entry.base, base, "is_file")):
        if given is not None and not getattr(found, what)():
            raise UserError(f"{path}: datasets.{name}: {given} not found (relative paths are taken from the "
                            "current folder, then from the sweep file's)")
    protocol = entry.protocol or sweep.protocol
    if protocol == "as-published" and base is not None:
        raise UserError(f"{path}: datasets.{name}: as-published cells run each method's own recipe: give "
                        "recipes: FOLDER without base (a base recipe is one shared protocol)")
    if protocol == "common" and base is None:
        raise UserError(f"{path}: datasets.{name}: the common protocol is one shared recipe: give base: "
                        "(and recipes: FOLDER for each method's own method: block)")
    return _Source(name, folder, base, protocol, entry.set)


def _block(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


class _OwnRecipes:
    """Each method's own recipe file, read once: its raw mapping and its validated form."""

    def __init__(self) -> None:
        self._raw: dict[Path, dict] = {}
        self._valid: dict[Path, Recipe] = {}

    def raw(self, path: Path) -> dict:
        if path not in self._raw:
            self._raw[path] = read_yaml(path)
        return self._raw[path]

    def valid(self, path: Path) -> Recipe:
        if path not in self._valid:
            self._valid[path] = load_recipe(path)
        return self._valid[path]


def _cell_recipe(sweep: Sweep, src: _Source, method: MethodEntry, own: _OwnRecipes, path: Path,
                 ) -> tuple[Path, list[str]]:
    """The recipe file and ``--set`` overrides of one (dataset, method entry), before seeds and needs."""
    mine = src.folder / f"{method.recipe}.yaml" if src.folder else None
    has_own = mine is not None and mine.is_file()
    if src.base is None and not has_own:
        have = ", ".join(sorted(p.stem for p in src.folder.glob("*.yaml")))
        raise UserError(f"{path}: method {method.recipe!r} has no recipe {mine}; that folder has: {have}")
    if has_own and src.protocol == "as-published" and own.raw(mine).get("protocol") != "as-published":
        raise UserError(f"{path}: cell {src.name}/{method.recipe}: the sweep runs it as published, but {mine} "
                        "does not declare protocol: as-published (it records no reference protocol); drop the "
                        "method or run it under another protocol")
    block = own.raw(mine).get("method") if has_own else None
    name = method.set.get("method.name") or (block or {}).get("name") or method.recipe
    keep = sweep.keep.get(name, {})
    if has_own and own.raw(mine).get("protocol") == "as-published":
        _check_keep_agrees(name, keep, mine, own.valid(mine), path)
    if src.base is None:
        recipe, overrides = mine, []
    else:
        recipe = src.base
        overrides = _dotted({"method": block}) if isinstance(block, dict) else [f"method.name={method.recipe}"]
        overrides += _dotted(keep)
    overrides += (_dotted(sweep.set) + _dotted(src.set) + _dotted(method.set)
                  + [f"experiment={sweep.experiment}", f"output.dir={sweep.out}"])
    if method.tag:
        overrides.append(f"method.tag={method.tag}")
    if src.protocol:
        overrides.append(f"protocol={src.protocol}")
    return recipe, overrides


def _check_keep_agrees(name: str, keep: dict[str, Any], mine: Path, recipe: Recipe, path: Path) -> None:
    data = recipe.to_dict()
    for key, value in keep.items():
        try:
            theirs = _block(data, key)
        except KeyError:
            raise UserError(f"{path}: keep.{name}.{key}: no such recipe key") from None
        if yaml.safe_load(yaml.safe_dump(value)) != theirs and not _same_number(value, theirs):
            raise UserError(f"{path}: keep.{name}.{key} is {value!r} but {mine} (the reference protocol) has "
                            f"{theirs!r}; a kept key is the reference's own value: make them agree")


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)


def make_plan(path: Path, out: Path | None = None) -> Plan:
    """Every cell of the sweep with its validated recipe, run directory, protocol, needs and status."""
    sweep = read_sweep(path)
    if out is not None:
        sweep.out = str(out)
    plan = Plan(sweep, path)
    own = _OwnRecipes()
    index: dict[tuple[str, int, str], Cell] = {}  # (sweep's dataset name, seed, method label) -> cell
    wanted: list[tuple[Cell, str, MethodEntry]] = []
    for dataset, entry in sweep.datasets.items():
        src = _dataset_source(sweep, dataset, entry, path)
        for method in sweep.methods:
            method = MethodEntry(recipe=method) if isinstance(method, str) else method
            if method.datasets is not None and dataset not in method.datasets:
                continue
            recipe, overrides = _cell_recipe(sweep, src, method, own, path)
            what = f"{dataset}/{method.recipe}{'-' + method.tag if method.tag else ''}"
            try:
                rec = load_recipe(recipe, overrides)
            except UserError as exc:
                raise UserError(f"{path}: cell {what} (its recipe with the sweep's set: overrides): {exc}") from None
            for seed in sweep.seeds:
                single = rec.for_seed(seed)
                who = run_identity(single)  # the dataset label and method label the run directory uses
                cell = Cell(who["dataset"], who["method"], seed, recipe, list(overrides), run_dir_for(single),
                            protocol=single.protocol)
                plan.cells.append(cell)
                index.setdefault((dataset, seed, cell.method), cell)
                if method.needs:
                    wanted.append((cell, dataset, method))
                else:
                    _set_status(cell, sweep.missing is not None, resolved_recipe(single))
    _refuse_duplicates(plan, path)
    _link_needs(wanted, index, path)
    for cell, _, _ in wanted:  # with the run directories they need filled in, as they will run
        _set_status(cell, sweep.missing is not None, cell.resolved())
    _mark_stale_dependants(wanted)
    return plan


def _mark_stale_dependants(wanted: list[tuple[Cell, str, MethodEntry]]) -> None:
    """A dependant that started (done or partial) from a run that will train again (its cell changed, or it
    has no finished training) would keep the old run's warm start: it is ``changed`` too, naming the need,
    so ``reproduce`` refuses it or, with ``--overwrite``, trains it again after that run. In run order, so a
    dependant of such a dependant follows."""
    entry = {id(cell): method for cell, _, method in wanted}
    for cell in run_order([cell for cell, _, _ in wanted]):
        if cell.status not in ("done", "partial"):
            continue
        keys = {label: key for key, label in entry[id(cell)].needs.items()}
        again = {keys[dep.method]: (f"{dep.name} as it was", f"{dep.name} trained again") for dep in cell.needs
                 if dep.status == "changed" or not (dep.run_dir / "eval.json").is_file()}
        if again:
            cell.status, cell.changed = "changed", again


def _link_needs(wanted: list[tuple[Cell, str, MethodEntry]], index: dict, path: Path) -> None:
    """Give each dependant its dependencies' run directories and check the result; refuse cycles."""
    for cell, dataset, method in wanted:
        for key, label in method.needs.items():
            dep = index.get((dataset, cell.seed, label))
            if dep is None:
                have = sorted({m for d, s, m in index if d == dataset and s == cell.seed})
                raise UserError(f"{path}: cell {cell.name} needs {label!r} (for {key}), but the sweep has no such "
                                f"cell on {dataset} seed {cell.seed}; its methods there: {', '.join(have)}")
            if dep is cell:
                raise UserError(f"{path}: cell {cell.name} needs itself (needs.{key}: {label})")
            cell.needs.append(dep)
            cell.overrides.append(f"{key}={dep.run_dir}")
        try:
            load_recipe(cell.recipe, cell.overrides)
        except UserError as exc:
            raise UserError(f"{path}: cell {cell.name} with the run directories it needs: {exc}") from None
    for cell, _, _ in wanted:
        _refuse_cycle(cell, [], path)


def _refuse_cycle(cell: Cell, chain: list[Cell], path: Path) -> None:
    if cell in chain:
        loop = " -> ".join(c.name for c in chain[chain.index(cell):] + [cell])
        raise UserError(f"{path}: the cells' needs form a cycle: {loop}; a cell can only need cells that need "
                        "nothing of it")
    for dep in cell.needs:
        _refuse_cycle(dep, chain + [cell], path)


def _local(path: Path, sweep_folder: Path) -> Path:
    """``path`` as given when it exists from the current folder (or is absolute), else next to the sweep file."""
    return path if path.is_absolute() or path.exists() else sweep_folder / path


def _set_status(cell: Cell, wants_missing: bool, resolved: Recipe) -> None:
    """done, partial or todo; ``changed`` when the run directory holds a run (finished or not) of another recipe
    than ``resolved`` (the cell's recipe now), so that a finished run never stands for a changed cell."""
    cell.data = None if resolved.dataset.name == "synthetic" else resolved.dataset.root
    eval_json = cell.run_dir / "eval.json"
    saved = saved_recipe(cell.run_dir)
    cell.changed = recipe_differences(saved, resolved.to_dict()) if saved is not None else {}
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
