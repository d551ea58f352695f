"""Audio-visual clip datasets (CREMA-D, Kinetics-Sounds, AVE): presets, per-clip decoding, the shared
preparation flow.

Each clip becomes two modalities:

- ``audio`` (kind audio): float16 ``[1, F, T]``: ``log_stft`` (``ogmge`` presets) or ``kaldi_fbank``
  (``fbank`` presets), see ``data_prep.audio_features``;
- ``visual`` (kind video): uint8 ``[n_frames, 3, 224, 224]``: frames sampled at 1 fps from the
  middle of chosen seconds (``data_prep.media.frame_indices``), resized with PIL bilinear. Training
  augmentation (random resized crop, flip) is done on these at load time, not baked in.

A dataset module lists its clips as ``clipstore.Item``s whose ``source`` is a ``ClipSource`` and
calls ``prepare_clips``.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, carve_validation, carve_warnings, write_manifest
from bogc_cli.data.lfs import FIX as LFS_FIX
from bogc_cli.data.lfs import is_lfs_pointer
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, count_mismatch, digest, file_list_checksum, log_problems,
                               require_samples, reusable_manifest, start_rewrite)
from data_prep.audio_features import kaldi_fbank, log_stft
from data_prep.clipstore import WARNING, Item, build_store
from data_prep.media import blank_warning, read_audio, read_frame_images, read_frames, silence_warning

KINDS = {"audio": "audio", "visual": "video"}


@dataclass(frozen=True)
class AVPreset:
    """How raw clips become arrays; every field is recorded in the manifest."""

    name: str
    audio_features: str  # "log_stft" or "kaldi_fbank"
    sample_rate: int
    seconds: float  # log_stft: the wave is tiled/cut to this length
    frame_seconds: tuple[int, ...]  # the seconds whose middle frame is kept
    frame_size: int = 224
    n_fft: int = 512
    hop: int = 353
    fbank_frames: int = 0  # kaldi_fbank: frames kept (10 ms each)
    mel_bins: int = 128
    reference: str = ""

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        if self.audio_features == "log_stft":
            return (1, self.n_fft // 2 + 1, 1 + int(round(self.seconds * self.sample_rate)) // self.hop)
        return (1, self.mel_bins, self.fbank_frames)

    @property
    def visual_shape(self) -> tuple[int, int, int, int]:
        return (len(self.frame_seconds), 3, self.frame_size, self.frame_size)

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (0, "")}
        if self.audio_features == "log_stft":
            out.pop("mel_bins", None)
            out["audio"] = ("wave tiled to `seconds`, clipped to [-1, 1], log(|STFT| + 1e-7), periodic Hann, "
                            "centred, reflect padding; not normalised")
        else:
            out.pop("n_fft", None), out.pop("hop", None), out.pop("seconds", None)
            out["audio"] = ("Kaldi fbank of the mean-removed wave (25 ms Hann, 10 ms shift, no dither), zero-padded/"
                            "cut to `fbank_frames`, (x + 4.2677393) / (2 * 4.5689974) as AST")
        out["visual"] = ("frame nearest the middle of each of `frame_seconds` (wrapping into the last second when "
                         "the clip is shorter), RGB, PIL bilinear resize to frame_size x frame_size, uint8")
        out["audio_shape"], out["visual_shape"] = list(self.audio_shape), list(self.visual_shape)
        return out


@dataclass(frozen=True)
class ClipSource:
    """Where one clip's media are: ``video`` (a container), optionally a separate ``audio`` file (without
    one, the video's own audio track is used) and optionally ``frames``, a folder of frames extracted at
    1 fps (used instead of the video's frames; then ``video`` may be None)."""

    video: str | None
    preset: AVPreset
    audio: str | None = None
    frames: str | None = None

    def describe(self) -> str:
        return str(self.video or self.frames or self.audio)

    def files(self) -> list[str]:
        return [p for p in (self.video, self.audio, self.frames) if p]


def decode_clip(item: Item) -> dict[str, np.ndarray]:
    """One clip -> ``{"audio": float16 [1, F, T], "visual": uint8 [n, 3, S, S]}`` (module level: runs in workers),
    with a ``WARNING`` when the audio is silent or the frames blank."""
    src: ClipSource = item.source
    p = src.preset
    wave = read_audio(Path(src.audio or src.video), p.sample_rate)
    if p.audio_features == "log_stft":
        audio = log_stft(wave, p.sample_rate, p.seconds, p.n_fft, p.hop)
    else:
        audio = kaldi_fbank(wave, p.sample_rate, p.fbank_frames, p.mel_bins)
    if src.frames:
        frames = read_frame_images(Path(src.frames), list(p.frame_seconds), p.frame_size)
    else:
        frames = read_frames(Path(src.video), list(p.frame_seconds), p.frame_size)
    out = {"audio": audio.astype(np.float16), "visual": frames}
    warnings = [w for w in (silence_warning(wave), blank_warning(frames)) if w]
    if warnings:
        out[WARNING] = "; ".join(warnings)
    return out


def index_media(folder: Path, suffixes: tuple[str, ...], skipped: list[dict[str, str]]) -> dict[str, Path]:
    """``{stem: path}`` of the files with ``suffixes`` anywhere below ``folder`` (nested copies included). A stem
    found twice is reported in ``skipped`` (the first in sorted path order is used), never chosen silently."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                       and not p.name.startswith(".")):
        if path.stem in found:
            skipped.append({"file": str(path), "reason": f"a second file for clip {path.stem} (the first, "
                                                         f"{found[path.stem]}, is used): keep one copy"})
            continue
        found[path.stem] = path
    return found


@dataclass
class ClipListing:
    """What a dataset module found under ``--raw``: clips (split = train/val/test), problems, counts."""

    items: list[Item]
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def carve_val_items(items: list[Item], fraction: float, seed: int, classes: list[str] | None = None
                    ) -> tuple[list[Item], list[str]]:
    """Move a stratified, seeded ``fraction`` of the train items to ``val`` (nothing changes when the listing
    already has val items, or ``fraction`` is 0); every class keeps a train item. Returns the items and the
    warnings of ``carve_warnings`` (classes too small to give a validation item)."""
    if fraction <= 0 or any(it.split == "val" for it in items):
        return items, []
    train = [it for it in items if it.split == "train"]
    labels = np.array([it.label for it in train], np.int64)
    _, val_rows = carve_validation(labels, fraction, seed)
    names = classes or [str(k) for k in range(int(labels.max(initial=-1)) + 1)]
    warnings = carve_warnings(labels, val_rows, names, "the raw folder")
    val_keys = {train[r].key for r in val_rows}
    return [Item(it.key, "val", it.label, it.source) if it.key in val_keys else it for it in items], warnings


@dataclass(frozen=True)
class Published:
    """A dataset's published size: clips per split, number of classes (None: fixed by the reader),
    and what to tell a user whose raw folder differs."""

    clips: dict[str, int]
    classes: int | None
    hint: str


def check_published(dataset: str, listing: ClipListing, published: Published, strict: bool, log: Log) -> None:
    """Compare the clips found per split (and the classes) with the published ones; warn, or raise when
    ``strict``; a difference is recorded in ``listing.sources["count_check"]``."""
    problems = []
    counts = {s: sum(it.split == s for it in listing.items) for s in published.clips}
    if counts != published.clips:
        found = " / ".join(f"{s} {counts[s]}" for s in published.clips)
        expected = " / ".join(f"{n:,}" for n in published.clips.values())
        problems.append(count_mismatch(f"{dataset}: the raw folder has {found} clips, not the published {expected}",
                                       strict, published.hint, log))
    if published.classes is not None and len(listing.classes) != published.classes:
        problems.append(count_mismatch(f"{dataset}: {len(listing.classes)} classes found, not {published.classes}",
                                       strict, published.hint, log))
    if problems:
        listing.sources["count_check"] = "; ".join(problems)


def check_common_args(raw: Path, out: Path, dataset: str, layout_hint: str) -> None:
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the {dataset} download ({layout_hint})")
    check_out_folder(out, raw)


def check_lfs_pointers(dataset: str, listing: ClipListing, log: Log) -> None:
    """A raw folder whose media are all Git LFS pointers (a clone without git-lfs) is refused before
    anything is decoded; some pointers among real files are skipped one by one (reported)."""
    files = [f for it in listing.items for f in it.source.files() if not Path(f).is_dir()]
    pointers = sum(is_lfs_pointer(f) for f in files)
    if files and pointers == len(files):
        raise UserError(f"every {dataset} media file under --raw ({pointers}) is a Git LFS pointer (~130 bytes of "
                        f"text), not the audio or video itself: {LFS_FIX}")
    if pointers:
        log(f"warning: {pointers} of {len(files)} media files are Git LFS pointers; their clips will be skipped "
            f"({LFS_FIX})")


def check_classes_have_training(dataset: str, listing: ClipListing, strict: bool, log: Log) -> list[str]:
    """A class with clips in val or test but none in train cannot be learnt: warn (an error with ``strict``)."""
    in_train = {it.label for it in listing.items if it.split == "train"}
    lacking = sorted({it.label for it in listing.items} - in_train)
    if not lacking:
        return []
    names = ", ".join(listing.classes[k] for k in lacking)
    message = f"{dataset}: class(es) {names} have clips in val/test but none in train: the model cannot learn them"
    if strict:
        raise UserError(f"{message} (--strict): add their training clips, or drop --strict")
    log(f"warning: {message}")
    return [message]


def prepare_clips(dataset: str, out: Path, listing: ClipListing, preset: AVPreset, *, published: Published,
                  strict: bool, workers: int, log: Log, seed: int, val_fraction: float,
                  overwrite: bool = False) -> Manifest:
    """Check ``listing`` against the ``published`` sizes, carve ``val_fraction`` of train out for validation
    (when the listing has no val split), decode the clips into the cache at ``out`` (resumable,
    ``workers`` processes) and write the manifest. A complete cache of other inputs in ``out`` is
    replaced only with ``overwrite``; a split left empty after decoding is a ``UserError`` (no manifest)."""
    if not listing.items:
        raise UserError(f"no usable {dataset} clips found under --raw"
                        + (f" ({len(listing.skipped)} file(s) skipped, e.g. {listing.skipped[0]['file']}: "
                           f"{listing.skipped[0]['reason']})" if listing.skipped else ""))
    check_lfs_pointers(dataset, listing, log)
    check_published(dataset, listing, published, strict, log)
    class_warnings = check_classes_have_training(dataset, listing, strict, log)
    official_val = any(it.split == "val" for it in listing.items)
    listing.items, carve_problems = carve_val_items(listing.items, val_fraction, seed, listing.classes)
    for problem in carve_problems:
        if strict:
            raise UserError(f"{dataset}: {problem} (--strict): add training clips, or drop --strict")
        log(f"warning: {problem}")
    class_warnings += carve_problems
    params = {**preset.params(), **listing.params, "seed": seed, "val_fraction": val_fraction}
    media = sorted({Path(p) for it in listing.items for p in it.source.files()})
    sources = {**listing.sources, "clips_listed": len(listing.items), "media_files": len(media),
               "file_list_sha256": file_list_checksum(media)}
    fingerprint = digest({"dataset": dataset, "params": params, "sources": sources, "version": __version__,
                          "items": [(it.key, it.split, it.label) for it in listing.items]})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this {dataset} cache; nothing to do")
        return done
    counts = {s: sum(it.split == s for it in listing.items) for s in ("train", "val", "test")}
    empty = [s for s in ("train", "test") if counts[s] == 0]
    if empty:
        raise UserError(f"no {dataset} clips of the {' or '.join(empty)} split found under --raw "
                        f"({sum(counts.values())} clips found): a cache needs both train and test clips")
    log(f"preparing {len(listing.items)} {dataset} clips (train {counts['train']}, val {counts['val']}, "
        f"test {counts['test']}) with preset {preset.name}, {workers} worker(s)")
    start_rewrite(out)
    layout = {"audio": (preset.audio_shape, "float16"), "visual": (preset.visual_shape, "uint8")}
    splits, skipped, warnings = build_store(out, listing.items, layout, decode_clip, fingerprint=fingerprint,
                                            workers=workers, log=log, noun="clips")
    skipped = listing.skipped + skipped
    log_problems(log, skipped, warnings)
    require_samples(dataset, {s: len(a) for s, a in splits.items() if s != "val" or official_val}, skipped)
    if "val" in splits and not len(splits["val"]):
        warnings.append("every clip carved out for validation was skipped: the cache has no val split (training "
                        "carves one from train, and says so)")
        log(f"warning: {warnings[-1]}")
        splits.pop("val")
        shutil.rmtree(out / "val", ignore_errors=True)
    written = sum(len(s) for s in splits.values())
    log(f"wrote {written} clips, skipped {len(skipped)}")
    return write_manifest(out, dataset=dataset, classes=listing.classes, kinds=KINDS, splits=splits,
                          preset=preset.name, params=params, sources={**sources, "fingerprint": fingerprint},
                          skipped=skipped, warnings=class_warnings + warnings)
