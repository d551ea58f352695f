"""Mistakes in recipes and options through the real ``bogc`` entry point (issue 17, kinds 7 and 9): strict
types, keys given twice, one message per mistake naming where it was written, seeds, folder names that would
leave the results folder, output folders that cannot be written, and finished runs of another recipe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from cli_helpers import ROOT, run_bogc

QUICK = "recipes/quickstart.yaml"
TINY = ["--set", "dataset.n_train=200", "--set", "dataset.n_val=100", "--set", "dataset.n_test=100",
        "--set", "model.cnn_channels=[8,16]", "--set", "train.epochs=1"]
PYDANTIC_WORDS = ("dict[", ".str", "constrained-", "literal[", "Input should", "instance of", "problems")


def _one_message(proc, where: str, says: str) -> str:
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr
    assert message.startswith(f"error: {where}: "), message
    assert says in message, (says, message)
    assert "mistakes" not in message and not [w for w in PYDANTIC_WORDS if w in message], message
    return message


# ------------------------------------------------------------------ strict types, one message, where from
@pytest.mark.parametrize("overrides, says", [
    (["train.epochs=true"], "train.epochs: expected an integer > 0, got true (YAML reads yes/no"),
    (["train.epochs=yes"], "train.epochs: expected an integer > 0, got true"),
    (["train.num_workers=yes"], "train.num_workers: expected an integer >= 0 or 'auto', got true"),
    (["train.batch_size=64.0"], "train.batch_size: expected an integer > 0, got 64.0"),
    (["dataset.n_train='600'"], "dataset.n_train for dataset 'synthetic': expected an integer > 0, got '600' "
                                "(that is text, in quotes"),
    (["optim.lr='1e-3'"], "optim.lr: expected a number > 0, got 1e-3"),
    (["train.augment.flip=1"], "train.augment.flip: expected true or false, got 1"),
    (["train.deterministic=no"], None),  # a yes/no value for a yes/no key is fine
    (["experiment=2024"], "experiment: expected text (not empty), got 2024 (a number: put it in quotes"),
    (["method.tag=on"], "method.tag: expected text (not empty), got true"),
    (["model.encoders=5"], "model.encoders: expected a mapping (name: an encoder name or a block of keys (name, weights, path, freeze, ...)), or text, or null, got 5"),
    # a mapping of the union holds the mistake: the message names the entry (as for model.encoders.<m>.freeze)
    (["train.modality_dropout={audio: 2}"], "train.modality_dropout.audio: expected a number >= 0 and < 1, got 2"),
    (["train.augment.crop_scale=[0.5]"], "train.augment.crop_scale: expected a list of 2 numbers, got [0.5]"),
    (["model.fuson=sum"], "unknown key 'model.fuson' (did you mean model.fusion?)"),
    (["method.name=ogm_ge", "method.alpha=true"], "method.alpha for method 'ogm_ge': expected a number > 0"),
    (["dataset.name=cifar"], "dataset.name 'cifar' is not a dataset"),
    (["method.name=nope"], "method.name 'nope' is not a method"),
])
def test_a_wrong_value_is_one_message_naming_the_set_that_gave_it(tmp_path, reliability, overrides, says):
    args = [a for o in overrides for a in ("--set", o)]
    if says is None:  # accepted: the value has the key's type
        proc = run_bogc("train", QUICK, *args, *TINY, "--out", tmp_path)
        assert proc.returncode == 0, proc.stderr
        return
    proc = run_bogc("train", QUICK, *args, "--out", tmp_path / "out")
    _one_message(proc, f"--set {overrides[-1]}", says)
    assert not (tmp_path / "out").exists()
    reliability("recipe mistakes given to the real bogc (strict types, one message naming its --set or line)")


def test_a_wrong_value_in_the_file_is_named_with_its_line(tmp_path, reliability):
    text = Path(ROOT / QUICK).read_text()
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(text.replace("epochs: 6", "epochs: yes"))
    line = next(i for i, row in enumerate(recipe.read_text().splitlines(), 1) if "epochs: yes" in row)
    _one_message(run_bogc("train", recipe, "--out", tmp_path / "out"), f"{recipe}, line {line}",
                 "train.epochs: expected an integer > 0, got true")
    # two mistakes: two lines, each with its own place; a --set keeps its own name
    recipe.write_text(text.replace("epochs: 6", "epochs: yes").replace("fusion: concat", "fusion: conca"))
    proc = run_bogc("train", recipe, "--set", "train.batch_size=0", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert f"error: {recipe}: 3 mistakes:" in proc.stderr
    assert "- line 9: model.fusion: expected one of 'concat', 'sum', 'film', 'gated', got conca" in proc.stderr
    assert f"- line {line}: train.epochs" in proc.stderr
    assert "- --set train.batch_size=0: train.batch_size: expected an integer > 0, got 0" in proc.stderr
    reliability("recipe mistakes given to the real bogc (strict types, one message naming its --set or line)", 2)


@pytest.mark.parametrize("text, key, lines", [
    ("train:\n  epochs: 3\n  batch_size: 32\n  epochs: 1\n", "train.epochs", (4, 2)),
    ("train:\n  epochs: 3\ntrain:\n  epochs: 1\n", "train", (3, 1)),
    ("seed: 0\nseed: 1\n", "seed", (2, 1)),
    ("train:\n  modality_dropout: {audio: 0.1, audio: 0.2}\n", "train.modality_dropout.audio", (2, 2)),
])
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, reliability, text, key, lines):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("dataset:\n  name: synthetic\n" + text)
    proc = run_bogc("train", recipe, "--out", tmp_path / "out")
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2
    assert f"recipe {recipe}, line {lines[0] + 2}: key {key!r} is given twice (first on line {lines[1] + 2})" in message
    assert not (tmp_path / "out").exists()
    reliability("recipe mistakes given to the real bogc (strict types, one message naming its --set or line)")


def test_a_key_given_twice_in_a_sweep_file_is_refused(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"experiment: x\nseeds: [0]\nseeds: [1]\nout: {tmp_path / 'r'}\n"
                     f"datasets: {{synthetic: {{base: {ROOT / QUICK}}}}}\nmethods: [joint]\n")
    proc = run_bogc("reproduce", sweep, "--dry-run")
    assert proc.returncode == 2 and "key 'seeds' is given twice (first on line 2)" in " ".join(proc.stderr.split())


# ------------------------------------------------------------------ seeds
def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"never read: the seed is refused first")
    return run


def _sweep(tmp_path: Path, **change) -> Path:
    sweep = {"experiment": "s", "out": str(tmp_path / "out"), "seeds": [0],
             "datasets": {"synthetic": {"base": str(ROOT / QUICK)}}, "methods": ["joint"], "missing": None, **change}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize("case, says", [
    ("train --seeds 0,0,1", "--seeds 0,0,1: seed 0 is given twice"),
    ("train --seeds 99999999999999999999", "--seeds 99999999999999999999: a seed is an integer from 0 to 4294967295"),
    ("train --seeds -1", "--seeds -1: a seed is an integer from 0 to 4294967295"),
    ("train --seeds ,", "--seeds ',': give at least one seed"),
    ("train --set seed=-3", "seed: expected an integer >= 0 and <= 4294967295, got -3"),
    ("train --set seeds=[1,2,1]", "seeds must be distinct: 1 given twice"),
    ("train --set seeds=[99999999999999999999]", "seeds: expected a list of integers >= 0 and <= 4294967295"),
    ("train --set dataset.split_seed=-1", "dataset.split_seed: expected an integer >= 0"),
    ("train --set dataset.data_seed=true", "dataset.data_seed for dataset 'synthetic': expected an integer >= 0"),
    ("prepare --seed -1", "--seed -1: a seed is an integer from 0 to 4294967295"),
    ("prepare --seed 99999999999999999999", "--seed 99999999999999999999: a seed is an integer"),
    ("missing-modality --seed -2", "--seed -2: a seed is an integer from 0 to 4294967295"),
    ("reproduce seeds [0, 0]", "seeds must be distinct: 0 given twice"),
    ("reproduce seeds [-1]", "seeds: expected a list of integers >= 0"),
    ("reproduce missing.seed -1", "missing.seed: expected an integer >= 0"),
])
def test_seeds_are_checked_before_anything_runs(tmp_path, reliability, case, says):
    command, *rest = case.split(" ", 1)
    rest = rest[0] if rest else ""
    if command == "train":
        args = ["train", QUICK, *rest.split(), "--out", tmp_path / "out"]
    elif command == "prepare":
        args = ["prepare", "mfeat", "--raw", ROOT.parent / "shared" / "data" / "mfeat", "--out", tmp_path / "out",
                *rest.split()]
    elif command == "missing-modality":
        args = ["missing-modality", _fake_run(tmp_path), *rest.split()]
    else:
        key, value = rest.split(" ", 1)
        change = {"seeds": yaml.safe_load(value)} if key == "seeds" else {"missing": {"seed": int(value)}}
        args = ["reproduce", _sweep(tmp_path, **change)]
    proc = run_bogc(*args)
    assert proc.returncode == 2, proc.stdout[-400:] + proc.stderr
    assert says in " ".join(proc.stderr.split()), proc.stderr
    assert not (tmp_path / "out").exists()  # seed 1 of 0,0,1 never trained, nor anything else
    reliability("bad seeds refused before anything runs (every command that takes one)")


# ------------------------------------------------------------------ folder names that leave the results folder
@pytest.mark.parametrize("overrides, key", [
    (["experiment=../escaped"], "experiment: '../escaped' contains a path separator"),
    (["experiment=/tmp/absolute"], "experiment: '/tmp/absolute' contains a path separator (an absolute path)"),
    (["experiment=.."], "experiment: '..' means the folder above"),
    (["dataset.label=a/b"], "dataset.label: 'a/b' contains a path separator"),
    (["method.tag=x/../../y"], "method.tag: 'x/../../y' contains a path separator"),
    (["method.tag=."], "method.tag: '.' means this folder"),
    (["method.name=unimodal", "method.modality=../x"], "the method's name in run paths, 'unimodal-../x'"),
])
def test_path_parts_from_the_recipe_are_refused(tmp_path, reliability, overrides, key):
    work = tmp_path / "work"
    work.mkdir()
    args = [a for o in overrides for a in ("--set", o)]
    proc = run_bogc("train", ROOT / QUICK, *args, "--out", work / "out", cwd=work)
    assert proc.returncode == 2 and key in " ".join(proc.stderr.split()), proc.stderr
    assert list(tmp_path.rglob("*")) == [work]  # nothing written, inside --out or outside it
    reliability("path parts from a recipe refused at validation (nothing written outside --out)")


def test_path_parts_in_a_recipe_file_and_a_sweep_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("experiment: ../escaped\ndataset:\n  name: synthetic\n")
    proc = run_bogc("train", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 2 and f"{recipe}, line 1: experiment: '../escaped'" in proc.stderr
    for change, says in (({"experiment": "../x"}, "experiment: '../x' contains a path separator"),
                         ({"methods": [{"recipe": "joint", "tag": "a/b"}]}, "'a/b' contains a path separator")):
        proc = run_bogc("reproduce", _sweep(tmp_path, **change), "--dry-run")
        assert proc.returncode == 2 and says in " ".join(proc.stderr.split()), proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


# ------------------------------------------------------------------ output folders that cannot be written
@pytest.fixture
def locked(tmp_path):
    """A folder that refuses new files (chmod for a user, ``chattr +i`` for root, who ignores modes), holding
    a run folder (with a stand-in best.pt) that refuses them too."""
    folder = tmp_path / "locked"
    run = folder / "run"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"never read: the folder is refused first")
    (folder / "eval.json").write_text("{}")
    root = os.geteuid() == 0
    for f in (run, folder):
        if root:
            if subprocess.run(["chattr", "+i", str(f)], capture_output=True).returncode != 0:
                pytest.skip("no way to make a folder unwritable for root here (chattr +i refused)")
        else:
            f.chmod(0o555)
    yield folder
    for f in (folder, run):
        if root:
            subprocess.run(["chattr", "-i", str(f)], capture_output=True)
        else:
            f.chmod(0o755)


@pytest.mark.parametrize("command", ["train", "train-arrays", "eval", "missing-modality", "report", "reproduce",
                                     "prepare"])
def test_an_unwritable_output_folder_is_refused_before_loading_anything(locked, tmp_path, reliability, command):
    raw = ROOT.parent / "shared" / "data" / "mfeat"
    args, names = {
        "train": (["train", QUICK, "--out", locked / "results"], "--out"),
        # data that cannot be read: the folder is refused before it would be
        "train-arrays": (["train", QUICK, "--set", "dataset.name=arrays", "--set", "dataset.root=/nonexistent",
                          "--out", locked / "results"], "--out"),
        "eval": (["eval", locked / "run"], "run folder"),  # its best.pt is not a checkpoint: never read
        "missing-modality": (["missing-modality", locked / "run"], "run folder"),
        "report": (["report", locked], "report folder"),
        "reproduce": (["reproduce", _sweep(tmp_path, out=str(locked / "results"))], "the sweep's results folder"),
        "prepare": (["prepare", "mfeat", "--raw", raw, "--out", locked / "cache"], "--out"),
    }[command]
    proc = run_bogc(*args)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2, message
    assert message.startswith(f"error: {names} {locked}") and "cannot be written" in message, message
    assert "Traceback" not in message and "PermissionError" not in message
    reliability("unwritable output folders refused before anything is loaded (every command that writes)")


def test_an_output_path_through_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    for args in (["train", QUICK, "--out", tmp_path / "notes.txt" / "results"],
                 ["prepare", "mfeat", "--raw", ROOT.parent / "shared" / "data" / "mfeat", "--out",
                  tmp_path / "notes.txt" / "cache"]):
        proc = run_bogc(*args)
        assert proc.returncode == 2 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in proc.stderr


# ------------------------------------------------------------------ a finished run of another recipe
def test_train_resume_refuses_a_finished_run_of_another_recipe(tmp_path, reliability):
    out = tmp_path / "results"
    assert run_bogc("train", QUICK, *TINY, "--out", out).returncode == 0
    run = out / "quickstart" / "synthetic" / "joint" / "seed0"
    before = (run / "eval.json").read_bytes()
    proc = run_bogc("train", QUICK, *TINY, "--set", "train.epochs=2", "--set", "optim.lr=0.01", "--out", out,
                    "--resume")
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2
    assert f"{run} holds a finished run of another recipe: it differs in optim.lr (was 0.002, now 0.01), " \
           "train.epochs (was 1, now 2)" in message and "--overwrite" in message
    assert (run / "eval.json").read_bytes() == before
    # the same recipe with the results folder spelled another way: the same run, kept as it is
    proc = run_bogc("train", ROOT / QUICK, *TINY, "--out", os.path.relpath(out, tmp_path), "--resume", cwd=tmp_path)
    assert proc.returncode == 0 and "already finished" in proc.stdout, proc.stderr
    # --overwrite trains it again under the new recipe
    proc = run_bogc("train", QUICK, *TINY, "--set", "train.epochs=2", "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    reliability("finished runs of another recipe refused by train --resume and reproduce (keys named)")


def test_reproduce_refuses_cells_whose_run_has_another_recipe_and_overwrite_redoes_them(tmp_path, reliability):
    tiny = {"train.epochs": 1, "dataset.n_train": 200, "dataset.n_val": 100, "dataset.n_test": 100,
            "model.cnn_channels": [8, 16]}
    assert run_bogc("reproduce", _sweep(tmp_path, set=tiny)).returncode == 0
    run = tmp_path / "out" / "s" / "synthetic" / "joint" / "seed0"
    before = (run / "eval.json").read_bytes()
    changed = _sweep(tmp_path, set={**tiny, "train.epochs": 2})
    proc = run_bogc("reproduce", changed)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2
    assert "1 cell(s) hold a run made with another recipe than the sweep's now (synthetic/joint/seed0: " \
           "train.epochs (was 1, now 2))" in message and "--overwrite" in message
    assert (run / "eval.json").read_bytes() == before  # nothing trained, no report rebuilt from the old run
    proc = run_bogc("reproduce", changed, "--dry-run")
    assert proc.returncode == 0 and "1 changed" in proc.stdout and "another recipe" in proc.stderr
    proc = run_bogc("reproduce", changed, "--overwrite")
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    proc = run_bogc("reproduce", changed, "--dry-run")
    assert "nothing to do" in " ".join(proc.stdout.split())
    reliability("finished runs of another recipe refused by train --resume and reproduce (keys named)")
