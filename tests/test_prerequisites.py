"""engine/prerequisites.py: the runs a method trains first inside its run directory (UMT's teachers when none is
named): refused data-parallel and over an earlier run's results before anything trains, a started one resumed, the
global random state put back, the options naming what was trained."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from bogc_cli.engine.prerequisites import train_prerequisites
from bogc_cli.engine.setup import build_parts, resolved_recipe
from bogc_cli.errors import UserError
from bogc_cli.recipe import load_recipe


def _parts(tmp_path, *sets):
    recipe = resolved_recipe(load_recipe("recipes/quickstart.yaml", ["method.name=umt", "dataset.n_train=64",
                                                                     "dataset.n_val=16", "dataset.n_test=16",
                                                                     f"output.dir={tmp_path}", *sets]))
    return recipe, build_parts(recipe)


def test_teachers_are_trained_in_order_resumed_when_started_and_named_in_the_options(tmp_path):
    recipe, parts = _parts(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "teachers" / "image").mkdir(parents=True)  # a teacher a stopped run had started
    calls = []

    def train(sub, console, overwrite, resume, run_dir):  # what train_run is asked to do, and its random draws
        calls.append((sub.method_options()["modality"], resume, run_dir))
        torch.rand(3)

    before = torch.random.get_rng_state()
    done = train_prerequisites(parts, recipe, run_dir, Console(quiet=True), False, False, None, train)
    assert calls == [("audio", False, run_dir / "teachers" / "audio"), ("image", True, run_dir / "teachers" / "image"),
                     ("vector", False, run_dir / "teachers" / "vector")]
    assert torch.equal(torch.random.get_rng_state(), before)  # the run draws what it would with the teachers named
    assert done.options.teachers == {m: str(run_dir / "teachers" / m) for m in ("audio", "image", "vector")}
    assert done.prerequisites == {f"teachers/{m}": str(run_dir / "teachers" / m) for m in ("audio", "image", "vector")}


def test_named_teachers_train_nothing(tmp_path):
    recipe, parts = _parts(tmp_path, f"method.teachers.audio={tmp_path}/t")
    assert train_prerequisites(parts, recipe, tmp_path / "run", Console(quiet=True), False, False, None,
                               lambda *a, **k: pytest.fail("trained")) is parts


def test_refusals_come_before_anything_trains(tmp_path):
    recipe, parts = _parts(tmp_path)
    never = lambda *a, **k: pytest.fail("a teacher trained")  # noqa: E731
    with pytest.raises(UserError, match="data-parallel run cannot train the runs it needs first"):
        train_prerequisites(parts, recipe, tmp_path / "run", Console(quiet=True), False, False, object(), never)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a finished run.*--resume"):
        train_prerequisites(parts, recipe, tmp_path / "run", Console(quiet=True), False, False, None, never)
