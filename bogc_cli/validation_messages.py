"""Turn a pydantic ``ValidationError`` into one message per mistake, in the user's terms.

pydantic reports one error per union member it tried (``train.num_workers.constrained-int`` and
``train.num_workers.literal['auto']`` for one wrong value) and words them in its own terms
("Input should be a valid dictionary or instance of TrainBlock"). Here the errors are grouped by
the key the user wrote, each group becomes one line that names the key, what it takes (read from
the schema: "an integer > 0", "one of 'concat', 'sum'") and the value given, and each line says
where the key was written (``--set ...`` or the file and line, see ``yaml_source.Source``).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Sequence

import annotated_types as at
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from bogc_cli.yaml_source import Source, where

_NONE = type(None)


def format_validation_error(exc: ValidationError, source: str | Source, schema: type[BaseModel], prefix: str = "",
                            context: str = "", extra_keys: tuple[str, ...] = (), data: Any = None) -> str:
    """One readable message: one line per mistake, each naming its key, what is valid and where it was written.

    ``prefix``: the block the schema validates (``method``); ``context``: words after the key
    (`` for method 'joint'``); ``extra_keys``: keys valid at the top of the block besides the schema's;
    ``data``: the mapping that was validated, to quote a wrong value whole (else pydantic's input is quoted).
    """
    groups: dict[tuple[str, ...], list[dict]] = {}
    found: dict[tuple[str, ...], tuple] = {}
    for err in _prefer_blocks(exc.errors(), schema):
        path, ann, meta, block = _locate(schema, [str(p) for p in err["loc"]])
        groups.setdefault(path, []).append(err)
        found[path] = (ann, meta, block)
    lines = []
    for path, errs in groups.items():
        full = [prefix, *path] if prefix else list(path)
        text = _message(schema, path, full, errs, *found[path], context, extra_keys, _value_at(data, path))
        lines.append((where(source, *full), text))
    if len(lines) == 1:
        at_, text = lines[0]
        return f"{at_}: {text}"
    name = str(source)
    items = [t if w == name else f"{w.removeprefix(name + ', ')}: {t}" for w, t in lines]
    return f"{name}: {len(lines)} mistakes:\n  - " + "\n  - ".join(items)


# ------------------------------------------------------------------ where in the schema a key is


def _strip_none(ann: Any) -> Any:
    """``X | None`` -> ``X``; other annotations unchanged."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(ann) if a is not _NONE]
        if len(members) == 1:
            return members[0]
    return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _members(ann: Any) -> list[Any]:
    """The members of a union (``None`` left out), or ``[ann]``."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(ann) if a is not _NONE]
    return [ann]


def _block_inside(ann: Any, loc: list[str], i: int) -> tuple[type[BaseModel] | None, int]:
    """When the error at ``loc`` lies inside a block that ``ann`` allows (``ann`` is the block, or a union
    with it whose member pydantic names at ``loc[i]``): (that block, where its keys start in ``loc``)."""
    ann = _unannotated(ann)
    if _is_model(ann):
        return ann, i
    for member in _members(ann):
        if _is_model(member) and i + 1 < len(loc) and loc[i] == member.__name__:
            return member, i + 1
    return None, i


def _unannotated(ann: Any) -> Any:
    """``Annotated[X, ...]`` -> ``X`` (a block with a before-validator is still a block)."""
    return typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann


def _collection_member(ann: Any, tag: str) -> Any:
    """The mapping or list member of a union that pydantic names ``tag`` (``dict[str,...]``) in an error's
    location, or None."""
    for member in _members(ann):
        origin = typing.get_origin(member)
        if origin in (dict, list) and tag.startswith(f"{origin.__name__}["):
            return member
    return None


def _is_member_tag(part: str, names: set[str]) -> bool:
    """Whether a location part is pydantic's name of a union member that holds blocks or collections."""
    return part in names or part.startswith(("dict[", "list["))


def _locate(schema: type[BaseModel], loc: list[str]) -> tuple[tuple[str, ...], Any, tuple, type[BaseModel]]:
    """Where an error at pydantic's ``loc`` is, in the user's terms: (the key path they wrote, its annotation,
    its constraints, the block holding the last key).

    The path follows blocks (also inside mappings, lists and unions of a block with something else, when
    the error lies inside the block) and stops at a leaf: what follows in ``loc`` are pydantic's union-member
    names and indices into the value. A mapping or list of blocks or unions takes one key (index) more, as
    does a plain ``dict[str, X]``. For an unknown key the path ends with that key and the annotation is None."""
    model: type[BaseModel] = schema
    path: list[str] = []
    ann: Any = None
    meta: tuple = ()
    i = 0
    while i < len(loc):
        part = loc[i]
        if part not in model.model_fields:
            return (*path, part), None, (), model
        field = model.model_fields[part]
        path.append(part)
        i += 1
        ann, meta = _strip_none(field.annotation), tuple(field.metadata)
        block, i = _block_inside(ann, loc, i)
        if block is not None:
            model = block
            continue
        if i < len(loc) and (member := _collection_member(ann, loc[i])) is not None:
            ann, i = member, i + 1  # e.g. dict[str, Block] | str: the error lies in the mapping
        origin = typing.get_origin(ann)
        if origin in (dict, list) and i < len(loc):
            item = _strip_none(typing.get_args(ann)[-1])
            if any(_is_model(m) for m in _members(item)) or (origin is dict and len(_members(item)) == 1):
                path.append(loc[i])
                ann, meta = item, ()
                block, i = _block_inside(item, loc, i + 1)
                if block is not None:
                    model = block
                    continue
        break
    return tuple(path), ann, meta, model


def _block_names(schema: type[BaseModel]) -> set[str]:
    """Class names of every block reachable from ``schema`` (pydantic names union members by them)."""
    names, todo = set(), [schema]
    while todo:
        model = todo.pop()
        if model.__name__ in names:
            continue
        names.add(model.__name__)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                ann = stack.pop()
                if _is_model(ann):
                    todo.append(ann)
                else:
                    stack += [a for a in typing.get_args(ann) if a is not Ellipsis]
    return names


def _prefer_blocks(errors: list[dict], schema: type[BaseModel]) -> list[dict]:
    """Where a value may be a block or something else (``MethodEntry | str``) and the user wrote a block,
    only the block's errors are about the mistake: the others ("not text") are dropped."""
    names = _block_names(schema)
    through = {tuple(e["loc"][:i]) for e in errors for i, p in enumerate(e["loc"])
               if _is_member_tag(str(p), names) and 0 < i < len(e["loc"]) - 1}
    return [e for e in errors if not any(tuple(e["loc"][:i]) in through and not _is_member_tag(str(p), names)
                                         for i, p in enumerate(e["loc"]) if i)] or errors


# ------------------------------------------------------------------ the message of one mistake

_CUSTOM = ("value_error", "assertion_error")
_NOT_A_BLOCK = ("model_type", "model_attributes_type", "dict_type")


_ABSENT = object()


def _value_at(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return _ABSENT
    return data


def _message(schema, path, full, errs, ann, meta, block, context, extra_keys, given=_ABSENT) -> str:
    key = ".".join(full)
    first = min(errs, key=lambda e: len(e["loc"]))
    names = _block_names(schema)  # a missing key is this key's own when its location, union members aside, is path
    kinds = {e["type"] for e in errs if e["type"] != "missing"
             or [str(p) for p in e["loc"] if not _is_member_tag(str(p), names)] == list(path)}
    if "extra_forbidden" in kinds:
        valid = (list(extra_keys) if len(path) == 1 else []) + list(block.model_fields)
        hint = difflib.get_close_matches(path[-1], valid, n=1)
        did = f" (did you mean {'.'.join([*full[:-1], hint[0]])}?)" if hint else ""
        return f"unknown key {key!r}{context}{did}; valid keys here: {', '.join(valid)}"
    if "missing" in kinds:
        return f"missing required key {key!r}{context}"
    if (kinds and kinds <= set(_CUSTOM)) or ann is None:
        text = "; ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
                                       for e in errs))
        return f"{key}{context}: {text}" if key else text
    if _is_model(ann) and kinds & set(_NOT_A_BLOCK):
        return f"{key}{context} is a block of keys (key: value), not {show(first['input'])}"
    value = first["input"] if given is _ABSENT else given
    return f"{key}{context}: expected {describe(ann, meta)}, got {show(value)}{_hint(ann, value)}"


def show(value: Any) -> str:
    """A value as the user would write it in YAML (``true``, ``'5'``, ``{audio: 2}``), shortened."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("...").strip()
    except yaml.YAMLError:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _accepts(ann: Any, kind: type) -> bool:
    ann = _strip_none(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return any(_accepts(a, kind) for a in typing.get_args(ann))
    if typing.get_origin(ann) is typing.Annotated:
        return _accepts(typing.get_args(ann)[0], kind)
    return ann is kind


def _hint(ann: Any, value: Any) -> str:
    if isinstance(value, bool) and not _accepts(ann, bool):
        return " (YAML reads yes/no, on/off and true/false as a yes/no value)"
    if isinstance(value, str) and (_accepts(ann, int) or _accepts(ann, float)):
        try:
            float(value)
        except ValueError:
            return ""
        return " (that is text, in quotes: write the number without quotes)"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _accepts(ann, str) \
            and not (_accepts(ann, int) or _accepts(ann, float)):
        return " (a number: put it in quotes to mean text)"
    return ""


def describe(ann: Any, meta: Sequence[Any] = ()) -> str:
    """What an annotation accepts, in words: ``an integer > 0``, ``one of 'a', 'b'``, ``a list of numbers``."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        inner, *more = typing.get_args(ann)
        return describe(inner, (*meta, *more))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        members = [describe(a) for a in args if a is not _NONE] + (["null"] if _NONE in args else [])
        return ", or ".join(members) if len(members) > 2 else " or ".join(members)
    if origin is typing.Literal:
        choices = typing.get_args(ann)
        return f"{choices[0]!r}" if len(choices) == 1 else "one of " + ", ".join(repr(c) for c in choices)
    if ann is bool:
        return "true or false"
    if ann is int:
        return "an integer" + _bounds(meta)
    if ann is float:
        return "a number" + _bounds(meta)
    if ann is str:
        return "text" + (" (not empty)" if _min_length(meta) else "")
    if origin in (list, tuple):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        if origin is tuple and len(args) > 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        items = _plural(args[0]) if args else "values"
        n = _min_length(meta)
        most = min((c.max_length for c in _flat(meta) if isinstance(c, at.MaxLen)), default=None)
        if most is not None and most == n:
            return f"a list of {n} {items}"
        return f"a list of {items}" + (f" (at least {n})" if n > 1 else " (not empty)" if n == 1 else "")
    if origin is dict:
        return f"a mapping (name: {describe(typing.get_args(ann)[1])})"
    if _is_model(ann):
        return getattr(ann, "described_as", "a block of keys (key: value)")
    return "a value"


def _plural(ann: Any) -> str:
    base = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
    words = {int: "integers", float: "numbers", str: "names", bool: "true/false values"}
    if base in words:
        bounds = _bounds(typing.get_args(ann)[1:]) if base is not ann else ""
        return words[base] + bounds
    return f"values that are each {describe(ann)}"


def _bounds(meta: Sequence[Any]) -> str:
    parts = []
    for c in _flat(meta):
        for cls, attr, sign in ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<=")):
            if isinstance(c, cls):
                parts.append(f"{sign} {getattr(c, attr)}")
    return (" " + " and ".join(parts)) if parts else ""


def _min_length(meta: Sequence[Any]) -> int:
    return max((c.min_length for c in _flat(meta) if isinstance(c, at.MinLen)), default=0)


def _flat(meta: Sequence[Any]) -> list[Any]:
    """Constraints, with those of a ``Field(...)`` inside ``Annotated`` taken out of it."""
    out = []
    for c in meta:
        out += _flat(c.metadata) if isinstance(c, FieldInfo) else [c]
    return out


__all__ = ["describe", "format_validation_error", "show"]
