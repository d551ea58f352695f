"""Kinetics-Sounds: 31 Kinetics-400 action classes that can be heard (Arandjelovic & Zisserman, 2017);
10-s YouTube clips, audio + visual.

Raw layouts read under ``--raw`` (or a sub-folder up to two levels down):

- folders: ``train/<class>/<id>.mp4`` and ``test/<class>/<id>.mp4`` (``val/`` too if you have one);
  classes are the folder names, sorted;
- lists: ``train.txt`` and ``test.txt`` (or OGM-GE's ``my_train.txt`` / ``my_test.txt``, or ``.csv``) with
  one clip per line, ``<id>,<label>`` or ``<id>,<duration>,<label>`` (the label last), plus the videos
  ``<id>.mp4`` anywhere below ``--raw`` (e.g. ``videos/``). A label is a class name, or an index
  named by an optional ``classes.txt`` (one class per line);
- Kinetics' own annotation CSVs (``train.csv``, ``validate.csv``/``val.csv``, ``test.csv`` with the header
  ``label,youtube_id,time_start,time_end,split``), with the videos named as the Kinetics download
  scripts name them, ``<youtube_id>_<start:06d>_<end:06d>.mp4`` (or ``<youtube_id>.mp4``, or OGM-GE's
  ``<youtube_id>_<start>.mp4``). These list all 400 Kinetics classes: ``classes.txt`` must then name the
  Kinetics-Sounds classes to keep (refused without it); clips of other classes are left out and counted.

Video containers: mp4, mkv, webm, avi, flv. The audio is the clip's own audio track (a clip without one
is skipped and reported). Reported and left out, never silently used: a listed clip without a video,
two files for one clip id, a clip listed (or filed) in both train and test (kept in test only: in both
it would leak test clips into training), and files that cannot be decoded. Published sizes: 14,799
train / 2,597 test; val is carved from train (``val_fraction``, default 0.1).
"""

from __future__ import annotations

from pathlib import Path

from bogc_cli.data.cache import Manifest
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import Log, choose_preset, choose_val_fraction, folders_below, no_log
from data_prep.avclips import (AVPreset, ClipListing, ClipSource, Published, check_common_args, index_media,
                               prepare_clips)
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
LIST_NAMES = {"train": ("train.txt", "my_train.txt", "train.csv"),
              "val": ("val.txt", "my_val.txt", "val.csv", "validate.csv"),
              "test": ("test.txt", "my_test.txt", "test.csv")}
SEARCH_DEPTH = 2


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the Kinetics-Sounds cache in ``out`` from ``raw`` (see the module doc for the layouts read)."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    check_common_args(raw, out, DATASET, LAYOUT)
    return prepare_clips(DATASET, out, list_clips(raw, PRESETS[preset]), PRESETS[preset], published=PUBLISHED,
                         strict=strict, workers=workers, log=log, seed=seed, val_fraction=val_fraction,
                         overwrite=overwrite)


def _lists_in(folder: Path) -> dict[str, Path | None]:
    return {split: next((folder / n for n in names if (folder / n).is_file()), None)
            for split, names in LIST_NAMES.items()}


def list_clips(raw: Path, preset: AVPreset) -> ClipListing:
    """Clips from the folder layout when a ``train/`` folder of class folders is found, else from list files
    (``raw`` and its sub-folders up to two levels down are searched, in that order)."""
    folders = folders_below(raw, SEARCH_DEPTH)
    for root in folders:
        if (root / "train").is_dir() and any(d.is_dir() for d in (root / "train").iterdir()):
            return _from_folders(root, preset)
        lists = _lists_in(root)
        if lists["train"] is not None and lists["test"] is not None:
            return _from_lists(root, {s: p for s, p in lists.items() if p is not None}, preset, raw)
    raise UserError(f"{raw} has neither train/ and test/ class folders nor train.txt and test.txt lists: "
                    f"expected {LAYOUT}")


def _keep_test_copy(items: list[Item], skipped: list[dict[str, str]]) -> list[Item]:
    """A clip id in test and in train or val is kept in test only (reported): in both it would leak."""
    in_test = {it.key.split("/")[-1] for it in items if it.split == "test"}
    kept = []
    for it in items:
        if it.split != "test" and it.key.split("/")[-1] in in_test:
            skipped.append({"file": it.source.describe(), "reason": f"clip {it.key} is also in the test split: kept "
                                                                    "there only (in both it would leak into training)"})
            continue
        kept.append(it)
    return kept


def _from_folders(raw: Path, preset: AVPreset) -> ClipListing:
    splits = [s for s in ("train", "val", "test") if (raw / s).is_dir()]
    if "test" not in splits:
        raise UserError(f"{raw} has train/ but no test/ folder: expected {LAYOUT}")
    classes = sorted({d.name for s in splits for d in (raw / s).iterdir() if d.is_dir()})
    items, skipped = [], []
    for split in splits:
        for cls in sorted(d for d in (raw / split).iterdir() if d.is_dir()):
            for stem, video in index_media(cls, VIDEO_SUFFIXES, skipped).items():
                items.append(Item(f"{cls.name}/{stem}", split, classes.index(cls.name),
                                  ClipSource(video=str(video), preset=preset)))
    items = _keep_test_copy(items, skipped)
    return ClipListing(items, classes, skipped, {"layout": "folders", "root": str(raw)}, {"split": "folders"})


def _from_lists(root: Path, lists: dict[str, Path], preset: AVPreset, raw: Path) -> ClipListing:
    skipped: list[dict[str, str]] = []
    videos = index_media(raw, VIDEO_SUFFIXES, skipped)
    named = _class_names(root)
    rows = {split: _read_list(path) for split, path in lists.items()}
    kinetics_csv = any(len(ids) > 1 for entries in rows.values() for ids, _ in entries)
    labels = sorted({label for entries in rows.values() for _, label in entries})
    numeric = all(label.isdigit() for label in labels)
    outside = 0
    if kinetics_csv and named is None and len(labels) > EXPECTED_CLASSES:
        raise UserError(f"{lists['train']} is a Kinetics annotation list with {len(labels)} classes (Kinetics-400's): "
                        f"put the {EXPECTED_CLASSES} Kinetics-Sounds class names in {root / 'classes.txt'}, one per "
                        "line, to keep their clips")
    if numeric:
        top = max(int(label) for label in labels)
        classes = named or [str(i) for i in range(top + 1)]
        if top >= len(classes):
            raise UserError(f"{root / 'classes.txt'} names {len(classes)} classes but the lists use label {top}")
    else:
        classes = named or labels
    items, listed = [], set()
    for split, entries in rows.items():
        for ids, label in entries:
            if not numeric and label not in classes:
                outside += 1  # a class classes.txt does not keep (e.g. the other Kinetics-400 classes)
                continue
            video = next((videos[i] for i in ids if i in videos), None)
            if video is None:
                skipped.append({"file": f"{lists[split].name}: {ids[0]}",
                                "reason": f"no video file {' or '.join(f'{i}.mp4' for i in ids)} found"})
                continue
            if (split, video.stem) in listed:
                skipped.append({"file": f"{lists[split].name}: {ids[0]}", "reason": "listed twice: used once"})
                continue
            listed.add((split, video.stem))
            index = int(label) if numeric else classes.index(label)
            items.append(Item(video.stem, split, index, ClipSource(video=str(video), preset=preset)))
    items = _keep_test_copy(items, skipped)
    sources = {"layout": "kinetics csv" if kinetics_csv else "lists",
               "lists": {s: p.name for s, p in lists.items()}, "root": str(root)}
    if outside:
        sources["clips_of_other_classes"] = outside
    return ClipListing(items, classes, skipped, sources, {"split": "list files"})


def _read_list(path: Path) -> list[tuple[list[str], str]]:
    """``(candidate clip ids, label)`` per line: one id for ``<id>,[<duration>,]<label>`` lines; for Kinetics'
    CSV (header ``label,youtube_id,time_start,time_end,...``) the names its download scripts give a clip."""
    import csv

    refuse_pointer(path)
    text = path.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text.strip() else ""
    if "youtube_id" in first:
        entries = []
        reader = csv.DictReader(text.splitlines())
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path} has a youtube_id column but not {', '.join(sorted(missing))}: expected Kinetics' "
                            "header label,youtube_id,time_start,time_end,split")
        for number, row in enumerate(reader, start=2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise UserError(f"{path} line {number}: time_start/time_end are not numbers ({row})") from None
            yt = row["youtube_id"].strip()
            entries.append(([f"{yt}_{start:06d}_{end:06d}", yt, f"{yt}_{start}"], row["label"].strip()))
        return entries
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = [f.strip() for f in line.replace("\t", ",").split(",")]
        if not fields[0]:
            continue
        if len(fields) < 2:
            raise UserError(f"{path} line {number} is {line!r}: expected <id>,<label> or <id>,<duration>,<label>")
        entries.append(([Path(fields[0]).stem], fields[-1]))
    return entries


def _class_names(raw: Path) -> list[str] | None:
    path = raw / "classes.txt"
    if not path.is_file():
        return None
    refuse_pointer(path)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
