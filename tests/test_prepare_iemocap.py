"""IEMOCAP preparation from a small pickle in MulT's structure (train/valid/test of text [N, 20, 300],
audio [N, 20, 74], vision [N, 20, 35], labels [N, 4, 2]): MulT's four present/absent targets (default,
multilabel) and CGGM's 4-way class (preset 4class), the counts check, and refusals."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from bogc_cli.data.cache import load_split, read_manifest
from cli_helpers import run_bogc, run_cli
from data_prep.iemocap import EMOTIONS, emotion_targets

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 12, "valid": 4, "test": 5}


def _labels(present: list[list[int]]) -> np.ndarray:
    """Presence rows [N, 4] -> MulT's labels [N, 4, 2] (a one-hot (absent, present) pair per emotion)."""
    present = np.asarray(present)
    return np.stack([1 - present, present], axis=-1).astype(np.float32)


def _write_pickle(path: Path, labels_shape: tuple[int, ...] | None = None) -> dict:
    rng = np.random.default_rng(1)
    data = {}
    for split, n in SIZES.items():
        part = {m: rng.normal(size=(n, 20, d)).astype(np.float32) for m, d in (("text", 300), ("audio", 74),
                                                                                 ("vision", 35))}
        present = np.eye(4, dtype=int)[np.arange(n) % 4]  # one emotion per segment, as in the real pickle
        if split == "train":
            present[10] = [0, 1, 0, 1]  # happy and angry: two emotions
            present[11] = [0, 0, 0, 0]  # none
        part["labels"] = _labels(present.tolist()) if labels_shape is None else np.zeros((n, *labels_shape))
        part["vision"][0, 0, 0] = np.nan
        data[split] = part
    path.write_bytes(pickle.dumps(data))
    return data


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("iemocap_raw")
    return folder, _write_pickle(folder / "iemocap_data.pkl")


def test_targets_follow_mult_argmax_and_cggm_single_class():
    labels = _labels([[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]])
    labels[3, 2] = [0.2, 0.7]  # not one-hot: MulT's argmax still reads "present"
    multi, dropped = emotion_targets(labels, "multilabel")
    assert multi.tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]] and dropped == {}
    single, dropped = emotion_targets(labels, "4class")
    assert single[[0, 3]].tolist() == [0, 2]
    assert set(dropped) == {1, 2} and "happy, angry" in dropped[1] and "no emotion" in dropped[2]
    with pytest.raises(ValueError, match="MOSI/MOSEI"):
        emotion_targets(np.zeros((3, 1, 1), np.float32), "multilabel")


def test_multilabel_cache_and_counts_warning(capsys, tmp_path, raw):
    folder, data = raw
    code, out, err = run_cli(capsys, "prepare", "iemocap", "--raw", folder, "--out", tmp_path / "c")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.task == "multilabel" and manifest.classes == EMOTIONS and manifest.preset == "multilabel"
    assert manifest.splits == {"train": 12, "val": 4, "test": 5} and not manifest.skipped
    assert {m: (s.kind, s.shape) for m, s in manifest.modalities.items()} == {
        "text": ("sequence", [20, 300]), "audio": ("sequence", [20, 74]), "vision": ("sequence", [20, 35])}
    train = load_split(tmp_path / "c", manifest, "train")
    np.testing.assert_array_equal(train.labels, np.argmax(data["train"]["labels"], axis=-1))
    assert train.labels.dtype == np.uint8 and train.labels[10].tolist() == [0, 1, 0, 1]
    assert manifest.class_counts["train"] == {"neutral": 3, "happy": 4, "sad": 2, "angry": 3}
    assert train.inputs["vision"][0, 0, 0] == 0 and manifest.params["non_finite_replaced"]["vision"] == 3
    assert "not the published 2,717 / 798 / 938" in " ".join(out.split())


def test_4class_preset_leaves_out_ambiguous_segments(capsys, tmp_path, raw):
    folder, data = raw
    code, out, err = run_cli(capsys, "prepare", "iemocap", "--raw", folder / "iemocap_data.pkl", "--out",
                             tmp_path / "c", "--preset", "4class")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.task == "classification" and manifest.splits == {"train": 10, "val": 4, "test": 5}
    assert [s["file"] for s in manifest.skipped] == ["iemocap_data.pkl:train[10]", "iemocap_data.pkl:train[11]"]
    train = load_split(tmp_path / "c", manifest, "train")
    assert train.labels.tolist() == [k % 4 for k in range(10)]
    np.testing.assert_array_equal(train.inputs["audio"], data["train"]["audio"][:10])
    assert "train[11]" in out and "no emotion present" in out
    # counts are the pickle's segments, before the two left out: --strict still refuses the tiny pickle
    code, _, err = run_cli(capsys, "prepare", "iemocap", "--raw", folder, "--out", tmp_path / "s", "--strict")
    assert code == 2 and "train 12 / val 4 / test 5" in " ".join(err.split())


def test_wrong_pickles_refused_both_ways(capsys, tmp_path):
    _write_pickle(tmp_path / "iemocap_data.pkl", labels_shape=(1, 1))  # a sentiment pickle under IEMOCAP's name
    code, _, err = run_cli(capsys, "prepare", "iemocap", "--raw", tmp_path, "--out", tmp_path / "c")
    assert code == 2 and "[N, 4, 2]" in " ".join(err.split())
    (tmp_path / "e").mkdir()
    _write_pickle(tmp_path / "e" / "mosei_senti_data.pkl")  # IEMOCAP's labels given to mosei
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", tmp_path / "e", "--out", tmp_path / "m")
    assert code == 2 and "bogc prepare iemocap" in " ".join(err.split())
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()


def test_missing_pickle_through_the_real_entry_point(tmp_path):
    proc = run_bogc("prepare", "iemocap", "--raw", tmp_path, "--out", tmp_path / "c", timeout=300)
    assert proc.returncode == 2 and "iemocap_data.pkl" in proc.stderr and "Traceback" not in proc.stderr


def test_one_epoch_of_uniform_on_the_multilabel_cache(capsys, tmp_path, raw):
    """The shipped recipe (tiny transformers, one epoch) on MulT's four present/absent targets."""
    folder, _ = raw
    from data_prep.iemocap import prepare

    prepare(folder, tmp_path / "c")
    code, out, err = run_cli(capsys, "train", ROOT / "recipes/iemocap/uniform.yaml", "--seeds", "0", "--out",
                             tmp_path / "r", "--set", f"dataset.root={tmp_path / 'c'}", "--set", "train.epochs=1",
                             "--set", "train.batch_size=6", "--set", "model.hidden_dim=32", "--set",
                             "model.mlp_layers=1", "--set", "model.feature_dim=16")
    assert code == 0, out + err
    ev = json.loads((tmp_path / "r/iemocap/iemocap/uniform/seed0/eval.json").read_text())
    assert ev["task"] == "multilabel" and ev["select_metric"] == "micro_f1" and ev["n"] == 5
    assert set(ev["unimodal_micro_f1"]) == {"text", "audio", "vision"}


def test_one_epoch_of_cggm_on_the_4class_cache(tmp_path, raw, capsys):
    """CGGM's recipe on its target form (classification); on the multilabel cache its task check refuses it."""
    folder, _ = raw
    from data_prep.iemocap import prepare

    prepare(folder, tmp_path / "c4", preset="4class")
    tiny = ["--set", "train.epochs=1", "--set", "train.batch_size=5", "--set", "model.hidden_dim=32", "--set",
            "model.mlp_layers=1", "--set", "model.feature_dim=16"]
    code, out, err = run_cli(capsys, "train", ROOT / "recipes/iemocap/cggm.yaml", "--seeds", "0", "--out",
                             tmp_path / "r", "--set", f"dataset.root={tmp_path / 'c4'}", *tiny)
    assert code == 0, out + err
    ev = json.loads((tmp_path / "r/iemocap/iemocap-4class/cggm/seed0/eval.json").read_text())
    assert ev["task"] == "classification" and ev["n"] == 5 and 0 <= ev["accuracy"] <= 1
    prepare(folder, tmp_path / "cm")
    code, out, err = run_cli(capsys, "train", ROOT / "recipes/iemocap/cggm.yaml", "--seeds", "0", "--out",
                             tmp_path / "r2", "--set", f"dataset.root={tmp_path / 'cm'}", *tiny)
    assert code == 2 and "multilabel" in err and not (tmp_path / "r2" / "iemocap").exists()
