"""Training methods (one module each) and their registry."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepContext, StepResult
from bogc_cli.schema import StrictModel, options_error
from bogc_cli.yaml_source import where

if TYPE_CHECKING:  # recipe.py validates with this module: importing it at run time would close a circle
    from bogc_cli.recipe import Recipe

# One module per method, each exporting ``METHOD`` (its Method subclass); this order is `bogc list`'s.
METHOD_MODULES = ("joint", "uniform", "unimodal", "bogc", "ogm_ge", "opm", "agm", "pmr", "mmpareto", "cggm",
                  "gblending", "mla", "i2m2", "mimo",
                  # issue 20, methods acting within a training step
                  "lfm", "dimml", "mmcosine", "cml", "mbsd", "greedy", "amco",
                  # issue 20, methods acting at epoch starts (turns, re-initialisation, windows, re-sampling)
                  "reconboost", "relearning", "inforeg", "smv",
                  # issue 20, unimodal models: ensembled (ume) or teaching a joint model (umt)
                  "ume", "umt")


def _load_methods() -> dict[str, type[Method]]:
    methods = {}
    for module in METHOD_MODULES:
        try:
            cls = importlib.import_module(f"bogc_cli.fusion.{module}").METHOD
        except ModuleNotFoundError as exc:
            if exc.name != f"bogc_cli.fusion.{module}":
                raise
            continue  # a method still being written; test_all_methods_registered catches a lasting gap
        methods[cls.name] = cls
    return methods


METHODS: dict[str, type[Method]] = _load_methods()


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"method.name {name!r} is not a method; valid: {', '.join(METHODS)}")
    return METHODS[name]


def method_options(recipe: Recipe, source: str = "recipe") -> StrictModel:
    cls = method_class(recipe.method.name)
    try:
        return cls.Options.model_validate(recipe.method_options())
    except ValidationError as exc:
        # the method block's common keys (name, tag) come from its schema, recipe.MethodBlock
        raise options_error(source, "method", exc, cls.Options, cls.name,
                            list(type(recipe.method).model_fields)) from None


def validate_method_options(recipe: Recipe, source: str) -> None:
    if recipe.method.name not in METHODS:
        raise UserError(f"{where(source, 'method', 'name')}: method.name {recipe.method.name!r} is not a method; valid: {', '.join(METHODS)}")
    options = method_options(recipe, source)
    reason = METHODS[recipe.method.name].check_config(options, recipe)
    if reason:
        raise UserError(f"{where(source, 'method')}: {reason}")
    from bogc_cli.data.options import known_task

    task = known_task(recipe)
    if task is not None:
        check_method_task(recipe, task, where(source, "method", "name"))


def methods_for_task(task: str) -> list[str]:
    """The methods whose rule is defined for ``task`` (``Method.tasks``), in `bogc list`'s order."""
    return [name for name, cls in METHODS.items() if task in cls.tasks]


def check_method_task(recipe: Recipe, task: str, place: str) -> None:
    """Refuse a method that cannot train a ``task`` run: one ``UserError`` naming the method, the task and the
    methods that support it (``place``: where the method was chosen, or the data the task came from)."""
    cls = method_class(recipe.method.name)
    reason = cls.check_task(method_options(recipe), task)
    if reason:
        raise UserError(f"{place}: {reason}. Methods defined for {task}: {', '.join(methods_for_task(task))} "
                        "(`bogc list` shows each method's task types)")


def method_label(recipe: Recipe) -> str:
    cls = method_class(recipe.method.name)
    label = cls.label(method_options(recipe))
    return f"{label}-{recipe.method.tag}" if recipe.method.tag else label


__all__ = ["METHODS", "Method", "StepContext", "StepResult", "check_method_task", "method_class", "method_label",
           "method_options", "methods_for_task"]
