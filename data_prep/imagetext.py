"""Image + text datasets (UPMC Food-101, MVSA-Single): the shared preparation flow.

A dataset module lists its samples as ``Pair``s (key, split, label, image file, text already read and
checked) and calls ``prepare_pairs``, which:

- fingerprints the listing, the texts and the parameters (the existing-cache rule of every preparer:
  same inputs -> nothing to do, other -> refused unless ``overwrite``, interrupted -> resumed);
- decodes the images with PIL into ``image`` uint8 ``[3, S, S]`` (``S`` the preset's size: RGB, resized
  to S x S with bilinear interpolation, the aspect ratio not kept, as CGGM's and MMBT's
  ``transforms.Resize([S, S])`` do), resumable and in ``workers`` processes (``data_prep.clipstore``);
  a missing, empty, truncated or corrupt image, or a Git LFS pointer, skips its sample (reported);
- tokenises the kept samples' texts (``data_prep.text``: the ``--tokenizer`` directory's tokenizer, or a
  word vocabulary fitted on the kept TRAIN texts) into ``text`` int32 ``[2, L]``;
- writes the manifest (kinds ``image`` and ``text``, the tokenizer's description) last.

Presets (``--preset``) only choose the image size: ``px224`` (default: the 224 x 224 of ViT-B/16 and of
CGGM's Food-101 loader), ``px128``, ``px64`` (small from-scratch runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, carve_validation, carve_warnings, write_manifest
from bogc_cli.data.lfs import FIX as LFS_FIX
from bogc_cli.data.lfs import POINTER_REASON, is_lfs_pointer
from bogc_cli.errors import UserError
from data_prep._common import (Log, count_mismatch, digest, file_list_checksum, log_problems, require_samples,
                               reusable_manifest, start_rewrite)
from data_prep.clipstore import Item, SkipItem, build_store
from data_prep.text import PretrainedTokenizer, check_max_length, text_fingerprint, tokenise_splits

PRESETS = {"px224": 224, "px128": 128, "px64": 64}
DEFAULT_PRESET = "px224"
KINDS = {"image": "image", "text": "text"}


@dataclass(frozen=True)
class ImageSource:
    """The image file of one sample and the size it is decoded to (an ``Item.source``; it pickles)."""

    path: str
    size: int

    def describe(self) -> str:
        return self.path


@dataclass(frozen=True)
class Pair:
    """One image-text sample as listed: unique ``key`` (stored in ids.txt), ``split``, class index ``label``,
    the image file and the text (already read; non-empty)."""

    key: str
    split: str
    label: int
    image: Path
    text: str


@dataclass
class PairListing:
    """What a dataset module found under ``--raw``: the pairs, the class names, the rows or files left out
    (``{"file", "reason"}``), and what the manifest records about the source and the parameters."""

    pairs: list[Pair]
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def read_image(path: str | Path, size: int) -> np.ndarray:
    """The image at ``path`` as RGB uint8 ``[3, size, size]`` (PIL bilinear resize, aspect not kept).

    Raises ``SkipItem``: a missing or empty file, a Git LFS pointer, or a file PIL cannot decode (not an
    image, truncated, corrupt)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise SkipItem(f"missing image {path.name}")
    if path.stat().st_size == 0:
        raise SkipItem("empty image file (0 bytes)")
    if is_lfs_pointer(path):
        raise SkipItem(POINTER_REASON)
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SkipItem(f"corrupt image ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def decode_image(item: Item) -> dict[str, np.ndarray]:
    """``clipstore`` decode function: ``{"image": uint8 [3, S, S]}`` of the item's ``ImageSource``."""
    source: ImageSource = item.source
    return {"image": read_image(source.path, source.size)}


def read_text_file(path: Path) -> str:
    """A sample's text file, stripped: UTF-8, else Latin-1 (tweets of MVSA are saved in either). Raises
    ``SkipItem`` when it is missing, unreadable, a Git LFS pointer or empty (only whitespace)."""
    if not path.is_file():
        raise SkipItem(f"missing text file {path.name}")
    if is_lfs_pointer(path):
        raise SkipItem(POINTER_REASON)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SkipItem(f"unreadable text file ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    text = text.replace("\x00", " ").strip()
    if not text:
        raise SkipItem("empty text")
    return text


def split_off(pairs: list[Pair], fraction: float, seed: int, into: str, source: str = "train"
              ) -> tuple[list[Pair], np.ndarray, np.ndarray]:
    """Move a stratified, seeded ``fraction`` of the ``source`` pairs to split ``into``
    (``bogc_cli.data.cache.carve_validation``: every class keeps a ``source`` pair). Returns the pairs, the
    ``source`` labels ``[n]`` and the carved rows among them (for ``carve_warnings``)."""
    rows = [i for i, p in enumerate(pairs) if p.split == source]
    labels = np.array([pairs[i].label for i in rows], np.int64)
    _, carved = carve_validation(labels, fraction, seed)
    moved = {rows[r] for r in carved}
    out = [Pair(p.key, into, p.label, p.image, p.text) if i in moved else p for i, p in enumerate(pairs)]
    return out, labels, carved


def check_arguments(dataset: str, raw: Path, out: Path, preset: str | None, val_fraction: float | None,
                    default_val_fraction: float, layout: str) -> tuple[Path, Path, str, float]:
    """A preparer's arguments checked before anything is read: the preset (or the default) and the validation
    share, ``raw`` an existing folder (else ``UserError`` naming the expected ``layout``) and ``out`` a folder
    the cache may be written to. Returns ``raw``, ``out``, the preset and the share."""
    from data_prep._common import check_out_folder, choose_preset, choose_val_fraction

    raw, out = Path(raw), Path(out)
    preset = choose_preset(dataset, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, default_val_fraction)
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the {dataset} download ({layout})")
    check_out_folder(out, raw)
    return raw, out, preset, val_fraction


def prepare_pairs(dataset: str, out: Path, listing: PairListing, *, preset: str, seed: int, strict: bool,
                  workers: int, log: Log, overwrite: bool, tokenizer: str | Path | None,
                  max_length: int | None, default_max_length: int, warnings: list[str] | None = None) -> Manifest:
    """Decode, tokenise and write ``listing`` (its splits already decided) as the cache at ``out`` (see the
    module doc). ``default_max_length`` is the dataset's ``--max-length`` default. ``UserError``: no pair
    listed, every image a Git LFS pointer, an empty train or test split after decoding, a bad
    ``--tokenizer``."""
    pairs = listing.pairs
    if not pairs:
        raise UserError(f"no usable {dataset} sample found under --raw"
                        + (f" ({len(listing.skipped)} left out, e.g. {listing.skipped[0]['file']}: "
                           f"{listing.skipped[0]['reason']})" if listing.skipped else ""))
    images = [p.image for p in pairs]
    pointers = sum(is_lfs_pointer(f) for f in images)
    if pointers == len(images):
        raise UserError(f"every {dataset} image under --raw ({pointers}) is a Git LFS pointer (~130 bytes of text), "
                        f"not the image itself: {LFS_FIX}")
    warnings = list(warnings or [])
    untrained = sorted({p.label for p in pairs} - {p.label for p in pairs if p.split == "train"})
    if untrained:
        names = ", ".join(listing.classes[k] for k in untrained[:10])
        message = f"{dataset}: class(es) {names} have pairs in val/test but none in train: the model cannot learn them"
        if strict:
            raise UserError(f"{message} (--strict): add their training pairs, or drop --strict")
        log(f"warning: {message}")
        warnings.append(message)
    length = check_max_length(default_max_length if max_length is None else max_length)
    text_params = text_fingerprint(tokenizer, length)  # checks a --tokenizer directory before any work
    pretrained = PretrainedTokenizer(tokenizer) if tokenizer is not None else None
    size = PRESETS[preset]
    params = {**listing.params, "image": f"RGB, resized to {size}x{size} (PIL bilinear, aspect not kept), uint8",
              "image_size": size, "max_length": length, "seed": seed,
              "tokenizer": "pretrained (--tokenizer)" if pretrained else "word vocabulary of the train split"}
    sources = {**listing.sources, "pairs_listed": len(pairs), "file_list_sha256": file_list_checksum(images)}
    fingerprint = digest({"dataset": dataset, "params": params, "sources": sources, "version": __version__,
                          "text": text_params, "items": [(p.key, p.split, p.label, p.text) for p in pairs]})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this {dataset} cache; nothing to do")
        return done
    counts = {s: sum(p.split == s for p in pairs) for s in ("train", "val", "test")}
    log(f"preparing {len(pairs)} {dataset} image-text pairs (train {counts['train']}, val {counts['val']}, test "
        f"{counts['test']}) at {size}x{size}, {workers} worker(s)")
    start_rewrite(out)
    items = [Item(p.key, p.split, p.label, ImageSource(str(p.image), size)) for p in pairs]
    splits, skipped, decode_warnings = build_store(out, items, {"image": ((3, size, size), "uint8")}, decode_image,
                                                   fingerprint=fingerprint, workers=workers, log=log, noun="images")
    skipped = listing.skipped + skipped
    log_problems(log, skipped, [])
    require_samples(dataset, {s: len(a) for s, a in splits.items()}, skipped)
    tok = tokenise_splits(out, splits, {p.key: p.text for p in pairs}, pretrained, length)
    log(f"wrote {sum(len(s) for s in splits.values())} pairs, skipped {len(skipped)}")
    return write_manifest(out, dataset=dataset, classes=listing.classes, kinds=KINDS, splits=splits, preset=preset,
                          params=params, sources={**sources, "fingerprint": fingerprint}, skipped=skipped,
                          warnings=warnings + decode_warnings,
                          tokenizers={"text": tok.describe(length)})


def check_counts(dataset: str, found: dict[str, int], published: dict[str, int], strict: bool, log: Log,
                 what: str, fix: str) -> str | None:
    """Compare ``found`` with the ``published`` counts (same keys): a warning (an error with ``strict``) and
    the message for the manifest when they differ, else None."""
    if found == published:
        return None
    got = " / ".join(f"{k} {found.get(k, 0):,}" for k in published)
    expected = " / ".join(f"{k} {n:,}" for k, n in published.items())
    return count_mismatch(f"{dataset}: {what} {got}, not the published {expected}", strict, fix, log)


def carve_problems(dataset: str, labels: np.ndarray, carved: np.ndarray, classes: list[str], strict: bool,
                   log: Log) -> list[str]:
    """``carve_warnings`` of a validation carve-out, logged (an error with ``strict``)."""
    problems = carve_warnings(labels, carved, classes, "the train split")
    for problem in problems:
        if strict:
            raise UserError(f"{dataset}: {problem} (--strict): use the complete data, or drop --strict")
        log(f"warning: {problem}")
    return problems
