"""avdigits preset ``avmnist``: PCA energy removal fitted on train only, noise at the stated SNR, manifest.

Every figure is checked against an independent computation (numpy SVD, the raw wavs and MNIST files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchvision
from scipy.signal import welch

from bogc_cli.data.cache import load_split
from data_prep.avdigits import PRESETS, prepare
from data_prep.avmnist import NOISE_STREAM, EnergyRemoval, add_noise, coloured_noise


# ------------------------------------------------------------------------------------- units


def test_energy_removal_keeps_the_components_closest_to_the_target_share():
    # five axes with variances 0.25, 0.2, 0.2, 0.2, 0.15 (of 1.0): keeping 1 component removes exactly 0.75
    variances = np.array([0.25, 0.2, 0.2, 0.2, 0.15])
    x = np.concatenate([np.diag(np.sqrt(variances * 2)), -np.diag(np.sqrt(variances * 2))])  # [10, 5], mean 0
    removal = EnergyRemoval(0.75).fit(x)
    assert removal.components == 1
    assert removal.removed_share(x) == pytest.approx(0.75, abs=1e-12)
    rebuilt = removal.transform(x)
    np.testing.assert_allclose(rebuilt[:, 1:], 0, atol=1e-12)  # only the first axis survives
    # removed share with k kept: 0.75, 0.55, 0.35, 0.15; the closest to the target wins
    assert EnergyRemoval(0.6).fit(x).components == 2
    assert EnergyRemoval(0.3).fit(x).components == 3
    assert EnergyRemoval(0.1).fit(x).components == 4  # 0.15 removed, against 0 with all 5 kept


def test_energy_removal_rejects_bad_targets_and_unfitted_use():
    with pytest.raises(ValueError, match="share"):
        EnergyRemoval(1.0).fit(np.eye(3))
    with pytest.raises(RuntimeError, match="fit"):
        EnergyRemoval().transform(np.eye(3))


@pytest.mark.parametrize("exponent, slope", [(0.0, 0.0), (1.0, -1.0), (2.0, -2.0)])
def test_coloured_noise_has_the_stated_spectral_slope_and_unit_power(exponent, slope):
    noise = coloured_noise(np.random.default_rng(0), 64, 8000, exponent)
    np.testing.assert_allclose((noise ** 2).mean(axis=1), 1.0, rtol=1e-9)
    freqs, psd = welch(noise, fs=8000, nperseg=1024, axis=1)
    band = (freqs >= 30) & (freqs <= 3000)
    fitted = np.polyfit(np.log10(freqs[band]), np.log10(psd.mean(axis=0)[band]), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.1)


def test_noise_is_mixed_at_the_stated_snr_over_each_recordings_own_samples():
    rng = np.random.default_rng(1)
    lengths = np.array([3000, 8000, 5000])
    waves = np.zeros((3, 8000), np.float32)
    for i, n in enumerate(lengths):
        waves[i, :n] = rng.uniform(-0.5, 0.5, n) * (i + 1)
    mixed, _ = add_noise(waves, lengths, snr_db=-3.0, rng=np.random.default_rng(2))
    noise = mixed.astype(np.float64) - waves
    for i, n in enumerate(lengths):
        speech = np.mean(waves[i, :n].astype(np.float64) ** 2)
        assert 10 * np.log10(speech / np.mean(noise[i] ** 2)) == pytest.approx(-3.0, abs=1e-3)
        assert np.all(noise[i, n:] != 0)  # the noise covers the padding too
    silent, _ = add_noise(np.zeros((1, 100), np.float32), np.array([50]), 0.0, np.random.default_rng(0))
    assert not silent.any()


# ------------------------------------------------------------------------------- the preset


@pytest.fixture(scope="module")
def one_speaker(tmp_path_factory, shared_data) -> tuple[Path, object]:
    """The avmnist cache of one speaker's 500 FSDD recordings (450 train+val / 50 test)."""
    raw = tmp_path_factory.mktemp("raw_one_speaker")
    rec = raw / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for wav in (shared_data / "fsdd" / "recordings").glob("*_jackson_*.wav"):
        (rec / wav.name).symlink_to(wav)
    (raw / "mnist").symlink_to(shared_data / "mnist")
    out = tmp_path_factory.mktemp("avmnist") / "cache"
    return out, prepare(raw, out, preset="avmnist", seed=5)


def _originals(ids: list[str], mnist: dict) -> np.ndarray:
    """The MNIST images a split's ids name, float64 [N, 784] in [0, 1]."""
    rows = []
    for sample_id in ids:
        source, index = sample_id.split("|")[1].rsplit("_", 1)
        rows.append(mnist[source].data[int(index)].numpy().reshape(-1))
    return np.stack(rows).astype(np.float64) / 255.0


def test_images_lose_the_stated_energy_with_a_pca_fitted_on_train_only(one_speaker, shared_data):
    root, manifest = one_speaker
    mnist = {"mnist_train": torchvision.datasets.MNIST(str(shared_data / "mnist"), train=True),
             "mnist_test": torchvision.datasets.MNIST(str(shared_data / "mnist"), train=False)}
    data = {s: load_split(root, manifest, s) for s in ("train", "val", "test")}
    clean = {s: _originals(d.ids, mnist) for s, d in data.items()}
    # independent PCA of the train split alone: numpy SVD of the centred train images
    mean = clean["train"].mean(axis=0)
    _, singular, vt = np.linalg.svd(clean["train"] - mean, full_matrices=False)
    share = singular ** 2 / (singular ** 2).sum()
    pca = manifest.params["image_pca"]
    k = pca["components_kept"]
    removed = 1 - np.cumsum(share)
    assert np.argmin(np.abs(removed - 0.75)) + 1 == k  # the closest whole number of components
    assert pca["removed_share"]["train"] == pytest.approx(removed[k - 1], abs=1e-9)
    assert abs(removed[k - 1] - 0.75) < 0.05
    for split, d in data.items():
        cached = d.inputs["image"].reshape(len(d.ids), -1).astype(np.float64)
        assert d.inputs["image"].dtype == np.float16
        expected = (clean[split] - mean) @ vt[:k].T @ vt[:k] + mean
        np.testing.assert_allclose(cached, expected, atol=2e-3)  # float16 storage
        energy = ((clean[split] - mean) ** 2).sum()
        measured = ((clean[split] - cached) ** 2).sum() / energy
        assert measured == pytest.approx(pca["removed_share"][split], abs=2e-3)
    assert pca["fit_on"].startswith("train") and pca["target"] == 0.75


def test_audio_is_the_spectrogram_of_speech_plus_noise_at_the_stated_snr(one_speaker, shared_data):
    root, manifest = one_speaker
    p = manifest.params
    assert p["snr_db"] == PRESETS["avmnist"]["snr_db"] and p["audio_noise"]["colour"] == "pink"
    clips = sorted((shared_data / "fsdd" / "recordings").glob("*_jackson_*.wav"),
                   key=lambda f: (int(f.name.split("_")[0]), int(f.name.split("_")[2].removesuffix(".wav"))))
    waves, lengths = [], []
    for f in clips:
        wave, rate = sf.read(f, dtype="float32")
        assert rate == 8000
        lengths.append(min(len(wave), 8000))
        waves.append(np.pad(wave[:8000], (0, max(0, 8000 - len(wave)))))
    waves, lengths = np.stack(waves), np.array(lengths)
    # the documented generator: default_rng([seed, NOISE_STREAM]), one pink draw per clip in clip order
    noise = coloured_noise(np.random.default_rng([5, NOISE_STREAM]), len(clips), 8000, 1.0)
    speech = np.array([np.mean(w[:n].astype(np.float64) ** 2) for w, n in zip(waves, lengths)])
    noise *= np.sqrt(speech / 10 ** (p["snr_db"] / 10))[:, None]
    snr = 10 * np.log10(speech / (noise ** 2).mean(axis=1))
    np.testing.assert_allclose(snr, p["snr_db"], atol=1e-9)
    data = load_split(root, manifest, "test")
    names = [f.name for f in clips]
    mel = torch.nn.Sequential(
        torchaudio.transforms.MelSpectrogram(sample_rate=8000, n_fft=p["n_fft"], win_length=p["win_length"],
                                             hop_length=p["hop_length"], n_mels=p["n_mels"]),
        torchaudio.transforms.AmplitudeToDB())
    norm = p["normalisation"]
    for row in (0, 17, 49):
        i = names.index(data.ids[row].split("|")[0])
        noisy = mel(torch.from_numpy((waves[i] + noise[i]).astype(np.float32))).numpy()
        clean = mel(torch.from_numpy(waves[i])).numpy()
        cached = data.inputs["audio"][row, 0].astype(np.float32) * norm["std"] + norm["mean"]
        np.testing.assert_allclose(cached, noisy, atol=0.05 * norm["std"])
        assert np.abs(cached - clean).mean() > 1.0  # dB: the noise is really there


def test_pairing_and_split_are_the_default_presets(one_speaker, tmp_path):
    root, manifest = one_speaker
    raw = Path(manifest.sources["fsdd"]["folder"]).parents[1]
    plain = prepare(raw, tmp_path / "plain", preset="logmel-64", seed=5)
    for split in ("train", "val", "test"):
        assert load_split(root, manifest, split).ids == load_split(tmp_path / "plain", plain, split).ids


def test_manifest_records_every_preparation_parameter(one_speaker):
    _, manifest = one_speaker
    p = manifest.params
    assert manifest.preset == "avmnist" and manifest.modalities["audio"].shape == [1, 40, 51]
    for key, value in PRESETS["avmnist"].items():
        assert p[key] == value
    assert p["seed"] == 5 and p["val_fraction"] == 0.1
    noise = p["audio_noise"]
    assert {"snr_db", "colour", "psd_exponent", "generator", "speech_power", "noise_span"} <= set(noise)
    assert noise["measured_snr_db"]["min"] == pytest.approx(p["snr_db"], abs=1e-6)
    pca = p["image_pca"]
    assert {"target", "components_kept", "fit_on", "energy", "removed_share"} <= set(pca)
    assert set(pca["removed_share"]) == {"train", "val", "test"}
