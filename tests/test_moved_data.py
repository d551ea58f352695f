"""A run whose prepared data moved after training (copied from a cluster, a renamed disk): ``eval`` and
``missing-modality`` take ``--data DIR`` and say so when the data is not where the run was trained; ``train
--resume`` and ``reproduce`` follow a recipe whose ``dataset.root`` changed (issue 17, kind 5). Real data:
mfeat from ../shared/data, prepared and trained through the real entry point."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from cli_helpers import ROOT, run_bogc

RECIPE = "recipes/mfeat/joint.yaml"


@pytest.fixture(scope="module")
def moved(tmp_path_factory, shared_data):
    """(run folder, where its data was at training, where the data is now)."""
    root = tmp_path_factory.mktemp("moved")
    cache = root / "cluster" / "mfeat"
    assert run_bogc("prepare", "mfeat", "--raw", shared_data / "mfeat", "--out", cache).returncode == 0
    proc = run_bogc("train", RECIPE, "--seeds", "0", "--set", f"dataset.root={cache}", "--set", "train.epochs=2",
                    "--out", root / "results")
    assert proc.returncode == 0, proc.stderr
    run = root / "results" / "mfeat" / "mfeat-weak3" / "joint" / "seed0"
    now = root / "laptop" / "mfeat"
    now.parent.mkdir()
    cache.rename(now)
    return run, cache, now


@pytest.mark.parametrize("command", ["eval", "missing-modality"])
def test_data_that_moved_is_named_with_the_option_to_point_at_it(moved, reliability, command):
    run, was, now = moved
    proc = run_bogc(command, run)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2
    assert f"the mfeat data this run was trained on is no longer at {was}" in message
    assert "pass --data DIR" in message and "dataset.root" not in message
    for wrong, why in ((now.parent / "nowhere", "no such folder"), (now.parent, "no prepared data (manifest.json)")):
        proc = run_bogc(command, run, "--data", wrong)
        assert proc.returncode == 2 and f"--data {wrong}: {why}" in " ".join(proc.stderr.split())
    reliability("runs whose data moved, pointed at it with --data (eval, missing-modality, reproduce)")


def test_eval_and_missing_modality_read_the_moved_data_with_data(moved):
    run, _, now = moved
    trained = json.loads((run / "eval.json").read_text())
    proc = run_bogc("eval", run, "--data", now)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "eval.json").read_text())["accuracy"] == trained["accuracy"]
    proc = run_bogc("missing-modality", run, "--data", now, "--rates", "0,1")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(run / "missing_modality.csv")
    assert float(rows[(rows["missing"] == "fou") & (rows["rate"] == 0)]["accuracy"].iloc[0]) == \
        pytest.approx(trained["accuracy"])


def test_resume_and_reproduce_follow_a_recipe_pointed_at_the_moved_data(moved, tmp_path, reliability):
    run, _, now = moved
    for name in ("missing_modality.csv", "missing_modality.png"):
        (run / name).unlink(missing_ok=True)
    # the data's folder is where the run's data is, not what the run is: a resume is not refused for it
    proc = run_bogc("train", RECIPE, "--seeds", "0", "--set", f"dataset.root={now}", "--set", "train.epochs=2",
                    "--out", run.parents[3], "--resume")
    assert proc.returncode == 0 and "already finished" in proc.stdout, proc.stderr
    # a sweep over the same run, its set: pointing at the data's new place: the finished training is kept and
    # the missing-modality step reads the data where the sweep says, not where the checkpoint says
    sweep = {"experiment": "mfeat", "out": str(run.parents[3]), "seeds": [0],
             "set": {"dataset.root": str(now), "train.epochs": 2},
             "datasets": {"mfeat": {"base": str(ROOT / RECIPE)}}, "methods": ["joint"],
             "missing": {"rates": [0, 1], "seed": 0}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    stamp = (run / "best.pt").stat().st_mtime_ns
    proc = run_bogc("reproduce", path)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr
    assert (run / "missing_modality.csv").is_file() and (run / "best.pt").stat().st_mtime_ns == stamp
    log = (run.parents[3] / "mfeat" / "logs" / "mfeat-weak3_joint_seed0.log").read_text()
    assert f"--data {now}" in log
    reliability("runs whose data moved, pointed at it with --data (eval, missing-modality, reproduce)")
