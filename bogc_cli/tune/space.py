"""Search-space files: which recipe keys ``bogc tune`` searches, over which ranges (recipes/tune/*.yaml).

::

    method: bogc                 # optional: the method the space is for (refused for another one)
    params:                      # recipe keys (dotted), each with its distribution
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      method.beta: {type: float, low: 0.5, high: 0.99}
      method.chunks: {type: int, low: 2, high: 8, step: 2}
      method.moments: {type: categorical, choices: [microbatch, ema]}

``type`` is ``float`` (``low``, ``high``, ``log`` or ``step``), ``int`` (``low``, ``high``, ``step``,
``log``) or ``categorical`` (``choices``: numbers, texts, booleans or null), as Optuna's
``suggest_float`` / ``suggest_int`` / ``suggest_categorical`` take them. Keys are those of a recipe's
``optim``, ``method`` (the method's own options, see ``bogc list``), ``model`` and ``train`` blocks; what
names the run (``method.name``, ``method.tag``, ``experiment``, ``seed``, ``output``, ``dataset``) is not a
hyper-parameter. ``load_space`` checks all of it up front, and every range end and choice against the
recipe itself (so ``optim.lr: {low: 0}`` is refused as the recipe refuses ``optim.lr=0``), and names the
key at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from bogc_cli.errors import UserError
from bogc_cli.schema import StrictModel, format_validation_error

#: recipe blocks whose keys a space may search
TUNABLE_BLOCKS = ("optim", "method", "model", "train")
#: keys inside them that identify a run rather than train it
NOT_TUNABLE = ("method.name", "method.tag", "train.device")

Choice = Union[None, bool, int, float, str]


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="sample log-uniformly (low > 0)")
    step: float | None = Field(None, gt=0, description="discretisation step (not with log)")

    @model_validator(mode="after")
    def _range(self) -> "FloatParam":
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def ends(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> "IntParam":
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self

    def ends(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


class CategoricalParam(StrictModel):
    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> "CategoricalParam":
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"choices {self.choices}: name each choice once")
        return self

    def ends(self) -> list[Any]:
        return list(self.choices)

    def suggest(self, trial, name: str) -> Choice:
        return trial.suggest_categorical(name, self.choices)


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"low {low} must be below high {high}")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0, not {low}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined (Optuna samples either log-uniformly or on a grid)")
    if step is not None and abs(round((high - low) / step) * step - (high - low)) > 1e-9 * max(1.0, abs(high)):
        raise ValueError(f"step {step} does not divide high - low = {high - low}")


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


_KINDS = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


class SpaceFile(StrictModel):
    method: str | None = Field(None, description="the method this space is for")
    params: dict[str, Param] = Field(min_length=1, description="recipe key -> distribution")


class SearchSpace:
    """A validated space: ``params`` in file order; ``suggest(trial)`` draws them and returns the
    ``--set`` overrides that make a trial's recipe."""

    def __init__(self, source: Path, params: dict[str, Param], method: str | None):
        self.source, self.params, self.method = source, params, method

    def suggest(self, trial) -> dict[str, Any]:
        """One value per key from the Optuna ``trial`` (an enqueued trial's own values when it has them)."""
        return {key: param.suggest(trial, key) for key, param in self.params.items()}

    @staticmethod
    def overrides(values: dict[str, Any]) -> list[str]:
        """``{"optim.lr": 0.01}`` -> ``["optim.lr=0.01"]`` (values as YAML, as ``--set`` reads them)."""
        return [f"{k}={_yaml(v)}" for k, v in values.items()]


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def read_space(path: Path) -> SpaceFile:
    """Parse and check a space file's own structure (types, ranges); ``UserError`` naming the key at fault."""
    if not path.is_file():
        raise UserError(f"--space {path} not found: give a search-space YAML (see recipes/tune/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"--space {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"--space {path} is not a text file") from None
    if not isinstance(data, dict):
        raise UserError(f"--space {path} must be a mapping with params: (and optionally method:), "
                        f"not {type(data).__name__}")
    params = data.get("params")
    if isinstance(params, dict):  # the distribution's type chooses its schema: name the type first
        for key, spec in params.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            if kind not in _KINDS:
                raise UserError(f"{path}: params.{key}: give type: float, int or categorical (got "
                                f"{kind if isinstance(spec, dict) else spec!r}), e.g. "
                                f"{{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}")
            unknown = [k for k in spec if k not in _KINDS[kind].model_fields]
            if unknown:
                import difflib

                hint = difflib.get_close_matches(unknown[0], list(_KINDS[kind].model_fields), n=1)
                raise UserError(f"{path}: params.{key}: unknown key {unknown[0]!r} for type {kind}"
                                + (f" (did you mean {hint[0]}?)" if hint else "")
                                + f"; valid: {', '.join(_KINDS[kind].model_fields)}")
            try:  # each distribution on its own schema, so a message names its key and what is valid there
                _KINDS[kind].model_validate(spec)
            except ValidationError as exc:
                raise UserError(format_validation_error(exc, str(path), _KINDS[kind], prefix=f"params.{key}")) from None
    if not params:
        raise UserError(f"{path}: params: give at least one recipe key to search, e.g. "
                        "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    try:
        return SpaceFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(path), SpaceFile)) from None


def load_space(path: Path, recipe_path: Path | None, overrides: list[str], method: str,
               method_options: dict[str, Any]) -> SearchSpace:
    """Read ``path`` and check it against the recipe it will tune (``recipe_path`` with ``overrides``,
    training ``method`` whose options model has the fields ``method_options``): every key tunable and
    known, and every range end and choice accepted by the recipe. Raises ``UserError`` naming the key."""
    from bogc_cli.recipe import load_recipe

    space = read_space(path)
    if space.method is not None and space.method != method:
        raise UserError(f"{path}: method: {space.method!r}, but the recipe trains {method!r}: use the space file "
                        f"of {method} (recipes/tune/{method}.yaml) or write one")
    for key in space.params:
        block, _, rest = key.partition(".")
        if block not in TUNABLE_BLOCKS or not rest or key in NOT_TUNABLE:
            raise UserError(f"{path}: params.{key}: not a hyper-parameter to tune; tunable keys are in the "
                            f"recipe's {', '.join(TUNABLE_BLOCKS)} blocks (not {', '.join(NOT_TUNABLE)})")
        if block == "method" and rest.split(".")[0] not in method_options:
            import difflib

            valid = sorted(method_options)
            hint = difflib.get_close_matches(rest, valid, n=1)
            raise UserError(f"{path}: params.{key}: {method} has no option {rest!r}"
                            + (f" (did you mean method.{hint[0]}?)" if hint else "")
                            + (f"; its options: {', '.join(valid)}" if valid else "; it has no options of its own")
                            + " (see `bogc list`)")
    for key, param in space.params.items():
        for value in param.ends():
            try:
                load_recipe(recipe_path, [*overrides, f"{key}={_yaml(value)}"])
            except UserError as exc:
                raise UserError(f"{path}: params.{key}: the recipe refuses {key}={_yaml(value)}: {exc}") from None
    return SearchSpace(path, dict(space.params), space.method)


def space_file(space: Path, method: str, recipe_name: str | None = None) -> Path:
    """The space file for ``method``: ``space`` itself, or in a folder ``<recipe_name>.yaml`` (a sweep's
    method entry), else ``<method>.yaml``."""
    if not space.is_dir():
        return space
    for name in dict.fromkeys(n for n in (recipe_name, method) if n):
        if (space / f"{name}.yaml").is_file():
            return space / f"{name}.yaml"
    have = ", ".join(sorted(p.stem for p in space.glob("*.yaml"))) or "none"
    raise UserError(f"--space {space}: no space file for method {method!r} ({method}.yaml); that folder has: {have}. "
                    "Every method of a tune needs one, so that each gets its own search space and the same trials")
