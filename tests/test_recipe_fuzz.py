"""Property-based fuzzing of recipes, as a user who makes mistakes would write them: a valid recipe with
one key misspelt or added, one value of the wrong type (types are strict: a yes/no value is no number,
text is no number, a number is no yes/no value), out of its range or not among its choices, a folder name
that climbs out of the results folder, or a block that is not a block. Every such recipe must give exit 2
and one message that names the key at fault in the user's terms (no pydantic internals; one mistake, one
line), with no traceback and nothing written. The candidate keys and their types are read from the
recipe schema itself (every block, every dataset and method option), so a new option is fuzzed too."""

from __future__ import annotations

import tempfile
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from bogc_cli.data.synthetic import SyntheticOptions
from bogc_cli.fusion import METHODS
from bogc_cli.recipe import DatasetBlock, MethodBlock, Recipe
from cli_helpers import run_cli

BASE = yaml.safe_load(Path("recipes/quickstart.yaml").read_text())
REQUIRED_OPTIONS = {"unimodal": {"modality": "audio"}}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Words that YAML or pydantic would read as a bool, a number or null: never a "wrong" value for those.
NOT_WORDS = {"yes", "no", "on", "off", "true", "false", "null", "none", "nan", "inf", "infinity", "t", "f", "y", "n"}
words = st.from_regex(r"[a-z]{2,9}", fullmatch=True).filter(lambda w: w not in NOT_WORDS)


def _blocks() -> dict[str, type[BaseModel]]:
    """Recipe block -> schema of its keys (common keys of open blocks included)."""
    out = {name: f.annotation for name, f in Recipe.model_fields.items()
           if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    return out


def _fields(method: str) -> list[tuple[str, str, Any]]:
    """(block, key, FieldInfo) of every scalar-ish key a recipe for ``method`` can set."""
    rows = [("", k, f) for k, f in Recipe.model_fields.items() if k not in _blocks()]
    for block, schema in _blocks().items():
        for k, f in schema.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):  # e.g. train.augment
                rows += [(block, f"{k}.{sub}", g) for sub, g in f.annotation.model_fields.items()]
            else:
                rows.append((block, k, f))
    rows += [("dataset", k, f) for k, f in SyntheticOptions.model_fields.items() if k != "specs"]
    rows += [("method", k, f) for k, f in METHODS[method].Options.model_fields.items()]
    # names are fuzzed by the unknown-choice tests; output.dir is replaced by the --out the test passes
    return [r for r in rows if (r[0], r[1]) not in {("method", "name"), ("dataset", "name"), ("output", "dir")}]


UNION_CANDIDATES = [5, -1, 2.5, "sometimes", [1, 2], {"a": 1}]


def _accepts(adapter: TypeAdapter, value) -> bool:
    try:
        adapter.validate_python(value)
        return True
    except ValidationError:
        return False


def _invalid_values(field) -> st.SearchStrategy:
    """Values this field must refuse: the wrong type, a value outside its bounds, an unknown choice."""
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, __import__("types").UnionType):
        if len(args) > 1:  # e.g. model.encoders (a mapping or one name): the candidates no member accepts
            adapter = TypeAdapter(typing.Annotated[ann, *field.metadata] if field.metadata else ann)
            return st.sampled_from([v for v in UNION_CANDIDATES if not _accepts(adapter, v)])
        ann = args[0]
    metadata = list(field.metadata)
    path_part = False
    if typing.get_origin(ann) is typing.Annotated:  # e.g. PathPart: str with a length and a validator
        ann, *extra = typing.get_args(ann)
        metadata += [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        path_part = any(isinstance(e, AfterValidator) for e in extra)
    options: list[st.SearchStrategy] = []
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        choices = set(typing.get_args(ann))
        options.append(words.filter(lambda w: w not in choices))
        options.append(st.just(7))
    elif ann is bool:  # strict: no number and no text stands for a yes/no value
        options.append(st.sampled_from(["maybe", 2, [True], 0, 1, "true", "yes"]))
    elif ann is int:  # strict: a yes/no value, text or a float is no integer
        options.append(st.one_of(words, st.sampled_from([2.5, [1], {"a": 1}, True, False, "5", 3.0])))
    elif ann is float:
        options.append(st.one_of(words, st.sampled_from([[0.1], {"a": 1}, True, "0.5"])))
    elif ann is str:
        options.append(st.sampled_from([3, [1], {"a": "b"}, True]))
        if path_part:  # a folder name of the run's path: nothing that climbs out or adds a level
            options.append(st.sampled_from(["../escaped", "/absolute/x", "a/b", "x/../../y", "..", ".", "a\\b"]))
    elif origin is list:
        item = typing.get_args(ann)[0]
        options.append(st.one_of(words, st.just({"a": 1})))
        if typing.get_origin(item) is typing.Annotated:
            item = typing.get_args(item)[0]
        if item is int:
            options.append(words.map(lambda w: [w]))
            options.append(st.sampled_from([[True], ["1"], [1.5]]))
    elif origin is tuple:
        options.append(st.one_of(words, st.sampled_from([{"a": 1}, [0.1], ["x", "y"], 3])))
    elif isinstance(ann, type) and issubclass(ann, BaseModel):  # an optional block, e.g. dataset.imbalance
        options.append(st.one_of(words, st.sampled_from([7, [1, 2]])))
    elif origin is dict:
        options.append(st.one_of(words, st.just([1, 2])))
        value = typing.get_args(ann)[1]
        if typing.get_origin(value) is typing.Literal:
            options.append(words.filter(lambda w: w not in typing.get_args(value)).map(lambda w: {"audio": w}))
    for c in metadata:  # bounds: the edge itself when it is excluded, past it when included
        step = 1 if ann is int else 0.5
        if isinstance(c, at.Gt):
            options.append(st.sampled_from([c.gt, c.gt - step]))
        elif isinstance(c, at.Ge):
            options.append(st.just(c.ge - step))
        elif isinstance(c, at.Lt):
            options.append(st.sampled_from([c.lt, c.lt + step]))
        elif isinstance(c, at.Le):
            options.append(st.just(c.le + step))
        elif isinstance(c, at.MinLen) and c.min_length == 1:
            options.append(st.just("" if ann is str else []))
    assert options, f"no invalid value known for {field}"
    return st.one_of(options)


def _base(method: str) -> dict:
    recipe = yaml.safe_load(yaml.safe_dump(BASE))
    recipe["method"] = {"name": method, **REQUIRED_OPTIONS.get(method, {})}
    return recipe


def _run(capsys, recipe: dict) -> tuple[int, str, str, list[Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        out = Path(tmp) / "results"
        code, stdout, stderr = run_cli(capsys, "train", str(path), "--out", str(out))
        written = list(out.rglob("*")) if out.exists() else []
    return code, stdout, " ".join(stderr.split()), written


PYDANTIC_WORDS = ("dict[", ".str", "constrained-", "literal[", "Input should", "instance of", "function-after",
                  "problems")


def _assert_refused(code, stdout, stderr, written, key: str, single: bool = True) -> None:
    assert code == 2, f"exit {code} for {key}: {stdout[-400:]} {stderr[-400:]}"
    assert key in stderr, f"message does not name {key!r}: {stderr}"
    assert "Traceback" not in stdout + stderr
    assert not written, f"files written for a refused recipe: {written[:3]}"
    # in the user's terms: no pydantic internals, and one mistake is one message, not "2 mistakes"
    assert not [w for w in PYDANTIC_WORDS if w in stderr], stderr
    if single:
        assert "mistakes" not in stderr, stderr


def _put(recipe: dict, block: str, key: str, value) -> None:
    """``recipe[block][key] = value``, ``key`` a dotted path inside the block (``augment.flip``)."""
    target = recipe.setdefault(block, {}) if block else recipe
    *parents, last = key.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[last] = value


@st.composite
def wrong_value(draw):
    method = draw(st.sampled_from(list(METHODS)))
    block, key, field = draw(st.sampled_from(_fields(method)))
    return method, block, key, draw(_invalid_values(field))


@FUZZ
@given(wrong_value())
def test_a_wrong_value_is_refused_naming_its_key(capsys, reliability, case):
    method, block, key, value = case
    recipe = _base(method)
    _put(recipe, block, key, value)
    _assert_refused(*_run(capsys, recipe), f"{block}.{key}" if block else key)
    reliability("recipes fuzzed (refused with exit 2, naming the key)")


@FUZZ
@given(st.sampled_from(list(METHODS)), st.sampled_from(["", *_blocks()]), words, st.data())
def test_an_unknown_or_misspelt_key_is_refused_naming_it(capsys, reliability, method, block, word, data):
    recipe = _base(method)
    target = recipe.setdefault(block, {}) if block else recipe
    known = {k for _, k, _ in _fields(method)} | set(_blocks()) | set(DatasetBlock.model_fields) | set(
        MethodBlock.model_fields) | {"specs"}
    if data.draw(st.booleans()) and target:  # a typo of a key already there
        near = data.draw(st.sampled_from(sorted(target)))
        pos = data.draw(st.integers(0, len(near)))
        word = near[:pos] + data.draw(st.sampled_from("xqz")) + near[pos:]
    if word in known:
        word += "_x"
    target[word] = data.draw(st.sampled_from([1, "a", [1], {"b": 2}]))
    _assert_refused(*_run(capsys, recipe), word)
    reliability("recipes fuzzed (refused with exit 2, naming the key)")


@FUZZ
@given(st.sampled_from(sorted(_blocks())), st.sampled_from([5, "fast", [1, 2], True]))
def test_a_block_that_is_not_a_mapping_is_refused_naming_it(capsys, reliability, block, value):
    recipe = _base("joint")
    recipe[block] = value
    _assert_refused(*_run(capsys, recipe), block)
    reliability("recipes fuzzed (refused with exit 2, naming the key)")


@FUZZ
@given(st.lists(wrong_value().filter(lambda c: c[1] in ("model", "optim", "train", "output")), min_size=2,
                max_size=3, unique_by=lambda c: (c[1], c[2])))
def test_several_mistakes_are_all_named_in_one_message(capsys, reliability, cases):
    recipe = _base("joint")
    for _, block, key, value in cases:
        _put(recipe, block, key, value)
    code, stdout, stderr, written = _run(capsys, recipe)
    for _, block, key, _ in cases:
        _assert_refused(code, stdout, stderr, written, f"{block}.{key}", single=False)
    reliability("recipes fuzzed (refused with exit 2, naming the key)")
