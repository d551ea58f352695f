"""Kinetics-Sounds: 31 Kinetics-400 action classes that can be heard (Arandjelovic & Zisserman, 2017);
10-s YouTube clips, audio + visual.

Raw layouts accepted under ``--raw``:

- folders: ``train/<class>/<id>.mp4`` and ``test/<class>/<id>.mp4`` (``val/`` too if you have one);
  classes are the folder names, sorted;
- lists: ``train.txt`` and ``test.txt`` (or OGM-GE's ``my_train.txt`` / ``my_test.txt``) with one clip
  per line, ``<id>,<label>`` or ``<id>,<duration>,<label>`` (the label last), plus the videos
  ``<id>.mp4`` anywhere below ``--raw`` (e.g. ``videos/``). A label is a class name, or an index
  named by an optional ``classes.txt`` (one class per line).

The audio is the clip's own audio track (a clip without one is skipped and reported). Published
sizes: 14,799 train / 2,597 test; val is carved from train (``val_fraction``, default 0.1).
"""

from __future__ import annotations

from pathlib import Path

from bogc_cli.data.cache import Manifest
from bogc_cli.errors import UserError
from data_prep._common import Log, choose_preset, choose_val_fraction, no_log
from data_prep.avclips import AVPreset, ClipListing, ClipSource, Published, check_common_args, prepare_clips
from data_prep.clipstore import Item

DATASET = "kinetics_sounds"
EXPECTED = {"train": 14799, "test": 2597}
EXPECTED_CLASSES = 31
PUBLISHED = Published(EXPECTED, EXPECTED_CLASSES, "use the complete Kinetics-Sounds download and lists")
DEFAULT_VAL_FRACTION = 0.1
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".flv")
TEN_SECONDS_FRAMES = (0, 4, 9)  # three of the ten 1-fps frames, spread over the clip
PRESETS = {
    "ogmge": AVPreset("ogmge", "log_stft", sample_rate=16000, seconds=10.0, frame_seconds=TEN_SECONDS_FRAMES,
                      reference="OGM-GE-style: 16 kHz tiled to 10 s, stft n_fft 512 hop 353, log; 1-fps frames"),
    "fbank": AVPreset("fbank", "kaldi_fbank", sample_rate=16000, seconds=10.0, frame_seconds=TEN_SECONDS_FRAMES,
                      fbank_frames=1024, reference="AST-style 128-bin Kaldi fbank, 1,024 frames"),
}
DEFAULT_PRESET = "ogmge"
LAYOUT = "train/<class>/<id>.mp4 + test/<class>/<id>.mp4, or train.txt + test.txt lists and the videos"
LIST_NAMES = {"train": ("train.txt", "my_train.txt", "train.csv"), "val": ("val.txt", "my_val.txt", "val.csv"),
              "test": ("test.txt", "my_test.txt", "test.csv")}


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log) -> Manifest:
    """Prepare the Kinetics-Sounds cache in ``out`` from ``raw``; returns its manifest."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    check_common_args(raw, out, DATASET, LAYOUT)
    return prepare_clips(DATASET, out, list_clips(raw, PRESETS[preset]), PRESETS[preset], published=PUBLISHED,
                         strict=strict, workers=workers, log=log, seed=seed, val_fraction=val_fraction)


def list_clips(raw: Path, preset: AVPreset) -> ClipListing:
    """Clips from the folder layout when ``raw/train`` is a folder, else from the list files."""
    if (raw / "train").is_dir():
        return _from_folders(raw, preset)
    lists = {split: next((raw / n for n in names if (raw / n).is_file()), None) for split, names in LIST_NAMES.items()}
    if lists["train"] is None or lists["test"] is None:
        raise UserError(f"{raw} has neither train/ and test/ class folders nor train.txt and test.txt lists: "
                        f"expected {LAYOUT}")
    return _from_lists(raw, {s: p for s, p in lists.items() if p is not None}, preset)


def _from_folders(raw: Path, preset: AVPreset) -> ClipListing:
    splits = [s for s in ("train", "val", "test") if (raw / s).is_dir()]
    if "test" not in splits:
        raise UserError(f"{raw} has train/ but no test/ folder: expected {LAYOUT}")
    classes = sorted({d.name for s in splits for d in (raw / s).iterdir() if d.is_dir()})
    items = []
    for split in splits:
        for cls in sorted(d for d in (raw / split).iterdir() if d.is_dir()):
            for video in sorted(p for p in cls.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
                items.append(Item(f"{cls.name}/{video.stem}", split, classes.index(cls.name),
                                  ClipSource(video=str(video), preset=preset)))
    return ClipListing(items, classes, [], {"layout": "folders", "root": str(raw)}, {"split": "folders"})


def _from_lists(raw: Path, lists: dict[str, Path], preset: AVPreset) -> ClipListing:
    videos = {p.stem: p for p in sorted(raw.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES}
    named = _class_names(raw)
    rows = {split: _read_list(path) for split, path in lists.items()}
    labels = sorted({label for entries in rows.values() for _, label in entries})
    numeric = all(label.isdigit() for label in labels)
    if numeric:
        top = max(int(label) for label in labels)
        classes = named or [str(i) for i in range(top + 1)]
        if top >= len(classes):
            raise UserError(f"{raw / 'classes.txt'} names {len(classes)} classes but the lists use label {top}")
    else:
        classes = labels
    items, skipped = [], []
    for split, entries in rows.items():
        for clip_id, label in entries:
            video = videos.get(clip_id)
            if video is None:
                skipped.append({"file": f"{lists[split].name}: {clip_id}", "reason": "no video file <id>.mp4 found"})
                continue
            index = int(label) if numeric else classes.index(label)
            items.append(Item(clip_id, split, index, ClipSource(video=str(video), preset=preset)))
    return ClipListing(items, classes, skipped, {"layout": "lists", "lists": {s: p.name for s, p in lists.items()},
                                                 "root": str(raw)}, {"split": "list files"})


def _read_list(path: Path) -> list[tuple[str, str]]:
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = [f.strip() for f in line.replace("\t", ",").split(",")]
        if not fields[0]:
            continue
        if len(fields) < 2:
            raise UserError(f"{path} line {number} is {line!r}: expected <id>,<label> or <id>,<duration>,<label>")
        entries.append((Path(fields[0]).stem, fields[-1]))
    return entries


def _class_names(raw: Path) -> list[str] | None:
    path = raw / "classes.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
