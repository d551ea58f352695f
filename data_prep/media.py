"""Decoding audio and video files: WAV with soundfile, containers (flv, mp4, mp3, ...) with PyAV.

Every problem with one file raises ``SkipItem`` with a short reason (a Git LFS pointer instead of the
file, corrupt, no audio track, empty audio, no video track, too short), so a preparer reports the
file and goes on. Silent audio and blank frames are not errors: ``silence_warning`` and
``blank_warning`` word the warning a preparer attaches to such a sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bogc_cli.data.lfs import POINTER_REASON, is_lfs_pointer
from data_prep import clipstore
from data_prep.clipstore import SkipItem

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MIN_AUDIO_SECONDS = 0.1
EMPTY_AUDIO = "empty audio (0 samples)"


def check_media_file(path: Path) -> None:
    """``SkipItem`` when ``path`` is missing or a Git LFS pointer rather than the media itself."""
    if not path.is_file():
        raise SkipItem(f"missing file {path.name}")
    if is_lfs_pointer(path):
        raise SkipItem(POINTER_REASON)


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to mono float32 ``[S]`` at ``sample_rate`` (channels averaged).

    Raises ``SkipItem``: a Git LFS pointer, a corrupt file, no audio track, ``EMPTY_AUDIO`` (0 samples),
    or shorter than ``MIN_AUDIO_SECONDS``."""
    path = Path(path)
    check_media_file(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        wave, rate = _read_soundfile(path)
        if wave.shape[0] == 0:
            raise SkipItem(EMPTY_AUDIO)
        if rate != sample_rate:
            import torch
            import torchaudio

            wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, sample_rate).numpy()
    else:
        wave = _read_container_audio(path, sample_rate)
    if wave.shape[0] < MIN_AUDIO_SECONDS * sample_rate:
        raise SkipItem(f"audio too short ({wave.shape[0] / sample_rate:.2f} s)")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [S, channels]
    except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise SkipItem(f"corrupt audio file ({exc})") from None
    return data.mean(axis=1), int(rate)


def _read_container_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream of a container, resampled by FFmpeg (swresample) to mono float32."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise SkipItem("no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.error.FFmpegError as exc:
        raise SkipItem(f"corrupt media file ({exc})") from None
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if wave.shape[0] == 0:
        raise SkipItem(EMPTY_AUDIO)
    return wave


def silence_warning(wave: np.ndarray) -> str | None:
    """The warning for a wave ``[S]`` whose every sample is 0 (kept: silence may be real, but it is rarely meant)."""
    return None if np.any(wave) else "silent audio (every sample is 0): kept, check the file"


def blank_warning(frames: np.ndarray) -> str | None:
    """The warning for frames ``[n, 3, H, W]`` that are all one value (a black or blank video)."""
    return None if frames.size and frames.min() != frames.max() else "blank video frames (every pixel the same): kept"


def frame_indices(seconds: list[int], fps: float, total_frames: int) -> list[int]:
    """Frame numbers for 1-fps sampling: the frame in the middle of each listed second,
    ``round((s + 0.5) * fps)``; a second past the end wraps into the clip's last second
    (OGM-GE's frame extraction does the same, so short clips still give every frame)."""
    last_count = int(total_frames % fps) or int(round(fps))
    last_start = max(0, total_frames - last_count)
    picked = []
    for s in seconds:
        index = int(round((s + 0.5) * fps))
        if index >= total_frames:
            index = last_start + (index - last_start) % max(1, total_frames - last_start)
        picked.append(min(index, total_frames - 1))
    return picked


def read_frames(path: Path, seconds: list[int], size: int) -> np.ndarray:
    """RGB frames uint8 ``[len(seconds), 3, size, size]`` at 1 fps (see ``frame_indices``), each
    resized to ``size`` x ``size`` with PIL bilinear (what torchvision's ``Resize`` does on PIL images).

    Decodes the stream once, keeping only the wanted frames and the last second (for wrapping).
    """
    import math
    from collections import deque

    import av
    from PIL import Image

    path = Path(path)
    check_media_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipItem("no video track")
            stream = container.streams.video[0]
            if not clipstore.IN_WORKER:
                stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            wanted = {int(round((s + 0.5) * fps)) for s in seconds}
            kept: dict[int, av.VideoFrame] = {}
            tail: deque = deque(maxlen=math.ceil(fps) + 1)
            total = 0
            for total, frame in enumerate(container.decode(video=0), start=1):
                if total - 1 in wanted:
                    kept[total - 1] = frame
                    if len(kept) == len(wanted):
                        break  # every wanted frame is in the clip: no wrapping, no need to decode the rest
                tail.append((total - 1, frame))
            kept.update(tail)
            picked = [kept[i].to_image() for i in frame_indices(seconds, fps, total)] if total else []
    except av.error.FFmpegError as exc:
        raise SkipItem(f"corrupt video ({exc})") from None
    if not picked:
        raise SkipItem("video track has no frames")
    resized = [np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)) for img in picked]
    return np.ascontiguousarray(np.stack(resized).transpose(0, 3, 1, 2))


def read_frame_images(folder: Path, seconds: list[int], size: int) -> np.ndarray:
    """Frames already extracted at 1 fps, one image per second in name order (OGM-GE's ``Image-01-FPS/<clip>/``):
    the image of each listed second (the last one for a second past the clip's end), RGB, resized like
    ``read_frames``: uint8 ``[len(seconds), 3, size, size]``."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not images:
        raise SkipItem(f"no frame images in {folder.name}/")
    picked = []
    for s in seconds:
        path = images[min(s, len(images) - 1)]
        if is_lfs_pointer(path):
            raise SkipItem(POINTER_REASON)
        try:
            with Image.open(path) as img:
                picked.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError) as exc:
            raise SkipItem(f"corrupt frame image {path.name} ({exc})") from None
    return np.ascontiguousarray(np.stack(picked).transpose(0, 3, 1, 2))
