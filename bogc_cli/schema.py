"""Strict pydantic blocks and their error messages: the base of every YAML-backed schema.

The recipe (``recipe.py``), the dataset and method option models (``data/``, ``fusion/``) and sweep
files (``sweep/plan.py``) all build on ``StrictModel`` and report a pydantic ``ValidationError`` through
``format_validation_error``: one message that names each key (with a did-you-mean hint for unknown
keys) and what is valid there. This module depends on nothing else of bogc but ``errors``, so the
option models can subclass ``StrictModel`` while ``recipe.py`` validates them (no import circle).
"""

from __future__ import annotations

import difflib
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bogc_cli.errors import UserError

#: A modality's kind: decides its default encoder and augmentation.
Kind = Literal["audio", "image", "video", "vector", "sequence"]


class StrictModel(BaseModel):
    """A recipe block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OpenModel(BaseModel):
    """A block whose extra keys are validated later against a chosen sub-schema."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


def format_validation_error(exc: ValidationError, source: str, schema: type[BaseModel], prefix: str = "",
                            context: str = "", extra_keys: tuple[str, ...] = ()) -> str:
    """One readable message for all problems, each naming its key and what is valid.

    ``prefix``: the block the schema validates (``method``); ``context``: words after the key
    (`` for method 'joint'``); ``extra_keys``: keys valid at the top of the block besides the schema's.
    """
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = [prefix, *loc] if prefix else loc
        key = ".".join(path)
        if err["type"] == "extra_forbidden":
            valid = (list(extra_keys) if len(loc) == 1 else []) + _valid_keys(schema, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], valid, n=1)
            did = f" (did you mean {'.'.join([*path[:-1], hint[0]])}?)" if hint else ""
            lines.append(f"unknown key {key!r}{context}{did}; valid keys here: {', '.join(valid)}")
        elif err["type"] == "missing":
            lines.append(f"missing required key {key!r}{context}")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    head = f"{source}: " if len(lines) == 1 else f"{source}: {len(lines)} problems:\n  - "
    return head + "\n  - ".join(lines)


def _valid_keys(schema: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the block at ``loc`` (looking through ``dict[str, Block]`` fields)."""
    model: type[BaseModel] | None = schema
    keyed = False  # the previous part was a dict field: this part is a free key
    for part in loc:
        if keyed:
            keyed = False
            continue
        field = model.model_fields.get(part) if model else None
        ann = getattr(field, "annotation", None)
        args = typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif typing.get_origin(ann) is dict and args and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            model, keyed = args[1], True
        else:
            return []
    return list(model.model_fields) if model else []


def options_error(source: str, block: str, exc: ValidationError, schema: type[BaseModel], choice: str,
                  common: list[str]) -> UserError:
    """A message for a dataset or method option problem, listing the common and the choice's keys."""
    return UserError(format_validation_error(exc, source, schema, prefix=block, context=f" for {block} {choice!r}",
                                             extra_keys=tuple(common)))
