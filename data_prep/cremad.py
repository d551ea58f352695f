"""CREMA-D: 7,442 acted clips of 91 actors, 6 emotions; audio (speech) + visual (face frames).

Raw layout (``--raw``, the official download): ``AudioWAV/<id>.wav`` and ``VideoFlash/<id>.flv``
(``.mp4`` also accepted) with ``<id> = <actor>_<sentence>_<emotion>_<level>``, e.g.
``1001_DFA_ANG_XX``; the label is the third field. A clip needs its video; its audio comes from
``AudioWAV`` when present, else from the video's own audio track. A ``CREMA-D/`` folder under
``--raw`` is also accepted.

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
from data_prep._common import Log, choose_preset, choose_val_fraction, no_log
from data_prep.avclips import AVPreset, ClipListing, ClipSource, Published, check_common_args, prepare_clips
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
_ID = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
LAYOUT = "AudioWAV/<id>.wav and VideoFlash/<id>.flv, e.g. VideoFlash/1001_DFA_ANG_XX.flv"


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log) -> Manifest:
    """Prepare the CREMA-D cache in ``out`` from the official download in ``raw``; returns its manifest."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    check_common_args(raw, out, DATASET, LAYOUT)
    return prepare_clips(DATASET, out, list_clips(find_root(raw), PRESETS[preset]), PRESETS[preset],
                         published=PUBLISHED, strict=strict, workers=workers, log=log, seed=seed,
                         val_fraction=val_fraction)


def find_root(raw: Path) -> Path:
    """The folder holding ``VideoFlash/`` (``raw`` itself or ``raw/CREMA-D``)."""
    for root in (raw, raw / "CREMA-D"):
        if (root / "VideoFlash").is_dir():
            return root
    raise UserError(f"no VideoFlash/ folder in {raw}: point --raw at the CREMA-D download ({LAYOUT})")


def read_test_ids() -> set[str]:
    lines = TEST_LIST.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def list_clips(root: Path, preset: AVPreset) -> ClipListing:
    """Every clip with a video under ``root``; wavs without a video and unparsable names are reported as skipped."""
    videos = {p.stem: p for suffix in VIDEO_SUFFIXES for p in sorted((root / "VideoFlash").glob(f"*{suffix}"))}
    wav_dir = root / "AudioWAV"
    wavs = {p.stem: p for p in sorted(wav_dir.glob("*.wav"))} if wav_dir.is_dir() else {}
    test_ids = read_test_ids()
    items, skipped = [], []
    for clip_id, video in sorted(videos.items()):
        match = _ID.match(clip_id)
        if match is None or match[3] not in CLASSES:
            skipped.append({"file": str(video), "reason": "name is not <actor>_<sentence>_<emotion>_<level> with "
                                                          f"emotion in {' '.join(CLASSES)}"})
            continue
        wav = wavs.get(clip_id)
        source = ClipSource(video=str(video), preset=preset, audio=str(wav) if wav else None)
        items.append(Item(clip_id, "test" if clip_id in test_ids else "train", CLASSES.index(match[3]), source))
    for clip_id in sorted(set(wavs) - set(videos)):
        skipped.append({"file": str(wavs[clip_id]), "reason": f"no video VideoFlash/{clip_id}.flv"})
    with_wav = sum(it.source.audio is not None for it in items)
    sources = {"root": str(root), "videos": len(videos), "wavs": len(wavs), "expected": EXPECTED,
               "audio_from": {"AudioWAV": with_wav, "video track": len(items) - with_wav},
               "test_list": f"{TEST_LIST.name} ({len(test_ids)} ids)"}
    return ClipListing(items, CLASSES, skipped, sources, {"split": "standard 744-clip test list; val carved from train"})
