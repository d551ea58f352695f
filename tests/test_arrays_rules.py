"""The `arrays` format's rules across splits (labels, classes, dtypes, names, kinds) and `prepare`'s rule for an
existing cache, through the real `bogc` entry point where the CLI is involved (issue 17, kinds 6 and 9)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bogc_cli.data.arrays import read_arrays_folder
from bogc_cli.data.cache import carve_validation, load_split, read_manifest
from bogc_cli.errors import UserError
from cli_helpers import run_cli
from data_prep import PREPARERS

TRAIN = ["train", "recipes/quickstart.yaml", "--set", "dataset.name=arrays", "--set", "train.epochs=2",
         "--set", "train.batch_size=16", "--seeds", "0"]


def bogc(*args) -> subprocess.CompletedProcess:
    """The installed ``bogc`` console script (``python -m bogc_cli`` where it is not on PATH), as a user runs it."""
    command = [shutil.which("bogc")] if shutil.which("bogc") else [sys.executable, "-m", "bogc_cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600)


def _folder(root: Path, labels: dict[str, np.ndarray], **arrays: dict[str, np.ndarray]) -> Path:
    """``root/<split>/labels.npy`` and one ``.npy`` per modality; a modality's arrays default to features that
    separate the classes (class k's mean is k), so a short training run learns them."""
    rng = np.random.default_rng(0)
    for split, y in labels.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        np.save(root / split / "labels.npy", y)
        rank = {v: i for i, v in enumerate(sorted(set(np.concatenate(list(labels.values())).tolist())))}
        feat = (np.array([rank[v] for v in y])[:, None] + 0.3 * rng.normal(size=(len(y), 6))).astype(np.float32)
        for name, per_split in {"feat": {}, **arrays}.items():
            value = per_split.get(split, feat if name == "feat" else None)
            if value is not None:
                np.save(root / split / f"{name}.npy", value)
    return root


# ------------------------------------------------------------------------------------------------ labels, classes


def test_labels_3_7_42_become_three_classes_and_eval_has_no_nan(capsys, tmp_path, reliability):
    """Labels 3, 7, 42 used to make 43 classes: macro-F1 averaged over 40 empty ones and eval.json held NaN."""
    y = {"train": np.repeat([3, 7, 42], 20), "test": np.repeat([3, 7, 42], 6)}
    _folder(tmp_path / "mine", y)
    done = bogc("prepare", "arrays", "--raw", tmp_path / "mine", "--out", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "cache")
    reliability("arrays data that cannot be right (labels, classes, dtypes, names, kinds): mapped, warned or refused")
    assert manifest.classes == ["3", "7", "42"] and manifest.params["label_map"] == {"3": 0, "7": 1, "42": 2}
    assert "not 0..2" in done.stdout
    test = load_split(tmp_path / "cache", manifest, "test")
    assert sorted(set(test.labels.tolist())) == [0, 1, 2]
    code, _, err = run_cli(capsys, *TRAIN, "--set", f"dataset.root={tmp_path / 'cache'}", "--out", tmp_path / "r")
    assert code == 0, err
    text = next((tmp_path / "r").rglob("eval.json")).read_text()
    result = json.loads(text)
    assert "NaN" not in text and set(result["per_class_accuracy"]) == {"3", "7", "42"}
    assert result["macro_f1"] > 0.5 and abs(result["macro_f1"] - result["accuracy"]) < 0.3


def test_classes_txt_with_extra_names_class_missing_from_train_or_test(capsys, tmp_path, reliability):
    root = _folder(tmp_path / "mine", {"train": np.repeat([0, 1, 2], 10), "test": np.repeat([0, 1, 3], 4)})
    (root / "classes.txt").write_text("cat\ndog\neel\nfox\ngnu\n")
    manifest, splits = read_arrays_folder(root)
    reliability("arrays data that cannot be right (labels, classes, dtypes, names, kinds): mapped, warned or refused", 3)
    assert manifest.classes == ["cat", "dog", "eel", "fox"]  # gnu has no sample anywhere: left out
    assert any("gnu" in w and "left out" in w for w in manifest.warnings)
    assert any("fox" in w and "none in train" in w for w in manifest.warnings)
    assert any("eel" in w and "no test samples" in w for w in manifest.warnings)
    assert splits["test"].labels.max() == 3
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c", "--strict")
    assert code == 2 and "(--strict)" in err and not (tmp_path / "c").exists()
    code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c")
    assert code == 0 and "warning:" in out and "none in train" in out
    # training on it says so too (the warnings travel in the manifest)
    code, out, err = run_cli(capsys, *TRAIN, "--set", f"dataset.root={tmp_path / 'c'}", "--set", "train.epochs=1",
                             "--out", tmp_path / "r")
    assert code == 0, err
    assert "none in train" in out


def test_carve_out_keeps_every_class_a_training_sample():
    """By hand: class 1 has a single sample, class 2 two; a 40% carve-out never takes a class's last training row."""
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    for seed in range(20):
        kept, carved = carve_validation(labels, 0.4, seed)
        assert set(labels[kept]) == {0, 1, 2}
        assert sorted(np.concatenate([kept, carved]).tolist()) == list(range(8))
    kept, carved = carve_validation(np.array([0, 1, 2, 3]), 0.5, 0)  # all singletons: nothing can be carved
    assert len(carved) == 0 and len(kept) == 4
    kept, carved = carve_validation(np.repeat([0, 1], 10), 0.2, 0)  # the stratified case is sklearn's, unchanged
    assert np.bincount(labels := np.repeat([0, 1], 10)[carved]).tolist() == [2, 2] and len(kept) == 16


def test_a_carve_out_that_would_take_a_class_only_sample_warns(capsys, tmp_path):
    root = _folder(tmp_path / "mine", {"train": np.array([0] * 12 + [1]), "test": np.array([0, 1] * 3)})
    manifest, splits = read_arrays_folder(root, val_fraction=0.3)
    assert 1 in splits["train"].labels and 1 not in splits["val"].labels
    assert any("single training sample" in w for w in manifest.warnings)
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c", "--strict")
    assert code == 2 and "single training sample" in err


# ------------------------------------------------------------------------------------------------ dtypes


def test_uint8_in_one_split_and_float_in_another_is_refused(capsys, tmp_path, reliability):
    """uint8 train was scaled by 1/255 and float32 test was not: val 1.000, test 0.333 without a word."""
    pixels = np.random.default_rng(1).integers(0, 255, (30, 1, 4, 4), dtype=np.uint8)
    root = _folder(tmp_path / "mine", {"train": np.arange(30) % 3, "test": np.arange(9) % 3},
                   img={"train": pixels, "test": pixels[:9].astype(np.float32)})
    done = bogc("prepare", "arrays", "--raw", root, "--out", tmp_path / "c")
    reliability("arrays data that cannot be right (labels, classes, dtypes, names, kinds): mapped, warned or refused")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "train/img.npy is uint8" in done.stderr and "test/img.npy is float32" in done.stderr
    code, _, err = run_cli(capsys, *TRAIN, "--set", f"dataset.root={root}", "--out", tmp_path / "r")  # read directly
    assert code == 2 and "scaled differently" in err


def test_float64_and_float32_splits_are_stored_as_float32_and_overflow_is_refused(tmp_path):
    x = np.random.default_rng(2).normal(size=(30, 5))
    root = _folder(tmp_path / "mine", {"train": np.arange(30) % 3, "test": np.arange(9) % 3},
                   x={"train": x, "test": x[:9].astype(np.float32)})
    manifest = PREPARERS["arrays"](raw=root, out=tmp_path / "c")
    assert manifest.modalities["x"].dtype == "float32"
    assert any("'x' has dtypes" in w for w in manifest.warnings)
    x[3, 2] = 1e39
    np.save(root / "train" / "x.npy", x)
    with pytest.raises(UserError, match=r"train/x\.npy holds values up to 1e\+39, beyond float32"):
        read_arrays_folder(root)


# ------------------------------------------------------------------------------------------------ names, kinds


@pytest.mark.parametrize("name", ["my feat", "2d", "keys", "float", "fused", "a.b"])
def test_modality_names_that_would_break_later_are_refused_at_prepare(capsys, tmp_path, name, reliability):
    root = _folder(tmp_path / "mine", {"train": np.arange(20) % 2, "test": np.arange(6) % 2},
                   **{name: {"train": np.ones((20, 3), np.float32), "test": np.ones((6, 3), np.float32)}})
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c")
    reliability("arrays data that cannot be right (labels, classes, dtypes, names, kinds): mapped, warned or refused")
    assert code == 2 and f"modality name {name!r} cannot be used" in err and "rename" in err


def test_npz_entry_names_are_checked_too_and_direct_training_never_reaches_torch(tmp_path):
    for split, n in (("train", 20), ("test", 6)):
        np.savez(tmp_path / f"{split}.npz", labels=np.arange(n) % 2, **{"keys": np.ones((n, 3), np.float32)})
    done = bogc(*TRAIN, "--set", f"dataset.root={tmp_path}", "--out", tmp_path / "r")
    assert done.returncode == 2 and "torch.nn.ModuleDict" in done.stderr and "Traceback" not in done.stderr


def test_prepare_takes_kinds_and_a_recipe_kind_is_honoured_or_refused(capsys, tmp_path, reliability):
    seq = np.random.default_rng(3).normal(size=(24, 10, 4)).astype(np.float32)
    root = _folder(tmp_path / "mine", {"train": np.arange(24) % 2, "test": np.arange(8) % 2},
                   audio={"train": seq, "test": seq[:8]})
    code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c",
                             "--kinds", "audio=sequence")
    assert code == 0, err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.modalities["audio"].kind == "sequence" and manifest.modalities["audio"].shape == [10, 4]
    assert manifest.params["kinds_given"] == {"audio": "sequence"}
    reliability("arrays data that cannot be right (labels, classes, dtypes, names, kinds): mapped, warned or refused", 3)
    # the recipe agrees: trains; the recipe disagrees: refused (it used to be ignored silently)
    code, _, err = run_cli(capsys, *TRAIN, "--set", f"dataset.root={tmp_path / 'c'}", "--set",
                           "dataset.kinds={audio: sequence}", "--set", "train.epochs=1", "--out", tmp_path / "r")
    assert code == 0, err
    code, _, err = run_cli(capsys, *TRAIN, "--set", f"dataset.root={tmp_path / 'c'}", "--set",
                           "dataset.kinds={audio: image}", "--out", tmp_path / "r2")
    assert code == 2 and "prepared with audio as sequence" in err and "--kinds audio=image" in err
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "dataset.kinds={audio: image}",
                           "--out", tmp_path / "r3")
    assert code == 2 and "dataset.kinds" in err and "arrays data only" in err
    # --kinds elsewhere, or malformed, is one message
    code, _, err = run_cli(capsys, "prepare", "mfeat", "--raw", root, "--out", tmp_path / "m", "--kinds", "a=vector")
    assert code == 2 and "--kinds is for `bogc prepare arrays`" in err
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "m", "--kinds", "audio")
    assert code == 2 and "modality=kind" in err


def test_empty_split_is_refused(capsys, tmp_path):
    root = _folder(tmp_path / "mine", {"train": np.arange(20) % 2, "test": np.zeros(0, np.int64)},
                   feat={"test": np.zeros((0, 6), np.float32)})
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c")
    assert code == 2 and "test/ has 0 samples" in err


# ------------------------------------------------------------------------------------------------ prepare's rule


def test_prepare_refuses_to_replace_another_cache_without_overwrite(capsys, tmp_path, reliability):
    root = _folder(tmp_path / "mine", {"train": np.arange(30) % 3, "test": np.arange(9) % 3},
                   extra={"train": np.ones((30, 2), np.float32), "test": np.ones((9, 2), np.float32)})
    out = tmp_path / "cache"
    assert run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", out)[0] == 0
    before = (out / "manifest.json").read_bytes()
    code, stdout, _ = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", out)
    assert code == 0 and "nothing to do" in stdout
    other = bogc("prepare", "arrays", "--raw", root, "--out", out, "--seed", "1")
    reliability("user work kept: prepare refused to replace a cache without --overwrite")
    assert other.returncode == 2 and "--overwrite" in other.stderr and "Traceback" not in other.stderr
    assert (out / "manifest.json").read_bytes() == before
    # --overwrite replaces it, and a modality the new cache lacks does not linger
    (root / "train" / "extra.npy").unlink()
    (root / "test" / "extra.npy").unlink()
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", out, "--seed", "1", "--overwrite")
    assert code == 0, err
    assert read_manifest(out).params["seed"] == 1 and not (out / "train" / "extra.npy").exists()
    # a folder an interrupted prepare left (no manifest) is not a cache to protect: prepare goes on
    (out / "manifest.json").unlink()
    assert run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", out)[0] == 0


def test_val_fraction_0_is_refused_with_the_reason(capsys, tmp_path):
    root = _folder(tmp_path / "mine", {"train": np.arange(30) % 3, "test": np.arange(9) % 3})
    done = bogc("prepare", "arrays", "--raw", root, "--out", tmp_path / "c", "--val-fraction", "0")
    assert done.returncode == 2 and "--val-fraction 0 would leave no validation split" in done.stderr
    assert "best epoch" in done.stderr and not (tmp_path / "c").exists()


def test_unwritable_out_is_refused_before_reading(capsys, tmp_path, monkeypatch):
    """A folder this user cannot write: refused before any array is read (as root, where every folder is writable,
    the permission check is what is simulated)."""
    import os

    from data_prep import _common

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(_common.os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    root = _folder(tmp_path / "mine", {"train": np.arange(30) % 3, "test": np.arange(9) % 3})
    code, _, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", locked / "c")
    locked.chmod(0o700)
    assert code == 2 and f"{locked} cannot be written by this user" in err and not (locked / "c").exists()
