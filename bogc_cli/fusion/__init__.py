"""Training methods (one module each) and their registry."""

from __future__ import annotations

from pydantic import ValidationError

from bogc_cli.errors import UserError
from bogc_cli.fusion.base import Method, StepContext, StepResult
from bogc_cli.fusion.bogc import BOGC
from bogc_cli.fusion.joint import Joint
from bogc_cli.fusion.mmpareto import MMPareto
from bogc_cli.fusion.ogm_ge import OGMGE
from bogc_cli.fusion.uniform import Uniform
from bogc_cli.fusion.unimodal import Unimodal
from bogc_cli.recipe import MethodBlock, Recipe, StrictModel, options_error

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Joint, Uniform, Unimodal, BOGC, MMPareto, OGMGE)}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"method.name {name!r} is not a method; valid: {', '.join(METHODS)}")
    return METHODS[name]


def method_options(recipe: Recipe, source: str = "recipe") -> StrictModel:
    cls = method_class(recipe.method.name)
    try:
        return cls.Options.model_validate(recipe.method_options())
    except ValidationError as exc:
        raise options_error(source, "method", exc, cls.Options, cls.name, list(MethodBlock.model_fields)) from None


def validate_method_options(recipe: Recipe, source: str) -> None:
    if recipe.method.name not in METHODS:
        raise UserError(f"{source}: method.name {recipe.method.name!r} is not a method; valid: {', '.join(METHODS)}")
    method_options(recipe, source)


def method_label(recipe: Recipe) -> str:
    cls = method_class(recipe.method.name)
    label = cls.label(method_options(recipe))
    return f"{label}-{recipe.method.tag}" if recipe.method.tag else label


__all__ = ["METHODS", "Method", "StepContext", "StepResult", "method_class", "method_label", "method_options"]
