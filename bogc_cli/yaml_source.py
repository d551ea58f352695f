"""Reading the YAML a user wrote (recipes, sweep files, ``--set`` values), remembering where each key was.

Two departures from ``yaml.safe_load``, both so that a value means what the user meant:

- a key given twice in one mapping is an error naming both lines (PyYAML silently keeps the last);
- ``1e-3`` is a number, as in YAML 1.2 (PyYAML follows YAML 1.1, where a float needs a dot, and
  reads ``1e-3`` as the text "1e-3").

A ``Source`` remembers the file's name, the line of every key and which keys came from ``--set``,
so a message about a key can say where the user wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from bogc_cli.errors import UserError

KeyPath = tuple[str, ...]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's exponent floats (``1e-3``, ``5E+2``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass(frozen=True)
class Source:
    """Where a recipe came from: ``name`` (a file, or words such as "recipe saved in X"), the line of
    each key in that file (``("train", "epochs") -> 12``) and the ``--set`` text of each overridden key."""

    name: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overrides: dict[KeyPath, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name

    def where(self, path: Sequence[Any]) -> str:
        """``--set train.epochs=true``, ``recipe.yaml, line 12`` or the name: who wrote the key at ``path``
        (or the nearest block above it)."""
        path = tuple(str(p) for p in path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.overrides:
                return f"--set {self.overrides[path[:n]]}"
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"{self.name}, line {self.lines[path[:n]]}"
        return self.name


def where(source: str | Source, *path: Any) -> str:
    """``source.where(path)`` for a ``Source``; a plain name is returned as it is."""
    return source.where(path) if isinstance(source, Source) else str(source)


def load_yaml(text: str, name: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse ``text`` (named ``name`` in messages) -> (data, line of each key path).

    Raises UserError for invalid YAML and for a key given twice in one mapping."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[KeyPath, int] = {}
        _index(node, (), lines, name)
        return loader.construct_document(node), lines
    except yaml.YAMLError as exc:
        raise UserError(f"{name} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _index(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], name: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                dotted = ".".join((*path, key))
                raise UserError(f"{name}, line {line}: key {dotted!r} is given twice (first on line {seen[key]}); "
                                "YAML would silently keep only the last one: delete one of them")
            seen[key] = line
            lines[(*path, key)] = line
            _index(value_node, (*path, key), lines, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, str(i)), lines, name)


def read_yaml_file(path: str | Path, what: str, fix: str) -> tuple[dict[str, Any], Source]:
    """A YAML file holding a mapping -> (data, its ``Source``). ``what`` names the file in messages
    ("recipe", "sweep file"); ``fix`` says what to give instead when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found: {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file") from None
    data, lines = load_yaml(text, f"{what} {path}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of keys (key: value), not {type(data).__name__}")
    return data, Source(str(path), lines)


__all__ = ["KeyPath", "Source", "load_yaml", "read_yaml_file", "where"]
