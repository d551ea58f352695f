"""The CLI as a user meets it: exit codes, messages, eval and missing-modality outputs."""

import json

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run_cli, run_results

TINY = ["--set", "dataset.n_train=600", "--set", "dataset.n_val=150", "--set", "dataset.n_test=300",
        "--set", "train.epochs=3", "--set", "model.cnn_channels=[8,16]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real `bogc train` in a subprocess, as a user runs it; the tests below read its run directory."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("results")
    proc = subprocess.run([sys.executable, "-m", "bogc_cli", "train", "recipes/quickstart.yaml", "--out", str(out),
                           *TINY], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test metrics at the best-validation epoch" in proc.stdout
    return out / "quickstart" / "synthetic" / "joint" / "seed0"


def test_eval_prints_and_writes(trained, capsys):
    code, out, err = run_cli(capsys, "eval", trained, "--split", "val")
    assert code == 0, err
    assert "macro-F1" in out and "audio head accuracy" in out and "class 9 accuracy" in out
    written = json.loads((trained / "eval-best-val.json").read_text())
    assert written["split"] == "val" and written["n"] == 150
    # re-evaluating test reproduces the training-time test numbers and keeps the timings
    before = json.loads((trained / "eval.json").read_text())
    code, out, _ = run_cli(capsys, "eval", trained)
    after = json.loads((trained / "eval.json").read_text())
    assert code == 0 and after["accuracy"] == before["accuracy"]
    assert after["step_time_ms_median"] == before["step_time_ms_median"]
    code, _, _ = run_cli(capsys, "eval", trained / "last.pt", "--split", "test")
    assert code == 0 and (trained / "eval-last-test.json").is_file()


def test_missing_modality_outputs(trained, capsys):
    code, out, err = run_cli(capsys, "missing-modality", trained, "--rates", "0,0.5,1", "--seed", "3")
    assert code == 0, err
    df = pd.read_csv(trained / "missing_modality.csv")
    single = df[~df["missing"].str.contains(r"\+")]
    assert sorted(single["missing"].unique()) == ["audio", "image", "vector"]
    assert len(single) == 9
    multi = set(df[df["missing"].str.contains(r"\+")]["missing"])
    assert multi == {"audio+image", "audio+vector", "image+vector", "audio+image+vector"}
    full = json.loads((trained / "eval.json").read_text())["accuracy"]
    at = lambda m, r: float(single[(single["missing"] == m) & (single["rate"] == r)]["accuracy"].iloc[0])
    assert at("audio", 0.0) == pytest.approx(full)
    # audio is the strongest modality: losing it costs accuracy, monotonically here
    assert at("audio", 0.0) > at("audio", 0.5) > at("audio", 1.0)
    png = trained / "missing_modality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "missing-modality accuracy" in out
    # another fill changes the numbers and is recorded beside the earlier rows (tests/test_results_kept.py)
    code, _, _ = run_cli(capsys, "missing-modality", trained, "--modalities", "audio", "--rates", "1",
                         "--fill", "mean-feature")
    df2 = pd.read_csv(trained / "missing_modality.csv")
    added = df2[df2["fill"] == "mean-feature"]
    assert code == 0 and list(added["missing"]) == ["audio"] and len(df2) == len(df) + 1


def test_missing_masks_are_seeded_and_nested():
    from bogc_cli.engine.missing import missing_masks

    mods = ["a", "b"]
    m30 = missing_masks(100, mods, 0.3, ("a",), mods, seed=0)
    m70 = missing_masks(100, mods, 0.7, ("a",), mods, seed=0)
    assert (~m30["a"]).sum() == 30 and (~m70["a"]).sum() == 70 and m30["b"].all()
    assert np.all(m70["a"] <= m30["a"])  # whoever misses at 30% also misses at 70%
    assert np.array_equal(m30["a"], missing_masks(100, mods, 0.3, ("a",), mods, seed=0)["a"])
    assert not np.array_equal(m30["a"], missing_masks(100, mods, 0.3, ("a",), mods, seed=1)["a"])


@pytest.mark.parametrize("args, words", [
    (["train", "nope.yaml"], ["nope.yaml", "not found"]),
    (["train", "recipes/quickstart.yaml", "--set", "model.fuson=sum"], ["model.fuson", "did you mean"]),
    (["train", "recipes/quickstart.yaml", "--set", "dataset.modalities=[audio,visual]", "--out", "{tmp}"],
     ["visual", "available"]),
    (["train", "recipes/quickstart.yaml", "--seeds", "a,b"], ["--seeds"]),
    (["train", "recipes/avdigits/joint.yaml", "--set", "dataset.root=/nonexistent/av", "--out", "{tmp}"],
     ["/nonexistent/av", "bogc prepare"]),
    (["eval", "/nonexistent/run"], ["/nonexistent/run", "does not exist"]),
    (["prepare", "cifar", "--raw", ".", "--out", "x"], ["cifar", "avdigits"]),
    (["prepare", "mfeat", "--raw", "/nonexistent/raw", "--out", "x"], ["/nonexistent/raw"]),
    (["report", "/nonexistent/results"], ["/nonexistent/results"]),
    (["train", "recipes/quickstart.yaml", "--gpus", "64", "--out", "{tmp}"], ["--gpus 64", "visible CUDA GPU"]),
])
def test_user_errors_exit_2_with_one_message(capsys, tmp_path, args, words):
    code, out, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    assert "Traceback" not in err + out
    assert err.startswith("error:")
    for w in words:
        assert w in err, (w, err)


def test_gpus_is_refused_under_torchrun(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the check comes before any process group
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--gpus", "1", "--out", tmp_path)
    assert code == 2 and "leave --gpus out" in err and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_compiled_encoders_train_what_plain_ones_train(capsys, tmp_path):
    # torch.compile changes kernels, not the function: same losses up to float rounding, same checkpoint keys
    args = ["train", "recipes/quickstart.yaml", "--set", "train.epochs=2"]
    assert run_cli(capsys, *args, "--out", tmp_path / "plain")[0] == 0
    assert run_cli(capsys, *args, "--compile", "--out", tmp_path / "compiled")[0] == 0
    plain, compiled = run_results(tmp_path / "plain"), run_results(tmp_path / "compiled")
    for a, b in zip(plain[0], compiled[0], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.01)
    assert compiled[2].keys() == plain[2].keys()
    run = next((tmp_path / "compiled").rglob("eval.json")).parent
    assert json.loads((run / "environment.json").read_text())["compile"] is True
    code, _, _ = run_cli(capsys, "eval", run)  # a compiled run's checkpoint loads into the plain model
    assert code == 0


def test_user_error_on_a_run_writes_nothing(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path,
                         "--set", "method.name=unimodal", "--set", "method.modality=visual")
    assert code == 2 and not any(tmp_path.iterdir())


def test_corrupt_checkpoint_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "eval", bad)
    assert code == 2 and "corrupt" in err


def test_help_and_list(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for cmd in ("prepare", "train", "eval", "missing-modality", "report", "list"):
        assert cmd in out
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for word in ("synthetic", "avdigits", "mfeat", "arrays", "resnet18", "cnn-small", "mlp", "concat", "film",
                 "gated", "joint", "uniform", "unimodal", "weak3"):
        assert word in out


def test_arrays_folder_made_with_numpy_trains(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = {"train": rng.integers(0, 3, 300), "test": rng.integers(0, 3, 90)}
    for split, labels in y.items():
        # what a user writes: two np.save calls per split (plus labels)
        (tmp_path / "data" / split).mkdir(parents=True)
        np.save(tmp_path / "data" / split / "eeg.npy", (labels[:, None] + rng.normal(0, 0.5, (len(labels), 16))).astype("float32"))
        np.save(tmp_path / "data" / split / "labels.npy", labels)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"experiment: mine\ndataset:\n  name: arrays\n  root: {tmp_path / 'data'}\n"
                      f"train:\n  epochs: 3\noutput:\n  dir: {tmp_path / 'results'}\n")
    code, out, err = run_cli(capsys, "train", recipe)
    assert code == 0, err
    ev = json.loads((tmp_path / "results" / "mine" / "arrays" / "joint" / "seed0" / "eval.json").read_text())
    assert ev["n"] == 90 and ev["accuracy"] > 0.6  # chance is 1/3
