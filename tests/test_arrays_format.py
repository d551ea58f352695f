"""The `arrays` format: a user's own numpy arrays, read directly or prepared into a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bogc_cli.data.arrays import read_arrays_folder
from bogc_cli.data.cache import load_split, read_manifest
from bogc_cli.errors import UserError
from data_prep import PREPARERS

rng = np.random.default_rng(0)


def _save_split(root: Path, split: str, n: int, classes: int = 3, **arrays: np.ndarray) -> None:
    """Write ``<root>/<split>/{labels,image,feat}.npy`` (defaults), overridden/extended by ``arrays``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    default = {"labels": np.arange(n) % classes, "image": rng.integers(0, 255, (n, 1, 8, 8), dtype=np.uint8),
               "feat": rng.normal(size=(n, 5)).astype(np.float32)}
    for name, array in {**default, **arrays}.items():
        if array is not None:
            np.save(root / split / f"{name}.npy", array)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "mine"
    _save_split(root, "train", 60)
    _save_split(root, "test", 21)
    return root


def test_numpy_folder_in_two_lines(tmp_path):
    for split, n in (("train", 40), ("test", 10)):
        (tmp_path / split).mkdir()
        np.save(tmp_path / split / "x.npy", np.ones((n, 3), np.float32))
        np.save(tmp_path / split / "labels.npy", np.arange(n) % 2)
    manifest, splits = read_arrays_folder(tmp_path)
    assert manifest.splits == {"train": 36, "val": 4, "test": 10} and manifest.classes == ["0", "1"]
    assert manifest.modalities["x"].kind == "vector" and splits["test"].inputs["x"].shape == (10, 3)


def test_read_folder_kinds_carve_out_and_ids(folder):
    manifest, splits = read_arrays_folder(folder, val_fraction=0.2, seed=1)
    assert manifest.splits == {"train": 48, "val": 12, "test": 21}
    assert {m: s.kind for m, s in manifest.modalities.items()} == {"feat": "vector", "image": "image"}
    assert manifest.modalities["image"].dtype == "uint8" and manifest.params["val"] == "carved from train"
    assert np.bincount(splits["val"].labels).tolist() == [4, 4, 4]
    assert not set(splits["train"].ids) & set(splits["val"].ids)
    original = np.load(folder / "train" / "feat.npy")
    row = int(splits["val"].ids[0].split(":")[1])
    np.testing.assert_array_equal(splits["val"].inputs["feat"][0], original[row])
    assert read_arrays_folder(folder, val_fraction=0.2, seed=1)[1]["val"].ids == splits["val"].ids


def test_npz_variant_given_val_and_classes(tmp_path):
    for split, n in (("train", 30), ("val", 6), ("test", 9)):
        np.savez(tmp_path / f"{split}.npz", labels=np.arange(n) % 2, spec=rng.normal(size=(n, 16, 20)),
                 clip=rng.integers(0, 255, (n, 2, 3, 8, 8), dtype=np.uint8))
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    manifest, splits = read_arrays_folder(tmp_path)
    assert manifest.splits == {"train": 30, "val": 6, "test": 9} and manifest.params["val"] == "given"
    assert manifest.classes == ["cat", "dog"]
    assert manifest.modalities["spec"].kind == "audio" and manifest.modalities["spec"].shape == [1, 16, 20]
    assert manifest.modalities["clip"].kind == "video"
    assert splits["val"].inputs["spec"].shape == (6, 1, 16, 20)


def test_given_kind_overrides_inference(folder):
    manifest, _ = read_arrays_folder(folder, kinds={"image": "audio"})
    assert manifest.modalities["image"].kind == "audio"
    with pytest.raises(UserError, match="feat.npy has per-sample rank 1 but kind 'image'"):
        read_arrays_folder(folder, kinds={"feat": "image"})
    with pytest.raises(UserError, match="valid: audio, image, video, vector"):
        read_arrays_folder(folder, kinds={"feat": "tabular"})


def test_prepare_writes_a_cache_that_round_trips(folder, tmp_path):
    out = tmp_path / "cache"
    manifest = PREPARERS["arrays"](raw=folder, out=out, seed=2)
    assert read_manifest(out).splits == manifest.splits == {"train": 54, "val": 6, "test": 21}
    test = load_split(out, manifest, "test")
    np.testing.assert_array_equal(test.inputs["image"], np.load(folder / "test" / "image.npy"))
    assert PREPARERS["arrays"](raw=folder, out=out, seed=2).created == manifest.created
    with pytest.raises(UserError, match="no --preset"):
        PREPARERS["arrays"](raw=folder, out=out, preset="x")


# ------------------------------------------------------------------------------------------------
# every validation error names the file at fault


def test_mismatched_sample_counts(folder):
    np.save(folder / "test" / "feat.npy", np.zeros((20, 5), np.float32))
    with pytest.raises(UserError, match=r"test/feat\.npy has 20 samples but the labels have 21"):
        read_arrays_folder(folder)


def test_missing_labels(folder):
    (folder / "train" / "labels.npy").unlink()
    with pytest.raises(UserError, match=r"train/ has no labels: add labels\.npy"):
        read_arrays_folder(folder)


def test_missing_labels_in_npz(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 2)))
    np.savez(tmp_path / "test.npz", x=np.zeros((4, 2)), labels=np.zeros(4, int))
    with pytest.raises(UserError, match=r"train\.npz has no labels"):
        read_arrays_folder(tmp_path)


@pytest.mark.parametrize("labels", [np.arange(21) % 3 * 1.0, np.array(["cat", "dog", "eel"] * 7)])
def test_non_integer_labels(folder, labels):
    np.save(folder / "test" / "labels.npy", labels)
    with pytest.raises(UserError, match=r"test/labels\.npy has dtype .*must be integer class indices"):
        read_arrays_folder(folder)


def test_negative_or_out_of_range_labels(folder):
    (folder / "classes.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"train/ has label 2 but .*classes\.txt names only 2 classes"):
        read_arrays_folder(folder)
    np.save(folder / "train" / "labels.npy", np.arange(60) % 3 - 1)
    with pytest.raises(UserError, match=r"train/labels\.npy has negative labels"):
        read_arrays_folder(folder)


def test_modality_missing_in_one_split(folder):
    (folder / "test" / "image.npy").unlink()
    with pytest.raises(UserError, match=r"'image' is in the train split but missing from .*test/image\.npy"):
        read_arrays_folder(folder)


def test_shape_differs_between_splits(folder):
    np.save(folder / "test" / "feat.npy", np.zeros((21, 6), np.float32))
    with pytest.raises(UserError, match=r"test/feat\.npy has per-sample shape \[6\] but train has \[5\]"):
        read_arrays_folder(folder)


def test_missing_split_folder_and_nan(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty has no train or test split"):
        read_arrays_folder(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        read_arrays_folder(tmp_path / "nowhere")
    feat = np.load(folder / "train" / "feat.npy")
    feat[3, 1] = np.nan
    np.save(folder / "train" / "feat.npy", feat)
    with pytest.raises(UserError, match=r"train/feat\.npy contains NaN"):
        read_arrays_folder(folder)


def test_unsupported_rank_and_pickled_objects(folder):
    np.save(folder / "train" / "odd.npy", np.zeros((60, 1, 1, 1, 1, 1), np.float32))
    np.save(folder / "test" / "odd.npy", np.zeros((21, 1, 1, 1, 1, 1), np.float32))
    with pytest.raises(UserError, match=r"train/odd\.npy has per-sample rank 5"):
        read_arrays_folder(folder)
    np.save(folder / "train" / "odd.npy", np.array([{"a": 1}] * 60, dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"cannot read .*train/odd\.npy"):
        read_arrays_folder(folder)
