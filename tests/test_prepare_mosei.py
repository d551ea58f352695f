"""MOSEI/MOSI preparation from a small pickle in the real aligned (MulT) format, and the transformer encoder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import load_split, read_manifest
from bogc_cli.models.encoders import SequenceTransformer
from cli_helpers import run_bogc, run_cli

SIZES = {"train": 40, "valid": 10, "test": 12}


def _write_pickle(path: Path, dims=(300, 74, 35), drop: str | None = None) -> dict:
    """A MulT-format pickle: per split text/audio/vision [N, 50, D], labels [N, 1, 1], id [N, 3] strings."""
    rng = np.random.default_rng(0)
    data = {}
    for split, n in SIZES.items():
        part = {m: rng.normal(size=(n, 50, d)).astype(np.float32) for m, d in zip(("text", "audio", "vision"), dims)}
        part["text"][:, :10] = 0  # left padding of short utterances, as in the real file
        part["audio"][0, 3, :2] = -np.inf  # the real MOSEI audio has -inf entries
        sentiment = rng.uniform(-3, 3, size=n).astype(np.float32)
        sentiment[:3] = [-0.4, 0.0, 2.6]
        part["labels"] = sentiment.reshape(n, 1, 1)
        part["id"] = np.array([[f"vid{split}{i}", str(i), str(i + 1)] for i in range(n)])
        data[split] = part
    if drop:
        del data["test"][drop]
    path.write_bytes(pickle.dumps(data))
    return data


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("mosei_raw")
    return folder, _write_pickle(folder / "mosei_senti_data.pkl")


def test_acc2_cache_shapes_labels_and_splits(capsys, tmp_path, raw):
    folder, data = raw
    code, out, err = run_cli(capsys, "prepare", "mosei", "--raw", folder, "--out", tmp_path / "c")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.splits == {"train": 40, "val": 10, "test": 12}
    assert {m: (s.kind, s.shape) for m, s in manifest.modalities.items()} == {
        "text": ("sequence", [50, 300]), "audio": ("sequence", [50, 74]), "vision": ("sequence", [50, 35])}
    assert manifest.classes == ["negative", "non-negative"]
    train = load_split(tmp_path / "c", manifest, "train")
    sentiment = data["train"]["labels"][:, 0, 0]
    np.testing.assert_array_equal(train.labels, (sentiment >= 0).astype(int))
    assert train.labels[:3].tolist() == [0, 1, 1]  # -0.4, 0.0 (non-negative), 2.6
    assert train.ids[0] == "vidtrain0|0|1"
    assert manifest.params["non_finite_replaced"]["audio"] == 2 * 3  # two -inf per split
    assert np.isfinite(np.asarray(train.inputs["audio"])).all() and train.inputs["audio"][0, 3, 0] == 0
    np.testing.assert_array_equal(train.inputs["text"], data["train"]["text"])
    assert "not the published 16,326 / 1,871 / 4,659" in out


def test_acc7_rounds_and_clips(tmp_path, raw):
    from data_prep.mosei import labels_for, prepare

    folder, data = raw
    manifest = prepare(folder / "mosei_senti_data.pkl", tmp_path / "c7", preset="acc7")
    assert manifest.classes == ["-3", "-2", "-1", "0", "1", "2", "3"]
    assert labels_for(np.array([-3.4, -0.4, 0.0, 0.6, 2.6]), "acc7").tolist() == [0, 3, 3, 4, 6]
    test = load_split(tmp_path / "c7", manifest, "test")
    expected = np.round(np.clip(data["test"]["labels"][:, 0, 0], -3, 3)).astype(int) + 3
    np.testing.assert_array_equal(test.labels, expected)


def test_bad_inputs_exit_2_with_one_message(capsys, tmp_path, raw):
    folder, _ = raw
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "mosei_senti_data.pkl" in err and "Traceback" not in err
    broken = tmp_path / "b"
    broken.mkdir()
    _write_pickle(broken / "mosei_senti_data.pkl", drop="vision")
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", broken, "--out", tmp_path / "o")
    assert code == 2 and "'test' lacks vision" in err
    not_pickle = tmp_path / "np"
    not_pickle.mkdir()
    (not_pickle / "mosei_senti_data.pkl").write_text("hello")
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", not_pickle, "--out", tmp_path / "o")
    assert code == 2 and "not a readable pickle" in err
    code, _, err = run_cli(capsys, "prepare", "mosi", "--raw", folder / "mosei_senti_data.pkl", "--out", tmp_path / "o")
    assert code == 2 and "74 features per step, not 5" in err
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", folder, "--out", tmp_path / "o", "--strict")
    assert code == 2 and "16,326" in err
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", folder, "--out", tmp_path / "o", "--val-fraction", "0.1")
    assert code == 2 and "valid" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_mosi_dims(tmp_path):
    from data_prep.mosi import prepare

    _write_pickle(tmp_path / "mosi_data.pkl", dims=(300, 5, 20))
    manifest = prepare(tmp_path, tmp_path / "c")
    assert manifest.dataset == "mosi" and manifest.modalities["vision"].shape == [50, 20]


def test_mosi_regression_preset_prepares_and_trains_one_epoch(capsys, tmp_path):
    """Preset regression keeps the continuous sentiment (task regression); CGGM's MOSI recipe trains on it one
    epoch, and eval.json's metrics are those of the best checkpoint's test predictions."""
    import pandas as pd

    from bogc_cli.engine.evaluate import predict
    from bogc_cli.engine.inference import load_run

    data = _write_pickle(tmp_path / "mosi_data.pkl", dims=(300, 5, 20))
    code, out, err = run_cli(capsys, "prepare", "mosi", "--raw", tmp_path, "--out", tmp_path / "c", "--preset",
                             "regression")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.task == "regression" and manifest.classes == ["sentiment"] and manifest.preset == "regression"
    test = load_split(tmp_path / "c", manifest, "test")
    assert test.labels.dtype == np.float32
    np.testing.assert_array_equal(test.labels, data["test"]["labels"][:, 0, 0])
    done = run_bogc("train", "recipes/mosi/cggm-regression.yaml", "--seeds", "0", "--set",
                    f"dataset.root={tmp_path / 'c'}", "--set", "train.epochs=1", "--set", "train.batch_size=16",
                    "--set", "model.hidden_dim=32", "--set", "model.mlp_layers=1", "--set", "model.feature_dim=8",
                    "--set", "train.conflict_every=0", "--out", tmp_path / "r", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "selected on validation mae" in " ".join(done.stdout.split())
    run = next((tmp_path / "r").rglob("eval.json")).parent
    ev = json.loads((run / "eval.json").read_text())
    assert ev["task"] == "regression" and ev["select_metric"] == "mae" and ev["n"] == 12
    loaded = load_run(run, device="cpu")
    p = predict(loaded.model, loaded.loader("test"), loaded.device, loaded.autocast)
    y, yhat = p.labels, p.fused[:, 0]
    assert p.fused.shape == (12, 1)  # one output
    assert ev["mae"] == pytest.approx(float(np.abs(yhat - y).mean()), abs=1e-6)
    assert ev["acc2_has0"] == pytest.approx(float(((yhat >= 0) == (y >= 0)).mean()))
    nonzero = y != 0
    assert ev["acc2_non0"] == pytest.approx(float(((yhat[nonzero] > 0) == (y[nonzero] > 0)).mean()))
    assert ev["acc7"] == pytest.approx(float((np.round(np.clip(yhat, -3, 3)) == np.round(np.clip(y, -3, 3))).mean()))
    assert ev["corr"] == pytest.approx(float(np.corrcoef(yhat, y)[0, 1]), abs=1e-6)
    assert {"method.cggm.coeff.text", "val_mae"} <= set(json.loads((run / "metrics.jsonl").read_text().splitlines()[0]))
    assert ev["calibration"] == {"not_applicable": "regression run: ECE, NLL and Brier score read a softmax over "
                                 "classes"}
    shapley = ev["contribution"]  # regression's value functions: v = -MAE and the sign accuracy
    assert shapley["negative_absolute_error"]["full"] == pytest.approx(-ev["mae"], abs=1e-6)
    assert shapley["sign_accuracy"]["full"] == pytest.approx(ev["acc2_has0"])
    assert sum(shapley["sign_accuracy"]["shapley"].values()) == pytest.approx(
        shapley["sign_accuracy"]["full"] - shapley["sign_accuracy"]["empty"])
    # eval, missing-modality and report show the regression metrics; the curve is of the selection metric (MAE)
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0 and "MAE (selection metric)" in out and "Acc-7" in out, out + err
    code, out, err = run_cli(capsys, "missing-modality", run, "--rates", "0,1", "--modalities", "text")
    assert code == 0 and "missing-modality mae" in " ".join(out.split()), out + err
    rows = pd.read_csv(run / "missing_modality.csv")
    assert set(rows["metric"]) == {"mae"} and rows.loc[rows["rate"] == 0, "score"].iloc[0] == pytest.approx(ev["mae"])
    code, out, err = run_cli(capsys, "report", tmp_path / "r")
    text = " ".join(out.split())
    assert code == 0 and "Test MAE (lower is better)" in text and "Test Acc-2 (neg/pos, non-zero)" in text
    assert "AUC: area under mae" in text


def test_transformer_ignores_padding_steps():
    torch.manual_seed(0)
    encoder = SequenceTransformer(steps=50, in_dim=8, feature_dim=16).eval()
    x = torch.randn(4, 40, 8)
    padded = torch.cat([x, torch.zeros(4, 10, 8)], dim=1)
    with torch.no_grad():
        assert encoder(padded).shape == (4, 16)
        torch.testing.assert_close(encoder(padded), encoder(x))
        assert not torch.allclose(encoder(padded), encoder(torch.cat([x, torch.ones(4, 10, 8)], dim=1)))


def test_a_short_training_run_with_the_transformer(capsys, tmp_path, raw):
    folder, _ = raw
    cache = tmp_path / "c"
    run_cli(capsys, "prepare", "mosei", "--raw", folder, "--out", cache)
    code, out, err = run_cli(capsys, "train", "recipes/mosei/bogc.yaml", "--seeds", "0", "--set", f"dataset.root={cache}",
                             "--set", "train.epochs=2", "--set", "train.batch_size=16", "--out", tmp_path / "r")
    assert code == 0, out + err
    result = json.loads(next((tmp_path / "r").rglob("eval.json")).read_text())
    assert result["n"] == 12 and 0 <= result["accuracy"] <= 1


# ------------------------------------------------------------------------------------------------
# the pickles researchers actually have: MulT unaligned, MMSA (Self-MM, MMIM), and broken ones


def _mmsa_pickle(path: Path, dims=(768, 5, 20), lengths=(50, 50, 50), sizes=SIZES) -> dict:
    """An MMSA-format pickle: text (BERT features), audio, vision, regression_labels [N], id strings, and the extra
    keys MMSA stores (raw_text, text_bert token ids, lengths)."""
    rng = np.random.default_rng(1)
    data = {}
    for split, n in sizes.items():
        part = {m: rng.normal(size=(n, t, d)).astype(np.float32) for m, t, d in zip(("text", "audio", "vision"),
                                                                                   lengths, dims)}
        part["regression_labels"] = rng.uniform(-3, 3, size=n).astype(np.float32)
        part["classification_labels"] = np.zeros(n)
        part["text_bert"] = np.zeros((n, 3, 50), np.float32)
        part["raw_text"] = np.array(["a sentence"] * n)
        part["audio_lengths"] = [lengths[1]] * n
        part["id"] = np.array([f"vid{i}$_${i}" for i in range(n)])
        data[split] = part
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return data


def test_mmsa_unaligned_pickle_in_its_folder(tmp_path, reliability):
    from data_prep.mosi import prepare

    data = _mmsa_pickle(tmp_path / "MMSA-Standard" / "MOSI" / "Processed" / "unaligned_50.pkl",
                        lengths=(50, 375, 500))
    log: list[str] = []
    manifest = prepare(tmp_path / "MMSA-Standard", tmp_path / "c", log=log.append)
    reliability("raw-data variants and misnamed samples given to prepare (read, or reported with the fix)")
    assert {m: s.shape for m, s in manifest.modalities.items()} == {
        "text": [50, 768], "audio": [375, 5], "vision": [500, 20]}
    assert manifest.params["aligned"] is False and manifest.params["text_features"] == 768
    train = load_split(tmp_path / "c", manifest, "train")
    np.testing.assert_array_equal(train.labels, (data["train"]["regression_labels"] >= 0).astype(int))
    assert train.ids[1] == "vid1$_$1"


def test_mult_unaligned_pickle_with_visual_key(tmp_path):
    from data_prep.mosei import prepare

    data = _mmsa_pickle(tmp_path / "x.pkl", dims=(300, 74, 35), lengths=(50, 500, 500))
    for part in data.values():
        part["visual"] = part.pop("vision")
        part["labels"] = part.pop("regression_labels").reshape(-1, 1, 1)
    (tmp_path / "mosei_senti_data_noalign.pkl").write_bytes(pickle.dumps(data))
    (tmp_path / "x.pkl").unlink()
    manifest = prepare(tmp_path, tmp_path / "c")
    assert manifest.modalities["vision"].shape == [500, 35] and manifest.sources["pickle"] == "mosei_senti_data_noalign.pkl"


def test_lengths_differing_between_splits_an_empty_split_and_an_lfs_pointer_exit_2(capsys, tmp_path):
    data = _mmsa_pickle(tmp_path / "a" / "aligned_50.pkl", dims=(300, 74, 35))
    data["test"]["audio"] = data["test"]["audio"][:, :40]
    (tmp_path / "a" / "aligned_50.pkl").write_bytes(pickle.dumps(data))
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", tmp_path / "a", "--out", tmp_path / "o")
    assert code == 2 and "audio sequences have" in err and "'test': 40" in err
    _mmsa_pickle(tmp_path / "b" / "aligned_50.pkl", dims=(300, 74, 35), sizes={"train": 8, "valid": 0, "test": 4})
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", tmp_path / "b", "--out", tmp_path / "o")
    assert code == 2 and "no usable sample is left in the val split" in err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mosei_senti_data.pkl").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "1" * 64 + "\nsize 3600000000\n")
    code, _, err = run_cli(capsys, "prepare", "mosei", "--raw", tmp_path / "c", "--out", tmp_path / "o")
    assert code == 2 and "Git LFS pointer" in err and "git lfs pull" in err
    assert not (tmp_path / "o").exists()
