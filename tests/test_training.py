"""Training end to end on the synthetic dataset: it learns, writes its run directory, is deterministic."""

import json

import pytest
import torch
import yaml

from bogc_cli.engine.trainer import train_run
from bogc_cli.recipe import load_recipe
from rich.console import Console

SMALL = {
    "experiment": "t",
    "dataset": {"name": "synthetic", "n_train": 1500, "n_val": 200, "n_test": 300},
    "model": {"cnn_channels": [8, 16], "feature_dim": 32, "hidden_dim": 64},
    "optim": {"lr": 0.003},
    "train": {"epochs": 2, "batch_size": 32},
}


def small_recipe(tmp_path, *overrides):
    return load_recipe(None, [f"output.dir={tmp_path}", *overrides], raw=SMALL)


def train(recipe):
    return train_run(recipe.for_seed(recipe.seed), Console(quiet=True))


def test_two_epochs_learn_and_write_the_run_directory(tmp_path):
    result = train(small_recipe(tmp_path))
    run = result.run_dir
    assert run == tmp_path / "t" / "synthetic" / "joint" / "seed0"
    for name in ("recipe.yaml", "environment.json", "metrics.jsonl", "best.pt", "last.pt", "eval.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["epoch_time_s"] > 0 and r["peak_memory_mb"] > 0 and r["step_time_ms_median"] > 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n"] == 300 and ev["split"] == "test"
    assert ev["accuracy"] > 0.5  # chance is 0.1
    # best.pt is the epoch with the highest validation accuracy, never chosen on test
    best = max(records, key=lambda r: r["val_accuracy"])
    assert ev["epoch"] == best["epoch"] and ev["val_accuracy"] == best["val_accuracy"]
    assert torch.load(run / "best.pt", weights_only=False)["epoch"] == best["epoch"]
    assert set(ev["unimodal_accuracy"]) == {"audio", "image", "vector"}
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["seed"] == 0 and saved["dataset"]["n_train"] == 1500 and "seeds" not in saved


def test_same_seed_same_result_and_other_seed_differs(tmp_path):
    a = train(small_recipe(tmp_path / "a"))
    b = train(small_recipe(tmp_path / "b"))
    c = train(small_recipe(tmp_path / "c", "seed=1"))
    metrics = lambda r: [json.loads(x)["train_loss"] for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics(a) == metrics(b)
    assert a.test["accuracy"] == b.test["accuracy"]
    assert metrics(a) != metrics(c)


@pytest.mark.parametrize("schedule, expect", [("cosine", "decreasing"), ("step", "decreasing"), ("none", "flat")])
def test_schedules_really_step(tmp_path, schedule, expect):
    r = small_recipe(tmp_path, f"optim.schedule={schedule}", "optim.step_size=1", "train.epochs=3",
                     "optim.name=sgd", "dataset.n_train=128", "dataset.n_val=64", "dataset.n_test=64")
    lrs = [json.loads(x)["lr"] for x in (train(r).run_dir / "metrics.jsonl").read_text().splitlines()]
    if expect == "flat":
        assert lrs == [lrs[0]] * 3
    else:
        assert lrs[0] > lrs[1] > lrs[2]


def test_uniform_trains_unimodal_losses_and_joint_only_probes(tmp_path):
    u = train(small_recipe(tmp_path, "method.name=uniform", "train.epochs=1"))
    j = train(small_recipe(tmp_path, "method.name=joint", "train.epochs=1"))
    ukeys = json.loads((u.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    jkeys = json.loads((j.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert {"method.loss.fused", "method.loss.audio", "method.loss.vector"} <= set(ukeys)
    assert {"method.loss.fused", "method.loss.probe:audio"} <= set(jkeys) and "method.loss.audio" not in jkeys


def test_unimodal_method_loads_one_modality(tmp_path):
    r = train(small_recipe(tmp_path, "method.name=unimodal", "method.modality=image", "train.epochs=1"))
    assert r.run_dir.parent.name == "unimodal-image"
    assert set(r.test["unimodal_accuracy"]) == {"image"}
    state = torch.load(r.run_dir / "best.pt", weights_only=False)
    assert list(state["data"]["modalities"]) == ["image"]


def test_fused_beats_weak_modality_on_synthetic(tmp_path):
    r = train(small_recipe(tmp_path, "train.epochs=4", "dataset.n_train=1500"))
    uni = r.test["unimodal_accuracy"]
    assert r.test["accuracy"] > min(uni.values()) + 0.15
