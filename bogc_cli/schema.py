"""Strict pydantic blocks and their error messages: the base of every YAML-backed schema.

The recipe (``recipe.py``), the dataset and method option models (``data/``, ``fusion/``) and sweep
files (``sweep/plan.py``) all build on ``StrictModel`` and report a pydantic ``ValidationError`` through
``format_validation_error`` (``validation_messages.py``): one line per mistake that names the key, what
is valid there (with a did-you-mean hint for unknown keys) and where it was written. This module depends
on nothing else of bogc but ``errors`` and those messages, so the option models can subclass
``StrictModel`` while ``recipe.py`` validates them (no import circle).

Types are strict (pydantic's strict mode): a yes/no value is no number, a number no yes/no value, and
text ("5") no number. ``Seed`` and ``PathPart`` are the value types that more than one schema shares:
a seed in NumPy's range, and one plain folder name of a run's path.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bogc_cli.errors import UserError
from bogc_cli.validation_messages import format_validation_error

#: The kinds of modality whose arrays hold numbers to learn from directly (features, pixels, spectrograms).
FeatureKind = Literal["audio", "image", "video", "vector", "sequence"]
#: A modality's kind: decides its default encoder and augmentation. ``text`` holds token ids and an
#: attention mask (``data/cache.py``).
Kind = Literal["audio", "image", "video", "vector", "sequence", "text"]

#: Seeds are NumPy's legacy range (``np.random.seed`` and the data preparers' generators take no more).
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


def path_part_problem(value: str) -> str | None:
    """Why ``value`` cannot be one folder name of a run's path, or None."""
    if value in (".", ".."):
        return f"{value!r} means {'this folder' if value == '.' else 'the folder above'}"
    if "/" in value or "\\" in value:
        return f"{value!r} contains a path separator" + (" (an absolute path)" if value.startswith("/") else "")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        return f"{value!r} contains a control character"
    if value != value.strip():
        return f"{value!r} starts or ends with a space"
    return None


def _path_part(value: str) -> str:
    problem = path_part_problem(value)
    if problem:
        raise ValueError(f"{problem}: it names one folder of the run's path <out>/<experiment>/<dataset>/<method>/"
                         "seed<N>, so it must be a plain folder name (letters, digits, '-', '_', '.')")
    return value


#: One folder name of a run's path (``<out>/<experiment>/<dataset>/<method>/seed<N>``): nothing that climbs
#: out of ``--out`` (``..``, an absolute path) or adds a level that ``bogc report`` would misread (``a/b``).
PathPart = Annotated[str, Field(min_length=1), AfterValidator(_path_part)]


class StrictModel(BaseModel):
    """A recipe block: unknown keys are errors; types are strict (no bool <-> int, no text -> number)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class OpenModel(BaseModel):
    """A block whose extra keys are validated later against a chosen sub-schema (types strict too)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True)


def options_error(source, block: str, exc: ValidationError, schema: type[BaseModel], choice: str,
                  common: list[str]) -> UserError:
    """A message for a dataset or method option problem, listing the common and the choice's keys.

    ``source``: a name, or a ``yaml_source.Source`` that knows the line or ``--set`` of each key."""
    return UserError(format_validation_error(exc, source, schema, prefix=block, context=f" for {block} {choice!r}",
                                             extra_keys=tuple(common)))


__all__ = ["FeatureKind", "Kind", "OpenModel", "PathPart", "SEED_MAX", "Seed", "StrictModel", "format_validation_error",
           "options_error", "path_part_problem"]
