"""avdigits: FSDD spoken digits (audio) paired by label with MNIST images (image).

Raw layout (``--raw``): FSDD wavs in ``fsdd/recordings/``, ``fsdd/`` or ``recordings/``, or in a
``recordings/`` folder up to three levels down (a clone, or GitHub's ZIP:
``free-spoken-digit-dataset-master/recordings/``); MNIST in ``mnist/`` or ``--raw`` in any form
``data_prep.mnist`` reads (torchvision root, IDX files plain or ``.gz``, Keras' ``mnist.npz``, Kaggle's
CSVs). A wav that is empty, unreadable, a Git LFS pointer or not named ``{digit}_{speaker}_{index}.wav``
is skipped and reported; a silent one is kept with a warning.

Cache contents per split (``train``/``val``/``test``):

- ``audio``: float16 ``[N, 1, 64, 101]`` (``logmel-64``) or ``[N, 1, 129, 101]`` (``stft``), dB,
  normalised with the train split's global mean/std (stored in ``manifest.params``);
- ``image``: uint8 ``[N, 1, 28, 28]``, an MNIST image of the same digit from the matching MNIST
  split, drawn without replacement by ``numpy.random.default_rng(seed)``;
- ``labels``: int64 ``[N]`` digit; ``ids.txt``: ``<wav name>|mnist_<train|test>_<index>``.

Preset ``avmnist`` follows the AV-MNIST protocol (``data_prep.avmnist`` says how and why): pink
noise mixed into every recording at ``snr_db`` before the spectrogram, and images rebuilt from the
train split's leading PCA components so that ``image_energy_removed`` of their energy is gone
(``image``: float16 ``[N, 1, 28, 28]`` in pixel units / 255, not clipped). The pairing (ids) is the
default preset's; every parameter and the measured SNR and removed shares are in ``manifest.params``.

FSDD's official split: recording index 0-4 is test, 5-49 train (2700/300 for v1.0.9). The
validation split is a stratified, seeded carve-out of train.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, SplitArrays, carve_validation, carve_warnings, write_cache
from bogc_cli.data.lfs import POINTER_REASON, is_lfs_pointer
from bogc_cli.data.registry import DATASETS
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_val_fraction, digest, file_list_checksum, folders_below,
                               log_problems, no_log, reusable_manifest, start_rewrite)
from data_prep.media import EMPTY_AUDIO, silence_warning
from data_prep.mnist import MnistSource, find_mnist, load_mnist

DATASET = "avdigits"
CLASSES = [str(d) for d in range(10)]
KINDS = {"audio": "audio", "image": "image"}
SAMPLE_RATE = 8000
CLIP_SAMPLES = 8000  # 1 s
TEST_INDICES = range(0, 5)  # FSDD's official split: recordings 0-4 of each (digit, speaker) are test
EXPECTED_COUNTS = {"train": 2700, "test": 300}
DEFAULT_PRESET = "logmel-64"
DEFAULT_VAL_FRACTION = 0.1
PRESETS: dict[str, dict[str, Any]] = {
    "logmel-64": {"transform": "MelSpectrogram+AmplitudeToDB(power)", "sample_rate": SAMPLE_RATE,
                  "n_fft": 256, "win_length": 200, "hop_length": 80, "n_mels": 64},
    "stft": {"transform": "Spectrogram(power=1)+AmplitudeToDB(magnitude)", "sample_rate": SAMPLE_RATE,
             "n_fft": 256, "win_length": 256, "hop_length": 80},
    "avmnist": {"transform": "MelSpectrogram+AmplitudeToDB(power)", "sample_rate": SAMPLE_RATE,
                "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40,
                "noise": "pink", "noise_exponent": 1.0, "snr_db": -3.0, "image_energy_removed": 0.75},
}
assert set(PRESETS) == set(DATASETS[DATASET].prepare_presets)

_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Clip:
    """One FSDD recording ``{digit}_{speaker}_{index}.wav``."""

    path: Path
    digit: int
    speaker: str
    index: int

    @property
    def split(self) -> str:
        return "test" if self.index in TEST_INDICES else "train"


# ---------------------------------------------------------------------------------------------
# finding the raw files


def find_fsdd(raw: Path) -> Path:
    """The folder holding the FSDD ``*.wav`` files under ``raw`` (a ``recordings/`` folder up to three levels down)."""
    candidates = [raw / "fsdd" / "recordings", raw / "fsdd", raw / "recordings"]
    candidates += [p for p in folders_below(raw, 3) if p.name == "recordings"]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.wav")):
            return folder
    looked = ", ".join(str(c) for c in candidates[:3])
    raise UserError(f"no FSDD recordings found: looked for *.wav in {looked} and recordings/ folders below --raw. Put "
                    "the Free Spoken Digit Dataset's recordings/ folder ({digit}_{speaker}_{index}.wav) under --raw as "
                    "fsdd/recordings/")


def list_clips(folder: Path) -> tuple[list[Clip], list[dict[str, str]]]:
    """Parse every ``*.wav`` name in ``folder``; names not in FSDD's pattern are returned as skipped."""
    clips, skipped = [], []
    for path in sorted(folder.glob("*.wav")):
        match = _NAME.match(path.name)
        if match is None:
            skipped.append({"file": str(path), "reason": "name is not {digit}_{speaker}_{index}.wav"})
            continue
        clips.append(Clip(path, int(match[1]), match[2], int(match[3])))
    clips.sort(key=lambda c: (c.digit, c.speaker, c.index))
    return clips, skipped


# ---------------------------------------------------------------------------------------------
# audio


def read_wave(path: Path) -> np.ndarray:
    """Decode one wav to float32 mono ``[S]`` at 8 kHz in [-1, 1] (downmixed / resampled if needed)."""
    if is_lfs_pointer(path):
        raise ValueError(POINTER_REASON)
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [S, channels]
    if data.shape[0] == 0:
        raise ValueError(EMPTY_AUDIO)
    wave = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return wave


def fit_length(wave: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Crop ``wave`` ``[S]`` to ``length`` samples, or zero-pad it at the end: ``[length]``."""
    return np.pad(wave[:length], (0, max(0, length - wave.shape[0])))


def load_waves(clips: list[Clip], workers: int = 1) -> tuple[list[Clip], np.ndarray, list[dict[str, str]]]:
    """Read ``clips``; returns the readable clips, their waves float32 ``[N, 8000]``, and the skipped files
    (reason ``empty audio``, a Git LFS pointer, or ``unreadable wav: ...``)."""

    def read(clip: Clip) -> np.ndarray | str:
        try:
            return fit_length(read_wave(clip.path))
        except ValueError as exc:
            return str(exc) if str(exc) in (EMPTY_AUDIO, POINTER_REASON) else f"unreadable wav: {exc}"
        except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
            return f"unreadable wav: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(read, clips))
    kept = [c for c, r in zip(clips, results) if not isinstance(r, str)]
    skipped = [{"file": str(c.path), "reason": r} for c, r in zip(clips, results) if isinstance(r, str)]
    waves = np.stack([r for r in results if not isinstance(r, str)]) if kept else np.zeros((0, CLIP_SAMPLES),
                                                                                         np.float32)
    return kept, waves.astype(np.float32, copy=False), skipped


def spectrogram_transform(preset: str) -> torch.nn.Module:
    """The torchaudio transform of ``preset``: waves ``[N, 8000]`` -> dB spectrograms ``[N, F, 101]``."""
    p = PRESETS[preset]
    if p["transform"].startswith("MelSpectrogram"):
        spec = torchaudio.transforms.MelSpectrogram(sample_rate=p["sample_rate"], n_fft=p["n_fft"],
                                                    win_length=p["win_length"], hop_length=p["hop_length"],
                                                    n_mels=p["n_mels"])
        return torch.nn.Sequential(spec, torchaudio.transforms.AmplitudeToDB(stype="power"))
    spec = torchaudio.transforms.Spectrogram(n_fft=p["n_fft"], win_length=p["win_length"],
                                             hop_length=p["hop_length"], power=1.0)
    return torch.nn.Sequential(spec, torchaudio.transforms.AmplitudeToDB(stype="magnitude"))


@torch.no_grad()
def compute_spectrograms(waves: np.ndarray, preset: str, batch_size: int = 512) -> np.ndarray:
    """Waves float32 ``[N, 8000]`` -> unnormalised dB spectrograms float32 ``[N, 1, F, 101]``."""
    transform = spectrogram_transform(preset)
    chunks = [transform(torch.from_numpy(waves[i:i + batch_size])) for i in range(0, len(waves), batch_size)]
    if not chunks:
        return np.zeros((0, 1, 0, 0), np.float32)
    return torch.cat(chunks).unsqueeze(1).numpy()


# ---------------------------------------------------------------------------------------------
# images


def draw_images(labels: np.ndarray, mnist_labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each label pick an MNIST index with the same label, without replacement: int64 ``[N]``."""
    chosen = np.empty(labels.shape[0], np.int64)
    for digit in np.unique(labels):
        where = np.flatnonzero(labels == digit)
        pool = np.flatnonzero(mnist_labels == digit)
        if pool.size < where.size:
            raise UserError(f"MNIST has only {pool.size} images of digit {digit} but {where.size} are needed: "
                            "use the full MNIST")
        chosen[where] = rng.choice(pool, size=where.size, replace=False)
    return chosen


# ---------------------------------------------------------------------------------------------
# the whole preparation


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the avdigits cache in ``out`` from FSDD + MNIST under ``raw``; returns its manifest.

    Idempotent: a complete cache in ``out`` made from the same files and parameters is returned as is.
    ``val_fraction`` (default 0.1) is the share of FSDD's train split carved out for validation.
    """
    raw, out = Path(raw), Path(out)
    preset = preset or DEFAULT_PRESET
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    _check_args(raw, out, preset, val_fraction)
    fsdd_dir, mnist_root = find_fsdd(raw), find_mnist(raw)
    clips, skipped = list_clips(fsdd_dir)
    sources = _sources(fsdd_dir, mnist_root, clips)
    params = {**PRESETS[preset], "clip_samples": CLIP_SAMPLES, "pad": "zeros at the end", "seed": seed,
              "val_fraction": val_fraction, "test_indices": f"{TEST_INDICES.start}-{TEST_INDICES.stop - 1}"}
    fingerprint = digest({"preset": preset, "params": params, "sources": sources, "version": __version__})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this avdigits cache; nothing to do")
        return done

    log(f"reading {len(clips)} FSDD recordings from {fsdd_dir}")
    clips, waves, unreadable = load_waves(clips, workers)
    skipped += unreadable
    warnings = [f"{c.path}: {w}" for c, wave in zip(clips, waves) if (w := silence_warning(wave))]
    log_problems(log, skipped, warnings)
    count_problem = _check_counts(clips, strict, log)
    if "snr_db" in params:
        log(f"mixing {params['noise']} noise into every recording at {params['snr_db']} dB SNR")
        waves, params["audio_noise"] = _add_noise(clips, waves, params, seed)

    log(f"computing {preset} spectrograms")
    audio = compute_spectrograms(waves, preset)
    labels = np.array([c.digit for c in clips], np.int64)
    is_test = np.array([c.split == "test" for c in clips], bool)
    if not is_test.any() or is_test.all():
        raise UserError(f"{fsdd_dir} has no {'test' if not is_test.any() else 'train'} recordings "
                        "(index 0-4 is test, 5-49 train): use the complete FSDD recordings folder")

    log(f"pairing with MNIST images from {mnist_root.root} ({mnist_root.form} files)")
    rng = np.random.default_rng(seed)
    splits = {}
    for split, mask, mnist_train in (("train", ~is_test, True), ("test", is_test, False)):
        images, mnist_labels = load_mnist(mnist_root, train=mnist_train)
        picked = draw_images(labels[mask], mnist_labels, rng)
        tag = "mnist_train" if mnist_train else "mnist_test"
        ids = [f"{c.path.name}|{tag}_{i}" for c, i in zip([c for c, m in zip(clips, mask) if m], picked)]
        splits[split] = SplitArrays({"audio": audio[mask], "image": images[picked][:, None]}, labels[mask], ids)

    train_rows, val_rows = carve_validation(splits["train"].labels, val_fraction, seed)
    warnings += carve_warnings(splits["train"].labels, val_rows, CLASSES, str(fsdd_dir))
    splits = {"train": splits["train"].subset(train_rows), "val": splits["train"].subset(val_rows),
              "test": splits["test"]}
    if not len(val_rows):  # too few recordings to carve one: no val split (training says so, or refuses)
        splits.pop("val")
    if "image_energy_removed" in params:
        log(f"removing {params['image_energy_removed']:.0%} of the images' energy (PCA fitted on train)")
        params["image_pca"] = _remove_image_energy(splits, params["image_energy_removed"])
    mean, std = _normalise_audio(splits)
    params["normalisation"] = {"mean": mean, "std": std, "over": "train split after the validation carve-out"}
    if count_problem:
        sources["count_check"] = count_problem

    start_rewrite(out)
    log(f"writing the cache to {out}")
    return write_cache(out, dataset=DATASET, classes=CLASSES, kinds=KINDS, splits=splits, preset=preset,
                       params=params, sources={**sources, "fingerprint": fingerprint}, skipped=skipped,
                       warnings=warnings)


def _check_args(raw: Path, out: Path, preset: str, val_fraction: float) -> None:
    if preset not in PRESETS:
        raise UserError(f"unknown avdigits preset {preset!r}; valid: {', '.join(PRESETS)}")
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the folder holding fsdd/ and mnist/")
    check_out_folder(out, raw)


def _sources(fsdd_dir: Path, mnist_root: MnistSource, clips: list[Clip]) -> dict[str, Any]:
    """File counts and cheap checksums (sorted ``name size`` lists) of the raw inputs."""
    mnist_files = sorted(mnist_root.files)
    return {
        "fsdd": {"folder": str(fsdd_dir), "wav_files": len(clips),
                 "file_list_sha256": file_list_checksum(c.path for c in clips)},
        "mnist": {"root": str(mnist_root.root), "form": mnist_root.form, "files": [p.name for p in mnist_files],
                  "file_list_sha256": file_list_checksum(mnist_files)},
        "expected": EXPECTED_COUNTS,
    }


def _check_counts(clips: list[Clip], strict: bool, log: Log) -> str | None:
    """Compare split sizes with FSDD v1.0.9's 2700/300; warn (or raise when ``strict``) when they differ."""
    counts = {split: sum(c.split == split for c in clips) for split in EXPECTED_COUNTS}
    if counts == EXPECTED_COUNTS:
        return None
    message = (f"FSDD split sizes are train {counts['train']} / test {counts['test']}, not the published "
               f"{EXPECTED_COUNTS['train']} / {EXPECTED_COUNTS['test']}")
    if strict:
        raise UserError(f"{message} (--strict): use the complete FSDD v1.0.9 recordings, or drop --strict")
    log(f"warning: {message}")
    return message


def recording_lengths(clips: list[Clip]) -> np.ndarray:
    """Each clip's own length in samples at 8 kHz, capped at the 1 s window: int64 ``[N]``."""
    lengths = []
    for clip in clips:
        info = sf.info(str(clip.path))
        lengths.append(min(CLIP_SAMPLES, -(-info.frames * SAMPLE_RATE // info.samplerate)))
    return np.array(lengths, np.int64)


def _add_noise(clips: list[Clip], waves: np.ndarray, params: dict[str, Any], seed: int
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """``waves`` with the preset's noise mixed in (data_prep.avmnist.add_noise), and what to record of it."""
    from data_prep.avmnist import NOISE_STREAM, add_noise, speech_power

    lengths = recording_lengths(clips)
    rng = np.random.default_rng([seed, NOISE_STREAM])
    mixed, noise = add_noise(waves, lengths, params["snr_db"], rng, params["noise_exponent"])
    speech = speech_power(waves, lengths)
    heard = speech > 0
    realised = 10 * np.log10(speech[heard] / (noise[heard] ** 2).mean(axis=1))
    return mixed, {"snr_db": params["snr_db"], "colour": params["noise"], "psd_exponent": params["noise_exponent"],
                   "generator": f"numpy default_rng([seed, {NOISE_STREAM}]), one draw per clip in clip order",
                   "speech_power": "mean square over the recording's own samples, before zero padding",
                   "noise_span": "the whole 1 s window",
                   "measured_snr_db": {"min": float(realised.min()), "max": float(realised.max())},
                   "silent_clips_without_noise": int((~heard).sum())}


def _remove_image_energy(splits: dict[str, SplitArrays], target: float) -> dict[str, Any]:
    """Replace every split's images by their PCA rebuild (fitted on train), float16 in [0, 1] units."""
    from data_prep.avmnist import EnergyRemoval

    removal = EnergyRemoval(target).fit(splits["train"].inputs["image"].astype(np.float64) / 255.0)
    removed = {}
    for name, split in splits.items():
        images = split.inputs["image"].astype(np.float64) / 255.0
        rebuilt = removal.transform(images)
        removed[name] = removal.removed_share(images, rebuilt) if len(images) else None
        split.inputs["image"] = rebuilt.astype(np.float16)
    return {"target": target, "components_kept": removal.components, "fit_on": "train split after the validation "
            "carve-out", "energy": "sum of squared deviations from the train mean image, pixels / 255",
            "removed_share": removed, "explained_variance_ratio_head": [float(v) for v in removal.explained[:10]]}


def _normalise_audio(splits: dict[str, SplitArrays]) -> tuple[float, float]:
    """Standardise every split's audio with the train split's global mean/std, in place, to float16."""
    train = splits["train"].inputs["audio"]
    mean, std = float(train.mean(dtype=np.float64)), float(train.std(dtype=np.float64))
    std = std if std > 0 else 1.0
    for split in splits.values():
        split.inputs["audio"] = ((split.inputs["audio"] - mean) / std).astype(np.float16)
    return mean, std
