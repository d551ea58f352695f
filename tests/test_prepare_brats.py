"""BraTS grade preparation on small volumes written with nibabel in the real BraTS 2019 folder layout."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bogc_cli.data.cache import load_split, read_manifest
from cli_helpers import run_cli
from data_prep import brats_grade
from bogc_cli.errors import UserError
from data_prep.brats_grade import SEQUENCES, prepare

SHAPE = (48, 40, 20)
TUMOUR_SLICE = {"HGG": 12, "LGG": 6}


def _patient(root: Path, grade: str, pid: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder = root / grade / pid
    folder.mkdir(parents=True)
    brain = np.zeros(SHAPE, bool)
    brain[6:42, 5:35, 2:18] = True
    seg = np.zeros(SHAPE, np.uint8)
    z = TUMOUR_SLICE[grade]
    seg[15:30, 12:26, z - 2:z + 3] = 2
    seg[12:33, 10:28, z] = 4  # the largest cross-section is at slice z
    for k, seq in enumerate(SEQUENCES):
        vol = np.where(brain, rng.normal(100 + 20 * k, 15, SHAPE), 0).astype(np.float32)
        vol[seg > 0] += 60
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{pid}_{seq}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{pid}_seg.nii.gz"))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats") / "MICCAI_BraTS_2019_Data_Training"
    for i in range(6):
        _patient(root, "HGG", f"BraTS19_TCIA_{i:03d}_1", i)
    for i in range(5):
        _patient(root, "LGG", f"BraTS19_LGG_{i:03d}_1", 100 + i)
    # a truncated .nii.gz and a patient without t2: both skipped, never a crash
    bad = root / "HGG" / "BraTS19_TCIA_000_1" / "BraTS19_TCIA_000_1_flair.nii.gz"
    bad.write_bytes(bad.read_bytes()[:300])
    (root / "LGG" / "BraTS19_LGG_004_1" / "BraTS19_LGG_004_1_t2.nii.gz").unlink()
    return root.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory, raw) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("brats_cache") / "c"
    log: list[str] = []
    prepare(raw, out, log=log.append)
    return out, log


def test_slices2d_shapes_labels_and_skips(cache, reliability):
    out, log = cache
    manifest = read_manifest(out)
    assert manifest.classes == ["LGG", "HGG"]
    assert {m: (s.kind, s.shape, s.dtype) for m, s in manifest.modalities.items()} == {
        seq: ("image", [3, 128, 128], "float16") for seq in SEQUENCES}
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    assert reasons.keys() == {"BraTS19_TCIA_000_1", "BraTS19_LGG_004_1"}
    reliability("unusable media files given to prepare (skipped with a reason, the rest written)", len(reasons))
    assert "unreadable BraTS19_TCIA_000_1_flair.nii.gz" in reasons["BraTS19_TCIA_000_1"]
    assert reasons["BraTS19_LGG_004_1"] == "missing BraTS19_LGG_004_1_t2.nii.gz"
    assert sum(manifest.splits.values()) == 9
    assert any("not the published 259 + 76" in line for line in log)
    for split in manifest.splits:
        data = load_split(out, manifest, split)
        for pid, label in zip(data.ids, data.labels):
            assert manifest.classes[label] == ("LGG" if "_LGG_" in pid else "HGG")


def test_the_chosen_slices_equal_a_hand_computation(cache, raw):
    out, _ = cache
    manifest = read_manifest(out)
    rows = {pid: (split, row) for split in manifest.splits
            for row, pid in enumerate(load_split(out, manifest, split).ids)}
    pid = "BraTS19_TCIA_001_1"
    split, row = rows[pid]
    vol = nib.load(str(raw / "MICCAI_BraTS_2019_Data_Training" / "HGG" / pid / f"{pid}_t1ce.nii.gz")).get_fdata()
    brain = vol != 0
    z = np.where(brain, (vol - vol[brain].mean()) / vol[brain].std(), 0).astype(np.float32)
    centre = TUMOUR_SLICE["HGG"]
    slices = torch.from_numpy(np.ascontiguousarray(z[:, :, centre - 1:centre + 2].transpose(2, 0, 1)))[None]
    expected = torch.nn.functional.interpolate(slices, size=(128, 128), mode="bilinear", antialias=True)[0].numpy()
    cached = np.load(out / split / "t1ce.npy")[row].astype(np.float32)
    np.testing.assert_allclose(cached, expected, atol=1e-2, rtol=1e-2)


def test_patient_level_split_is_disjoint_and_seeded(tmp_path, raw, cache):
    out, _ = cache
    manifest = read_manifest(out)
    ids = {s: load_split(out, manifest, s).ids for s in manifest.splits}
    assert set(manifest.splits) == {"train", "val", "test"}
    all_ids = [i for split_ids in ids.values() for i in split_ids]
    assert len(all_ids) == len(set(all_ids))
    again = tmp_path / "again"
    prepare(raw, again)
    assert {s: load_split(again, manifest, s).ids for s in manifest.splits} == ids
    other = tmp_path / "other"
    other_manifest = prepare(raw, other, seed=5)
    assert {s: load_split(other, other_manifest, s).ids for s in other_manifest.splits} != ids


def test_vol3d_and_strict_through_the_cli(capsys, tmp_path, raw):
    code, out, err = run_cli(capsys, "prepare", "brats_grade", "--raw", raw, "--out", tmp_path / "v",
                             "--preset", "vol3d", "--workers", "2")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "v")
    assert manifest.modalities["flair"].kind == "video" and manifest.modalities["flair"].shape == [64, 1, 64, 64]
    assert "BraTS19_TCIA_000_1" in out
    code, _, err = run_cli(capsys, "prepare", "brats_grade", "--raw", raw, "--out", tmp_path / "s", "--strict")
    assert code == 2 and "259 + 76" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "prepare", "brats_grade", "--raw", tmp_path / "v", "--out", tmp_path / "x")
    assert code == 2 and "HGG" in err


def test_resume_and_nothing_to_do(tmp_path, raw, monkeypatch):
    out = tmp_path / "c"
    real = brats_grade.decode_patient
    calls: list[str] = []

    def die_after_four(item):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(item.key)
        return real(item)

    monkeypatch.setattr(brats_grade, "decode_patient", die_after_four)
    with pytest.raises(KeyboardInterrupt):
        prepare(raw, out)
    monkeypatch.setattr(brats_grade, "decode_patient", real)
    log: list[str] = []
    prepare(raw, out, log=log.append)
    assert any("resuming: 4 patients already done" in line for line in log)
    log.clear()
    prepare(raw, out, log=log.append)
    assert any("nothing to do" in line for line in log)


def test_a_short_training_run(capsys, tmp_path, cache):
    out, _ = cache
    code, stdout, err = run_cli(capsys, "train", "recipes/brats_grade/joint.yaml", "--seeds", "0",
                                "--set", f"dataset.root={out}", "--set", "train.epochs=1", "--set", "train.batch_size=4",
                                "--set", "model.encoders=cnn-small", "--set", "model.cnn_channels=[8,8,8]",
                                "--out", tmp_path / "r")
    assert code == 0, stdout + err
    result = json.loads(next((tmp_path / "r").rglob("eval.json")).read_text())
    assert result["n"] == read_manifest(out).splits["test"]


# ------------------------------------------------------------------------------------------------
# the other years' layouts (BraTS 2020 official and Kaggle, 2021, 2023) and what is reported


def _flat_patient(root: Path, pid: str, grade: str, seed: int, suffix: str = ".nii.gz", names=None,
                  shape=SHAPE) -> None:
    """A patient folder of a flat layout; ``names`` maps sequence -> file name (default ``<pid>_<seq><suffix>``)."""
    rng = np.random.default_rng(seed)
    folder = root / pid
    folder.mkdir(parents=True)
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 2:-2] = True
    for seq in (*SEQUENCES, "seg"):
        vol = (np.where(brain, rng.normal(100, 15, shape), 0) if seq != "seg" else brain * 2).astype(np.float32)
        name = (names or {}).get(seq, f"{pid}_{seq}{suffix}")
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / name))


def test_brats2020_kaggle_flat_nii_with_name_mapping_and_the_misnamed_segmentation(tmp_path, reliability):
    """Kaggle's BraTS 2020: BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/*.nii, grades
    in name_mapping.csv, and patient 355's segmentation named W39_1998.09.19_Segm.nii."""
    root = tmp_path / "kaggle" / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    grades = {f"BraTS20_Training_{i:03d}": "HGG" if i % 2 else "LGG" for i in range(350, 362)}
    for i, (pid, grade) in enumerate(grades.items()):
        names = {"seg": "W39_1998.09.19_Segm.nii"} if pid.endswith("355") else None
        _flat_patient(root, pid, grade, i, suffix=".nii", names=names)
    rows = "".join(f"{g},Brats18_x_{pid[-3:]},{pid}\n" for pid, g in grades.items() if not pid.endswith("361"))
    (root / "name_mapping.csv").write_text("Grade,BraTS_2018_subject_ID,BraTS_2020_subject_ID\n" + rows)
    (root / "survival_info.csv").write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\n")
    log: list[str] = []
    manifest = prepare(tmp_path / "kaggle", tmp_path / "out", log=log.append)
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    reliability("raw-data variants and misnamed samples given to prepare (read, or reported with the fix)", 2)
    assert set(reasons) == {"BraTS20_Training_355", "BraTS20_Training_361"}
    assert "W39_1998.09.19_Segm.nii does not follow its siblings'" in reasons["BraTS20_Training_355"]
    assert "BraTS20_Training_355_seg.nii" in reasons["BraTS20_Training_355"]  # the rename that fixes it
    assert reasons["BraTS20_Training_361"] == "no grade for BraTS20_Training_361 in name_mapping.csv"
    assert sum(manifest.splits.values()) == 10
    assert manifest.sources["year"] == 2020 and "name_mapping.csv" in manifest.sources["layout"]
    assert any("not the published 293 + 76 of BraTS 2020" in line for line in log)
    for split in manifest.splits:
        data = load_split(tmp_path / "out", manifest, split)
        for pid, label in zip(data.ids, data.labels):
            assert manifest.classes[label] == grades[pid]


def test_brats2021_without_grades_is_refused_and_a_grade_table_makes_it_work(capsys, tmp_path):
    root = tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021"
    for i in range(8):
        _flat_patient(root, f"BraTS2021_{i:05d}", "", i)
    code, _, err = run_cli(capsys, "prepare", "brats_grade", "--raw", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "publish no grade" in err and "Grade column" in err
    assert not (tmp_path / "o").exists()
    (root / "grades.csv").write_text("ID,Grade\n" + "".join(f"BraTS2021_{i:05d},{'HGG' if i < 5 else 'LGG'}\n"
                                                             for i in range(8)))
    code, out, err = run_cli(capsys, "prepare", "brats_grade", "--raw", tmp_path, "--out", tmp_path / "o")
    assert code == 0, out + err
    assert sum(read_manifest(tmp_path / "o").splits.values()) == 8


def test_brats2023_sequence_names_and_a_patient_of_another_shape(tmp_path):
    """2023 names t1n/t1c/t2w/t2f with hyphens; one patient's volumes have another shape: kept, with a warning."""
    root = tmp_path / "raw"
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    for i in range(6):
        pid = f"BraTS-GLI-{i:05d}-000"
        _flat_patient(root, pid, "", i, names={s: f"{pid}-{n}.nii.gz" for s, n in names.items()},
                      shape=(40, 40, 16) if i == 3 else SHAPE)
    (root / "labels.csv").write_text("subject,grade\n" + "".join(f"BraTS-GLI-{i:05d}-000,{'hgg' if i % 2 else 'lgg'}\n"
                                                                 for i in range(6)))
    manifest = prepare(root, tmp_path / "out", preset="vol3d")
    assert sum(manifest.splits.values()) == 6 and not manifest.skipped
    assert [w for w in manifest.warnings if "BraTS-GLI-00003-000" in w and "(40, 40, 16) differs" in w]


def test_lfs_pointer_volumes_are_named_as_such(tmp_path, raw):
    import shutil

    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    for path in root.rglob("*.nii.gz"):
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 4021\n")
    with pytest.raises(UserError, match="Git LFS pointer files, not images: run `git lfs pull`"):
        prepare(root, tmp_path / "out")
