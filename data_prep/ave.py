"""AVE (Audio-Visual Event, Tian et al., ECCV 2018): 4,143 10-s YouTube clips, 28 event classes.

Raw layout (``--raw``: the official ``AVE_Dataset`` folder, or a folder up to three levels above it, as
the Google Drive zip unpacks): ``AVE/<VideoID>.mp4``, and the official lists ``trainSet.txt``,
``valSet.txt``, ``testSet.txt`` (``Annotations.txt`` names every clip and fixes the class list), one clip
per line as ``Category&VideoID&Quality&StartTime&EndTime``. The videos may sit in ``AVE/``, beside the
lists, or in nested folders below them (mp4, mkv, webm, avi, flv). The whole 10-s clip is used (its
event boundaries are not needed for classification). Published sizes: 3,339 / 402 / 402.

Reported and left out, never silently used: a listed clip whose video is missing, two files for one
VideoID, a VideoID listed in two sets (kept in test, then val: in two sets it would leak), and files
that cannot be decoded. The pre-computed feature files some repositories share (``*.h5``) are not the
dataset: a folder holding only those is refused with what to download.
"""

from __future__ import annotations

from pathlib import Path

from bogc_cli.data.cache import Manifest
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import Log, choose_preset, folders_below, no_log
from data_prep.avclips import (AVPreset, ClipListing, ClipSource, Published, check_common_args, index_media,
                               prepare_clips)
from data_prep.clipstore import Item

DATASET = "ave"
EXPECTED = {"train": 3339, "val": 402, "test": 402}
EXPECTED_CLASSES = 28
PUBLISHED = Published(EXPECTED, EXPECTED_CLASSES, "use the complete AVE download")
SET_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
PRESETS = {
    "ogmge": AVPreset("ogmge", "log_stft", sample_rate=16000, seconds=10.0, frame_seconds=(0, 4, 9),
                      reference="OGM-GE-style: 16 kHz tiled to 10 s, stft n_fft 512 hop 353, log; 1-fps frames"),
}
DEFAULT_PRESET = "ogmge"
LAYOUT = "AVE/<VideoID>.mp4, Annotations.txt, trainSet.txt, valSet.txt, testSet.txt"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".flv")
SEARCH_DEPTH = 3


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the AVE cache in ``out`` from ``raw``; AVE has an official val list, so ``val_fraction`` must be unset."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    if val_fraction is not None:
        raise UserError("AVE has an official validation list (valSet.txt): drop --val-fraction")
    check_common_args(raw, out, DATASET, LAYOUT)
    return prepare_clips(DATASET, out, list_clips(find_root(raw), PRESETS[preset]), PRESETS[preset],
                         published=PUBLISHED, strict=strict, workers=workers, log=log, seed=seed, val_fraction=0.0,
                         overwrite=overwrite)


def find_root(raw: Path) -> Path:
    """The folder holding ``trainSet.txt``: ``raw`` or a sub-folder up to three levels down."""
    folders = folders_below(raw, SEARCH_DEPTH)
    for root in folders:
        if (root / SET_FILES["train"]).is_file():
            return root
    features = sorted(p.name for p in raw.rglob("*.h5"))[:3]
    if features:
        raise UserError(f"{raw} holds pre-computed AVE features ({', '.join(features)}) but not the dataset: bogc "
                        f"prepares from the videos and lists of the official AVE_Dataset download ({LAYOUT})")
    raise UserError(f"no {SET_FILES['train']} in {raw} or below it: point --raw at the AVE_Dataset folder ({LAYOUT})")


def read_set(path: Path) -> list[tuple[str, str]]:
    """``(category, video_id)`` per line of an AVE list; the header line is left out."""
    if not path.is_file():
        raise UserError(f"missing AVE list {path}: the official download has {', '.join(SET_FILES.values())}")
    refuse_pointer(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("&")
        if len(fields) < 2:
            raise UserError(f"{path} line {number} is {line!r}: expected Category&VideoID&Quality&StartTime&EndTime")
        if fields[1].strip() == "VideoID":
            continue
        rows.append((fields[0].strip(), fields[1].strip()))
    return rows


def list_clips(root: Path, preset: AVPreset) -> ClipListing:
    sets = {split: read_set(root / name) for split, name in SET_FILES.items()}
    annotations = root / "Annotations.txt"
    categories = [c for c, _ in read_set(annotations)] if annotations.is_file() else []
    classes = sorted(set(categories) | {c for rows in sets.values() for c, _ in rows})
    skipped: list[dict[str, str]] = []
    videos = index_media(root, VIDEO_SUFFIXES, skipped)
    split_of: dict[str, str] = {}
    for split in ("test", "val", "train"):  # a VideoID in two sets stays in test, then val
        for _, video_id in sets[split]:
            if video_id in split_of:
                if split_of[video_id] != split:
                    skipped.append({"file": f"{SET_FILES[split]}: {video_id}",
                                    "reason": f"also listed in {SET_FILES[split_of[video_id]]}: kept there only (in two "
                                              "sets it would leak)"})
                continue
            split_of[video_id] = split
    items, added = [], set()
    for split, rows in sets.items():
        for category, video_id in rows:
            if split_of.get(video_id) != split:
                continue
            if video_id in added:
                skipped.append({"file": f"{SET_FILES[split]}: {video_id}", "reason": "listed twice: used once"})
                continue
            added.add(video_id)
            video = videos.get(video_id)
            if video is None:
                skipped.append({"file": str(root / "AVE" / f"{video_id}.mp4"), "reason": "listed but missing"})
                continue
            items.append(Item(video_id, split, classes.index(category), ClipSource(video=str(video), preset=preset)))
    sources = {"root": str(root), "lists": SET_FILES, "expected": EXPECTED}
    return ClipListing(items, classes, skipped, sources, {"split": "official trainSet/valSet/testSet lists"})
