"""CREMA-D: 7,442 acted clips of 91 actors, 6 emotions; audio (speech) + visual (face frames).

Clip ids are ``<actor>_<sentence>_<emotion>_<level>``, e.g. ``1001_DFA_ANG_XX``; the label is the
third field. Raw layouts read under ``--raw`` (the folder itself, or one of its sub-folders up to three
levels down, e.g. ``CREMA-D/``, GitHub's ``CREMA-D-master/``, the GitLab mirror's ``crema-d-mirror-main/``):

- the official repository (``git lfs clone``, or its release): ``VideoFlash/<id>.flv`` and
  ``AudioWAV/<id>.wav`` (16 kHz); ``AudioMP3/<id>.mp3`` (44.1 kHz) is used for clips without a wav,
  and the video's own audio track for clips with neither. ``.mp4`` videos are read as well; files
  may sit in nested folders below ``VideoFlash/`` and ``AudioWAV/`` (as some re-packs have them);
- OGM-GE's pre-processed layout: ``Image-01-FPS/<id>/*.jpg`` (frames extracted at 1 fps) with the
  audio from ``AudioWAV/`` (or ``AudioMP3/``), used when there are no videos. The image of second s is
  the s-th in name order (OGM-GE keeps the first frame of each second, not the middle one);
- any sample rate (16 kHz as published, 44.1 kHz as in some re-packs): audio is resampled to the
  preset's rate.

Refused with a message naming the fix: a clone without git-lfs (every file a ~130-byte pointer: run
``git lfs pull``), and audio-only copies (Kaggle's "CREMA-D" has ``AudioWAV/`` alone: there are no
faces to prepare). Reported and left out, never silently used: a file whose name does not follow its
siblings' ``<actor>_<sentence>_<emotion>_<level>`` naming, a second copy of a clip (``.flv`` and
``.mp4``, or two nested copies), audio without a video, and files that cannot be decoded.

Split: the standard 744-clip test list (``data_prep/splits/cremad_test.txt``, the one OGM-GE and
its successors use); every other clip is train (6,698), and ``val_fraction`` (default 0.1) of
train is carved out for validation, stratified and seeded, and saved in the cache.
Classes in OGM-GE's order: NEU HAP SAD FEA DIS ANG.
"""

from __future__ import annotations

import re
from pathlib import Path

from bogc_cli.data.cache import Manifest
from bogc_cli.errors import UserError
from data_prep._common import Log, choose_preset, choose_val_fraction, folders_below, no_log
from data_prep.avclips import (AVPreset, ClipListing, ClipSource, Published, check_common_args, index_media,
                               prepare_clips)
from data_prep.clipstore import Item

DATASET = "cremad"
CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
EXPECTED = {"train": 6698, "test": 744}
PUBLISHED = Published(EXPECTED, None, "use the complete CREMA-D download")
DEFAULT_VAL_FRACTION = 0.1
TEST_LIST = Path(__file__).with_name("splits") / "cremad_test.txt"
PRESETS = {
    "ogmge": AVPreset("ogmge", "log_stft", sample_rate=22050, seconds=3.0, frame_seconds=(0, 1, 2),
                      reference="OGM-GE (Peng et al., CVPR 2022) CramedDataset: librosa 22,050 Hz, np.tile to 3 s, "
                                "stft n_fft 512 hop 353, log; frames extracted at 1 fps, 224 px"),
    "fbank": AVPreset("fbank", "kaldi_fbank", sample_rate=16000, seconds=3.0, frame_seconds=(0, 1),
                      fbank_frames=300, reference="AST-style 128-bin Kaldi fbank (Gong et al., 2021), 3 s"),
}
DEFAULT_PRESET = "ogmge"
VIDEO_SUFFIXES = (".flv", ".mp4")
AUDIO_FOLDERS = {"AudioWAV": (".wav",), "AudioMP3": (".mp3",)}
_ID = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
LAYOUT = "AudioWAV/<id>.wav and VideoFlash/<id>.flv, e.g. VideoFlash/1001_DFA_ANG_XX.flv"
SEARCH_DEPTH = 3


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the CREMA-D cache in ``out`` from a download in ``raw`` (see the module doc for the layouts read)."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    check_common_args(raw, out, DATASET, LAYOUT)
    return prepare_clips(DATASET, out, list_clips(find_root(raw), PRESETS[preset]), PRESETS[preset],
                         published=PUBLISHED, strict=strict, workers=workers, log=log, seed=seed,
                         val_fraction=val_fraction, overwrite=overwrite)


def _frames_folder(root: Path) -> Path | None:
    """OGM-GE's ``Image-<fps>-FPS/`` folder of extracted frames under ``root``, if any (1 fps preferred)."""
    found = sorted(p for p in root.glob("Image-*-FPS") if p.is_dir())
    return next((p for p in found if p.name == "Image-01-FPS"), found[0] if found else None)


def find_root(raw: Path) -> Path:
    """The folder holding the clips' faces: ``VideoFlash/`` (or OGM-GE's ``Image-01-FPS/``), searched in ``raw``
    and its sub-folders up to three levels down; an audio-only copy is refused with what it lacks."""
    folders = folders_below(raw, SEARCH_DEPTH)
    for root in folders:
        if (root / "VideoFlash").is_dir() or _frames_folder(root) is not None:
            return root
    audio_only = next((root for root in folders for name in AUDIO_FOLDERS if (root / name).is_dir()), None)
    if audio_only is not None:
        raise UserError(f"{audio_only} has CREMA-D audio ({', '.join(n for n in AUDIO_FOLDERS if (audio_only / n).is_dir())}"
                        ") but no videos (VideoFlash/) or extracted frames (Image-01-FPS/): an audio-only copy (such as "
                        "Kaggle's) has no faces for the visual modality. Get VideoFlash/ from the official repository "
                        "(git lfs clone https://github.com/CheyneyComputerScience/CREMA-D, or its GitLab mirror)")
    raise UserError(f"no VideoFlash/ folder in {raw} or below it: point --raw at the CREMA-D download ({LAYOUT})")


def read_test_ids() -> set[str]:
    lines = TEST_LIST.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def list_clips(root: Path, preset: AVPreset) -> ClipListing:
    """Every clip with a video (or extracted frames) under ``root``; audio without faces, misnamed files and
    second copies are reported as skipped."""
    skipped: list[dict[str, str]] = []
    video_dir, frames_dir = root / "VideoFlash", _frames_folder(root)
    videos = index_media(video_dir, VIDEO_SUFFIXES, skipped) if video_dir.is_dir() else {}
    frames = ({p.name: p for p in sorted(frames_dir.iterdir()) if p.is_dir()}
              if frames_dir is not None and not videos else {})
    faces = videos or frames
    audio = {name: index_media(root / name, suffixes, skipped) if (root / name).is_dir() else {}
             for name, suffixes in AUDIO_FOLDERS.items()}
    test_ids = read_test_ids()
    items = []
    audio_from = {"AudioWAV": 0, "AudioMP3": 0, "video track": 0}
    for clip_id, face in sorted(faces.items()):
        match = _ID.match(clip_id)
        if match is None or match[3] not in CLASSES:
            skipped.append({"file": str(face), "reason": "name does not follow its siblings' <actor>_<sentence>_"
                                                         f"<emotion>_<level> naming with emotion in {' '.join(CLASSES)}"})
            continue
        sound = audio["AudioWAV"].get(clip_id) or audio["AudioMP3"].get(clip_id)
        if sound is None and not videos:
            skipped.append({"file": str(face), "reason": f"no audio AudioWAV/{clip_id}.wav or AudioMP3/{clip_id}.mp3"})
            continue
        audio_from["AudioWAV" if clip_id in audio["AudioWAV"] else "AudioMP3" if sound else "video track"] += 1
        source = ClipSource(video=str(face) if videos else None, preset=preset, audio=str(sound) if sound else None,
                            frames=None if videos else str(face))
        items.append(Item(clip_id, "test" if clip_id in test_ids else "train", CLASSES.index(match[3]), source))
    for name, files in audio.items():
        for clip_id in sorted(set(files) - set(faces)):
            where = "VideoFlash/" if videos or frames_dir is None else f"{frames_dir.name}/"
            skipped.append({"file": str(files[clip_id]), "reason": f"no video of this clip in {where}"})
    sources = {"root": str(root), "videos": len(videos), "frame_folders": len(frames),
               "wavs": len(audio["AudioWAV"]), "mp3s": len(audio["AudioMP3"]), "expected": EXPECTED,
               "audio_from": {k: v for k, v in audio_from.items() if v or k != "AudioMP3"},
               "test_list": f"{TEST_LIST.name} ({len(test_ids)} ids)"}
    params = {"split": "standard 744-clip test list; val carved from train"}
    if frames:
        params["visual_from"] = f"{frames_dir.name}/<id>/ images (the s-th image for second s)"
    return ClipListing(items, CLASSES, skipped, sources, params)
