"""mfeat preparation on the real UCI Multiple Features CSVs in ../shared/data/mfeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bogc_cli.data.cache import load_split
from bogc_cli.errors import UserError
from data_prep import PREPARERS
from data_prep.mfeat import DIMS, VIEWS, prepare

ALL_SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def mfeat_raw(shared_data) -> Path:
    return shared_data / "mfeat"


@pytest.fixture(scope="module")
def full(tmp_path_factory, mfeat_raw):
    out = tmp_path_factory.mktemp("mfeat") / "cache"
    manifest = prepare(mfeat_raw, out)
    return out, manifest, {s: load_split(out, manifest, s, mmap=False) for s in ALL_SPLITS}


def _csv(mfeat_raw: Path, view: str) -> np.ndarray:
    return np.loadtxt(mfeat_raw / f"mfeat-{view}.csv", delimiter=",", skiprows=1)


def test_split_sizes_kinds_and_shapes(full):
    _, manifest, data = full
    assert manifest.splits == {"train": 1200, "val": 400, "test": 400}
    assert manifest.class_counts["train"] == {str(d): 120 for d in range(10)}
    assert manifest.class_counts["test"] == {str(d): 40 for d in range(10)}
    assert manifest.preset is None
    for view in VIEWS:
        spec = manifest.modalities[view]
        assert (spec.kind, spec.shape, spec.dtype) == ("vector", [DIMS[view]], "float32")
        assert data["test"].inputs[view].shape == (400, DIMS[view])


def test_rows_are_disjoint_and_labels_follow_class_order(full):
    _, _, data = full
    rows = {s: np.array([int(i) for i in d.ids]) for s, d in data.items()}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(2000))
    for split, d in data.items():
        assert np.array_equal(d.labels, rows[split] // 200)


def test_standardised_with_train_statistics(full, mfeat_raw):
    _, _, data = full
    train_rows = np.array([int(i) for i in data["train"].ids])
    test_rows = np.array([int(i) for i in data["test"].ids])
    for view in VIEWS:
        train = data["train"].inputs[view].astype(np.float64)
        assert np.abs(train.mean(axis=0)).max() < 1e-4
        std = train.std(axis=0)
        assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))  # constant features stay 0
        raw = _csv(mfeat_raw, view)[:, :-1]
        mean, sd = raw[train_rows].mean(0), raw[train_rows].std(0)
        expected = (raw[test_rows] - mean) / np.where(sd > 0, sd, 1)
        np.testing.assert_allclose(data["test"].inputs[view], expected, rtol=1e-5, atol=1e-5)


def test_uci_whitespace_files_give_identical_arrays(full, mfeat_raw, tmp_path):
    _, manifest, data = full
    uci = tmp_path / "uci"
    uci.mkdir()
    for view in VIEWS:
        np.savetxt(uci / f"mfeat-{view}", _csv(mfeat_raw, view)[:, :-1], fmt="%.10g")
    other = prepare(uci, tmp_path / "out")
    assert other.splits == manifest.splits
    for split in ALL_SPLITS:
        again = load_split(tmp_path / "out", other, split)
        assert again.ids == data[split].ids and np.array_equal(again.labels, data[split].labels)
        for view in VIEWS:
            np.testing.assert_array_equal(again.inputs[view], data[split].inputs[view])


def test_rerun_is_a_no_op_and_seed_changes_split(full, mfeat_raw, tmp_path):
    out, manifest, data = full
    assert PREPARERS["mfeat"](raw=mfeat_raw, out=out).created == manifest.created
    reseeded = prepare(mfeat_raw, tmp_path / "seed1", seed=1)
    assert load_split(tmp_path / "seed1", reseeded, "test").ids != data["test"].ids


def test_preset_is_a_recipe_choice(mfeat_raw, tmp_path):
    with pytest.raises(UserError, match="dataset.preset"):
        prepare(mfeat_raw, tmp_path / "out", preset="weak3")


def test_missing_and_truncated_views_raise_user_errors(mfeat_raw, tmp_path):
    with pytest.raises(UserError, match="no mfeat files"):
        prepare(tmp_path, tmp_path / "out")
    raw = tmp_path / "raw"
    raw.mkdir()
    for view in VIEWS[:-1]:
        (raw / f"mfeat-{view}.csv").symlink_to(mfeat_raw / f"mfeat-{view}.csv")
    with pytest.raises(UserError, match="mfeat-mor.csv"):
        prepare(raw, tmp_path / "out")
    lines = (mfeat_raw / "mfeat-mor.csv").read_text().splitlines()
    (raw / "mfeat-mor.csv").write_text("\n".join(lines[:1500]) + "\n")
    with pytest.raises(UserError, match=r"mfeat-mor\.csv holds 1499 rows"):
        prepare(raw, tmp_path / "out")


def test_val_fraction_is_a_share_of_the_non_test_rows(mfeat_raw, tmp_path):
    manifest = prepare(mfeat_raw, tmp_path / "out", val_fraction=0.1)
    assert manifest.splits == {"train": 1440, "val": 160, "test": 400}


def test_openml_arff_copies_with_class_1_to_10_give_identical_arrays(full, mfeat_raw, tmp_path, reliability):
    """OpenML's mfeat-fourier.arff ... name the views in full and count classes 1-10 (class k is digit k-1)."""
    from data_prep.mfeat import OPENML_NAMES

    _, manifest, data = full
    openml = tmp_path / "openml" / "nested"
    openml.mkdir(parents=True)
    for view in VIEWS:
        table = _csv(mfeat_raw, view)
        attributes = "".join(f"@ATTRIBUTE att{i + 1} NUMERIC\n" for i in range(table.shape[1] - 1))
        rows = "".join(",".join(f"{x:.10g}" for x in row[:-1]) + f",{int(row[-1]) + 1}\n" for row in table)
        (openml / f"mfeat-{OPENML_NAMES[view]}.arff").write_text(
            f"@RELATION mfeat-{OPENML_NAMES[view]}\n{attributes}@ATTRIBUTE class {{1,2,3,4,5,6,7,8,9,10}}\n@DATA\n{rows}")
    other = prepare(tmp_path / "openml", tmp_path / "out")
    reliability("raw-data variants and misnamed samples given to prepare (read, or reported with the fix)")
    assert "OpenML" in other.params["labels_from"]
    for split in ALL_SPLITS:
        again = load_split(tmp_path / "out", other, split)
        assert again.ids == data[split].ids and np.array_equal(again.labels, data[split].labels)
        for view in VIEWS:
            np.testing.assert_allclose(again.inputs[view], data[split].inputs[view], rtol=1e-6, atol=1e-6)


def test_zip_not_extracted_lfs_pointers_and_val_fraction_0_are_refused(mfeat_raw, tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "mfeat.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="extract the archive first"):
        prepare(tmp_path / "z", tmp_path / "out")
    raw = tmp_path / "lfs"
    raw.mkdir()
    for view in VIEWS:
        (raw / f"mfeat-{view}.csv").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    with pytest.raises(UserError, match="mfeat-fou.csv is a Git LFS pointer"):
        prepare(raw, tmp_path / "out")
    with pytest.raises(UserError, match="--val-fraction 0 would leave no validation split"):
        prepare(mfeat_raw, tmp_path / "out", val_fraction=0)
