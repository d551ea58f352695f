"""CREMA-D-shaped data for the speed benchmarks, in the two forms the loops compare.

``write_raw``: what the reference repositories read every epoch: per clip, ``frames`` JPEG frames
(480x360, as extracted from CREMA-D's FLV at 1 fps) and a WAV (22,050 Hz, 3 s). Frame content is
smooth colour fields with mild noise, so JPEG sizes and decode times resemble video frames rather
than white noise (which compresses badly and decodes slowly, flattering our side).

``prepare_cache``: the same clips as ``bogc prepare`` stores them: each frame decoded once and
resized to 224x224 uint8 (PIL bilinear, ``data_prep.media``), each wave turned once into the
``ogmge`` log-STFT ``[1, 257, 188]`` float16 (``data_prep.audio_features.log_stft``), memory-mapped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from bogc_cli.data.cache import SplitArrays, write_cache
from data_prep.audio_features import log_stft

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
SAMPLE_RATE = 22_050
SECONDS = 3.0


@dataclass
class Shape:
    """One benchmark preset's data: frames per clip, stored frame side, raw JPEG size (w, h)."""

    frames: int = 3
    side: int = 224
    raw_size: tuple[int, int] = (480, 360)


def _frame(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    noisy = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def clips(work: Path, n: int, shape: Shape) -> tuple[list[dict], float]:
    """The raw clips and the prepared cache under ``work`` (``raw/``, ``cache/``), made unless a previous
    benchmark left the same ones there; returns the clips and the seconds the preparation took."""
    index = work / "clips.json"
    wanted = {"n": n, "shape": [shape.frames, shape.side, *shape.raw_size]}
    if index.is_file() and (work / "cache" / "manifest.json").is_file():
        saved = json.loads(index.read_text())
        if saved["what"] == wanted:
            return saved["items"], saved["prepare_s"]
    items = write_raw(work / "raw", n, shape)
    prepare_s = prepare_cache(items, work / "cache", shape)
    index.write_text(json.dumps({"what": wanted, "items": items, "prepare_s": prepare_s}))
    return items, prepare_s


def write_raw(root: Path, n: int, shape: Shape, seed: int = 0) -> list[dict]:
    """``n`` clips under ``root`` (``<id>_<k>.jpg``, ``<id>.wav``); returns ``[{frames, wav, label}]``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE
    for i in range(n):
        label = int(rng.integers(len(CLASSES)))
        frames = []
        for k in range(shape.frames):
            path = root / f"{i:05d}_{k}.jpg"
            _frame(rng, shape.raw_size).save(path, quality=90)
            frames.append(str(path))
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * label) * t) + 0.05 * rng.standard_normal(t.shape)
        wav = root / f"{i:05d}.wav"
        sf.write(wav, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        items.append({"frames": frames, "wav": str(wav), "label": label})
    return items


def prepare_cache(items: list[dict], out: Path, shape: Shape) -> float:
    """Write the prepared cache (train split = every item); returns the seconds it took."""
    started = time.perf_counter()
    visual = np.empty((len(items), shape.frames, 3, shape.side, shape.side), dtype=np.uint8)
    audio = np.empty((len(items), 1, 257, 188), dtype=np.float16)
    for i, item in enumerate(items):
        for k, path in enumerate(item["frames"]):
            with Image.open(path) as img:
                frame = img.convert("RGB").resize((shape.side, shape.side), Image.BILINEAR)
            visual[i, k] = np.asarray(frame).transpose(2, 0, 1)
        wave, sr = sf.read(item["wav"], dtype="float32")
        audio[i] = log_stft(wave, sr, SECONDS)
    labels = np.array([item["label"] for item in items], dtype=np.int64)
    split = SplitArrays({"audio": audio, "visual": visual}, labels)
    write_cache(out, dataset="cremad", classes=CLASSES, kinds={"audio": "audio", "visual": "video"},
                splits={"train": split, "val": split.subset(np.arange(min(8, len(items)))),
                        "test": split.subset(np.arange(min(8, len(items))))})
    return time.perf_counter() - started
