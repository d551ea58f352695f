"""avdigits preparation on the real FSDD + MNIST in ../shared/data."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchvision

from bogc_cli.data.cache import load_split, read_manifest
from bogc_cli.errors import UserError
from data_prep import PREPARERS
from data_prep.avdigits import prepare


@pytest.fixture(scope="module")
def full(tmp_path_factory, shared_data) -> tuple[Path, object]:
    """The full avdigits cache (3000 wavs), prepared once for this module (a few seconds)."""
    out = tmp_path_factory.mktemp("avdigits") / "cache"
    return out, prepare(shared_data, out)


@pytest.fixture(scope="module")
def mnist(shared_data) -> dict[str, torchvision.datasets.MNIST]:
    root = str(shared_data / "mnist")
    return {"mnist_train": torchvision.datasets.MNIST(root, train=True, download=False),
            "mnist_test": torchvision.datasets.MNIST(root, train=False, download=False)}


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory, shared_data) -> Path:
    """A raw tree of one speaker's 500 FSDD wavs (symlinks), a garbage wav, a misnamed wav, and mnist/."""
    raw = tmp_path_factory.mktemp("raw_small")
    rec = raw / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for wav in (shared_data / "fsdd" / "recordings").glob("*_jackson_*.wav"):
        (rec / wav.name).symlink_to(wav)
    (rec / "7_broken_12.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    (rec / "notes.wav").symlink_to(shared_data / "fsdd" / "recordings" / "0_george_0.wav")
    (raw / "mnist").symlink_to(shared_data / "mnist")
    return raw


def _wav_name(sample_id: str) -> str:
    return sample_id.split("|")[0]


def test_shapes_dtypes_and_split_sizes(full):
    root, manifest = full
    assert manifest.splits == {"train": 2430, "val": 270, "test": 300}
    assert manifest.preset == "logmel-64" and manifest.classes == [str(d) for d in range(10)]
    assert {m: s.kind for m, s in manifest.modalities.items()} == {"audio": "audio", "image": "image"}
    assert manifest.skipped == [] and "count_check" not in manifest.sources
    for split, n in manifest.splits.items():
        data = load_split(root, manifest, split)
        assert data.inputs["audio"].shape == (n, 1, 64, 101) and data.inputs["audio"].dtype == np.float16
        assert data.inputs["image"].shape == (n, 1, 28, 28) and data.inputs["image"].dtype == np.uint8
        assert data.labels.dtype == np.int64 and len(data.ids) == n
    assert read_manifest(root).splits == manifest.splits


def test_labels_match_wav_names_and_mnist_images(full, mnist):
    root, manifest = full
    for split in ("train", "val", "test"):
        data = load_split(root, manifest, split)
        for row, (label, sample_id) in enumerate(zip(data.labels, data.ids)):
            wav, image_ref = sample_id.split("|")
            source, index = image_ref.rsplit("_", 1)
            assert int(wav.split("_")[0]) == label
            assert source == ("mnist_test" if split == "test" else "mnist_train")
            if row % 50 == 0:  # pixel check on a sample; labels on all
                assert np.array_equal(data.inputs["image"][row, 0], mnist[source].data[int(index)].numpy())
            assert int(mnist[source].targets[int(index)]) == label


def test_official_split_and_stratified_disjoint_val(full):
    root, manifest = full
    data = {s: load_split(root, manifest, s) for s in ("train", "val", "test")}
    names = {s: {_wav_name(i) for i in d.ids} for s, d in data.items()}
    assert not names["train"] & names["val"] and not names["test"] & (names["train"] | names["val"])
    assert all(int(n.split("_")[2].removesuffix(".wav")) < 5 for n in names["test"])
    assert all(int(n.split("_")[2].removesuffix(".wav")) >= 5 for n in names["train"] | names["val"])
    assert np.bincount(data["val"].labels).tolist() == [27] * 10
    images = {s: [i.split("|")[1] for i in d.ids] for s, d in data.items()}
    assert len(set(images["train"] + images["val"])) == 2700  # drawn without replacement
    assert len(set(images["test"])) == 300


def test_cached_spectrogram_equals_recomputed(full, shared_data):
    root, manifest = full
    data = load_split(root, manifest, "train")
    row = 123
    wave, rate = sf.read(shared_data / "fsdd" / "recordings" / _wav_name(data.ids[row]), dtype="float32")
    assert rate == 8000
    wave = np.pad(wave[:8000], (0, max(0, 8000 - len(wave))))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=64)
    db = torchaudio.transforms.AmplitudeToDB()(mel(torch.from_numpy(wave))).numpy()
    norm = manifest.params["normalisation"]
    expected = (db - norm["mean"]) / norm["std"]
    np.testing.assert_allclose(data.inputs["audio"][row, 0].astype(np.float32), expected, atol=4e-3, rtol=1e-3)


def test_normalised_with_train_statistics(full):
    root, manifest = full
    audio = load_split(root, manifest, "train").inputs["audio"].astype(np.float64)
    assert abs(audio.mean()) < 1e-2 and abs(audio.std() - 1) < 1e-2


def test_rerun_returns_existing_cache_quickly(full, shared_data):
    root, manifest = full
    start = time.perf_counter()
    again = PREPARERS["avdigits"](raw=shared_data, out=root, preset=None, seed=0, val_fraction=None, workers=1,
                                  strict=False)
    assert time.perf_counter() - start < 2
    assert again.created == manifest.created and again.sources["fingerprint"] == manifest.sources["fingerprint"]


def test_corrupt_and_misnamed_wavs_are_skipped_and_reported(small_raw, tmp_path, reliability):
    messages: list[str] = []
    manifest = prepare(small_raw, tmp_path / "out", workers=4, log=messages.append)
    skipped = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    assert set(skipped) == {"7_broken_12.wav", "notes.wav"}
    reliability("unusable media files given to prepare (skipped with a reason, the rest written)", len(skipped))
    assert "unreadable" in skipped["7_broken_12.wav"] and "{digit}" in skipped["notes.wav"]
    assert sum(manifest.splits.values()) == 500 and manifest.splits["test"] == 50
    assert "count_check" in manifest.sources
    assert any(m.startswith("warning:") and "2700" in m for m in messages)
    assert any("7_broken_12.wav" in m for m in messages)


def test_strict_rejects_incomplete_fsdd(small_raw, tmp_path):
    with pytest.raises(UserError, match="--strict"):
        prepare(small_raw, tmp_path / "out", strict=True)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stft_preset_shape(small_raw, tmp_path):
    manifest = prepare(small_raw, tmp_path / "out", preset="stft", seed=3)
    assert manifest.modalities["audio"].shape == [1, 129, 101] and manifest.preset == "stft"
    assert manifest.params["n_fft"] == 256 and manifest.params["hop_length"] == 80


def test_missing_pieces_raise_user_errors(tmp_path, shared_data):
    with pytest.raises(UserError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "raw").mkdir()
    with pytest.raises(UserError, match=r"no FSDD recordings.*fsdd/recordings"):
        prepare(tmp_path / "raw", tmp_path / "out")
    (tmp_path / "raw" / "recordings").symlink_to(shared_data / "fsdd" / "recordings")
    with pytest.raises(UserError, match=r"no MNIST found.*MNIST/raw"):
        prepare(tmp_path / "raw", tmp_path / "out")


def test_bad_arguments_raise_user_errors(shared_data, tmp_path):
    with pytest.raises(UserError, match="logmel-64"):
        prepare(shared_data, tmp_path / "out", preset="mfcc")
    with pytest.raises(UserError, match="val-fraction"):
        prepare(shared_data, tmp_path / "out", val_fraction=1.5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        prepare(shared_data, tmp_path / "busy")


# ------------------------------------------------------------------------------------------------
# the forms FSDD and MNIST come in, and the wavs that cannot be used as they are


def test_github_zip_layout_keras_mnist_and_odd_wavs(tmp_path, shared_data, mnist, reliability):
    """FSDD as GitHub's ZIP unpacks (free-spoken-digit-dataset-master/recordings/), MNIST as Keras' mnist.npz, and
    three odd wavs: 0 samples (skipped: empty audio), all zeros (kept, with a warning), a Git LFS pointer (skipped)."""
    rec = tmp_path / "raw" / "free-spoken-digit-dataset-master" / "recordings"
    rec.mkdir(parents=True)
    for wav in (shared_data / "fsdd" / "recordings").glob("*_jackson_*.wav"):
        if int(wav.stem.split("_")[2]) < 10:
            (rec / wav.name).symlink_to(wav)
    sf.write(rec / "3_jackson_10.wav", np.zeros(0, np.float32), 8000)
    sf.write(rec / "4_jackson_10.wav", np.zeros(6000, np.float32), 8000)
    (rec / "5_jackson_10.wav").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "2" * 64
                                          + "\nsize 14000\n")
    (tmp_path / "raw" / "mnist").mkdir()
    np.savez(tmp_path / "raw" / "mnist" / "mnist.npz", x_train=mnist["mnist_train"].data.numpy(),
             y_train=mnist["mnist_train"].targets.numpy(), x_test=mnist["mnist_test"].data.numpy(),
             y_test=mnist["mnist_test"].targets.numpy())
    log: list[str] = []
    manifest = prepare(tmp_path / "raw", tmp_path / "out", log=log.append)
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    reliability("unusable media files given to prepare (skipped with a reason, the rest written)", 3)
    assert reasons["3_jackson_10.wav"] == "empty audio (0 samples)"  # not a torch reshape error
    assert "Git LFS pointer" in reasons["5_jackson_10.wav"] and "git lfs pull" in reasons["5_jackson_10.wav"]
    assert "4_jackson_10.wav" not in reasons
    assert [w for w in manifest.warnings if "4_jackson_10.wav" in w and "silent audio" in w]
    assert any("silent audio" in line for line in log)
    assert sum(manifest.splits.values()) == 101 and manifest.sources["mnist"]["form"] == "keras"


def test_mnist_gz_idx_files_and_kaggle_csv_read_as_torchvision_does(tmp_path, shared_data, mnist):
    import gzip

    from data_prep.mnist import find_mnist, load_mnist

    gz = tmp_path / "gz" / "mnist"
    gz.mkdir(parents=True)
    for path in (shared_data / "mnist" / "MNIST" / "raw").iterdir():
        (gz / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    source = find_mnist(tmp_path / "gz")
    assert source.form == "idx"
    images, labels = load_mnist(source, train=False)
    np.testing.assert_array_equal(images, mnist["mnist_test"].data.numpy())
    np.testing.assert_array_equal(labels, mnist["mnist_test"].targets.numpy())
    kaggle = tmp_path / "kaggle" / "archive"
    kaggle.mkdir(parents=True)
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)) + "\n"
    for split, ds in (("train", mnist["mnist_train"]), ("test", mnist["mnist_test"])):
        rows = "".join(f"{int(y)}," + ",".join(map(str, x.reshape(-1).tolist())) + "\n"
                       for x, y in zip(ds.data.numpy()[:50], ds.targets.numpy()[:50]))
        (kaggle / f"mnist_{split}.csv").write_text(header + rows)
    source = find_mnist(tmp_path / "kaggle")
    images, labels = load_mnist(source, train=True)
    assert source.form == "kaggle"
    np.testing.assert_array_equal(images, mnist["mnist_train"].data.numpy()[:50])
    np.testing.assert_array_equal(labels, mnist["mnist_train"].targets.numpy()[:50])
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="Keras' mnist.npz"):
        find_mnist(tmp_path / "none")
