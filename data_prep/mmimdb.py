"""MM-IMDb (Arevalo et al., "Gated Multimodal Units for Information Fusion", ICLR-W 2017): movie genre from the
poster and the plot, 23 genres, multi-label.

Raw layout (``--raw``: the folder itself or one of its sub-folders up to two levels down, e.g. the
``mmimdb/`` that the official ``mmimdb.tar.gz`` unpacks to)::

    split.json            {"train": [ids], "dev": [ids], "test": [ids]}: 15,552 / 2,608 / 7,799 movies
    dataset/<id>.jpeg     the poster
    dataset/<id>.json     IMDb metadata; read: "plot" (a list of plot texts) and "genres" (a list of names)

Rules, as the dataset's authors' ``make_dataset.py`` (github johnarevalo/gmu-mmimdb) makes them:

- **genres**: the 23 most frequent ones, ``GENRES``, one multi-hot column each, in the authors' order (most
  frequent first: the ``target_names`` their script stores in ``multimodal_imdb.hdf5``). The rarer genres
  met in the json files (News, Adult, Talk-Show, Reality-TV) are left out of the label vector, the movie
  kept (the authors' ``Y[:, labels]``), and counted in the manifest (``params.genres_not_kept``).
  MMBT's ``scripts/mmimdb.py`` and loaders derived from it instead drop the movies holding them (News,
  or all four) and take the label set from the training file; that changes the published counts
  slightly, so it is not followed here. A movie with none of the 23 genres (the official split has
  none) would be kept with an all-zero row and a warning.
- **plot**: the longest text in the json's ``plot`` list (the first of the longest when tied): both the
  authors' script and MMBT's use ``argmax`` of the lengths; movies have several plot summaries of which
  the longest carries the most words. The text is tokenised with ``data_prep.text`` (``--tokenizer DIR``
  for a local Hugging Face tokenizer, else a word vocabulary of the train split; ``--max-length`` tokens,
  default 128; MMBT used 512 with BERT).
- **poster**: RGB, resized so its shorter side is 256 px and centre-cropped to 224 x 224 (preset
  ``center224``: MMBT's ``get_transforms`` without the normalisation; torchvision's ``resize`` and
  ``center_crop``), stored uint8 ``[3, 224, 224]`` (kind ``image``); augmentation happens at load time.
- **split**: ``split.json``'s ``train``, ``dev`` (-> ``val``) and ``test``, as published; no carve-out.

Cache: ``image`` uint8 ``[3, 224, 224]``, ``text`` int32 ``[2, L]`` (ids, mask), ``labels.npy`` uint8
``[N, 23]``, task ``multilabel``. Published counts are compared with the movies listed whose json and
poster are usable (a warning; ``--strict``: an error). A movie whose json is missing, unreadable or lacks
a plot or genres, or whose poster is missing or cannot be decoded, is skipped and reported. Refused with
one message (exit 2): no ``split.json`` beside ``dataset/``, an unreadable ``split.json`` or one without the
three id lists, an id listed in two splits, and the other layouts met in the wild (MMBT's ``*.jsonl``
re-format, the authors' ``multimodal_imdb.hdf5``), which do not hold the raw posters and plots.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bogc_cli import __version__
from bogc_cli.atomic import save_numpy
from bogc_cli.data.cache import Manifest, label_array, write_manifest
from bogc_cli.data.lfs import POINTER_REASON, is_lfs_pointer, refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_preset, count_mismatch, digest, file_list_checksum,
                               folders_below, log_problems, no_log, require_samples, reusable_manifest,
                               start_rewrite)
from data_prep.clipstore import WARNING, Item, SkipItem, build_store
from data_prep.media import blank_warning, check_media_file
from data_prep.text import PretrainedTokenizer, check_max_length, text_fingerprint, tokenise_splits

DATASET = "mmimdb"
GENRES = ["Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
          "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical",
          "Western", "Sport", "Short", "Film-Noir"]
"""The 23 genres the dataset's authors kept (the most frequent ones), in their order (``make_dataset.py``'s
``target_names``, as stored in their ``multimodal_imdb.hdf5``)."""
EXPECTED = {"train": 15552, "val": 2608, "test": 7799}
SPLIT_KEYS = {"train": ("train",), "val": ("dev", "val", "valid"), "test": ("test",)}
"""split.json's key of each split: the official ``dev`` first, spellings met in re-packs after."""
IMAGE_SUFFIXES = (".jpeg", ".jpg")
SEARCH_DEPTH = 2
LAYOUT = "split.json beside dataset/<id>.jpeg and dataset/<id>.json"


@dataclass(frozen=True)
class PosterPreset:
    """How a poster becomes the ``image`` array: shorter side resized to ``resize`` px, centre crop ``crop``."""

    name: str
    resize: int
    crop: int
    reference: str

    def params(self) -> dict[str, Any]:
        return {"image": f"RGB, shorter side resized to {self.resize} px (bilinear, antialiased), centre crop "
                         f"{self.crop} x {self.crop}, uint8 [3, {self.crop}, {self.crop}]",
                "resize": self.resize, "crop": self.crop, "reference": self.reference}


PRESETS = {"center224": PosterPreset("center224", 256, 224, "MMBT (Kiela et al., 2019) mmbt/data/helpers.py "
                                                            "get_transforms: Resize(256), CenterCrop(224)")}
DEFAULT_PRESET = "center224"


@dataclass(frozen=True)
class Poster:
    """One movie's files (``Item.source``): the poster decoded in workers, the json already read."""

    image: str
    json: str
    resize: int
    crop: int

    def describe(self) -> str:
        return self.image


@dataclass(frozen=True)
class Movie:
    """What the listing read from a movie's json: the plot used and the genres given."""

    plot: str
    genres: tuple[str, ...]


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False,
            tokenizer: str | Path | None = None, max_length: int | None = None) -> Manifest:
    """Prepare the MM-IMDb cache in ``out`` from the official layout in ``raw`` (see the module doc); ``seed`` is
    accepted for a uniform interface (the split is split.json's). Raises ``UserError`` for the refused layouts
    and options; returns the manifest."""
    raw, out = Path(raw), Path(out)
    poster = PRESETS[choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)]
    if val_fraction is not None:
        raise UserError(f"{DATASET} has an official validation split (split.json's 'dev'): drop --val-fraction")
    length = check_max_length(max_length)
    text_source = text_fingerprint(tokenizer, length)
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the MM-IMDb folder ({LAYOUT})")
    root = find_root(raw)
    check_out_folder(out, root)
    pretrained = PretrainedTokenizer(tokenizer) if tokenizer is not None else None  # refused before any decoding
    split_path = root / "split.json"
    ids = read_split(split_path)
    items, movies, skipped, notes = list_movies(root, ids, poster)
    movie_warnings = notes.pop("warnings", [])
    counts = {s: sum(it.split == s for it in items) for s in EXPECTED}
    listed = {s: len(v) for s, v in ids.items()}
    params = {**poster.params(), "preset": poster.name, "genres": GENRES, "task": "multilabel",
              "plot": "the longest text of the json's plot list (first when tied)",
              "split": "split.json's train / dev (-> val) / test", "max_length": length, **notes}
    sources = {"root": str(root), "split_json_sha256": hashlib.sha256(split_path.read_bytes()).hexdigest(),
               "listed": listed, "expected": EXPECTED,
               "file_list_sha256": file_list_checksum(Path(p) for it in items
                                                      for p in (it.source.image, it.source.json))}
    if counts != EXPECTED:
        found = " / ".join(f"{s} {counts[s]}" for s in EXPECTED)
        sources["count_check"] = count_mismatch(
            f"{DATASET}: {found} movies with a usable json and poster (split.json lists "
            f"{' / '.join(str(listed[s]) for s in EXPECTED)}), not the published "
            f"{' / '.join(f'{n:,}' for n in EXPECTED.values())}", strict, "use the complete mmimdb.tar.gz", log)
    movie_warnings += untrained_genres(items, movies, strict, log)
    fingerprint = digest({"dataset": DATASET, "params": params, "sources": sources, "text": text_source,
                          "version": __version__, "items": [(it.key, it.split) for it in items]})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this {DATASET} cache; nothing to do")
        return done
    require_samples(DATASET, counts, skipped)  # before decoding: a split with no usable movie
    log(f"preparing {len(items)} {DATASET} movies (train {counts['train']}, val {counts['val']}, "
        f"test {counts['test']}) with preset {poster.name}, {workers} worker(s)")
    start_rewrite(out)
    layout = {"image": ((3, poster.crop, poster.crop), "uint8")}
    splits, failed, warnings = build_store(out, items, layout, decode_poster, fingerprint=fingerprint,
                                           workers=workers, log=log, noun="posters")
    skipped += failed
    log_problems(log, skipped, warnings)
    require_samples(DATASET, {s: len(a) for s, a in splits.items()}, skipped)
    text_tokenizer = tokenise_splits(out, splits, {k: m.plot for k, m in movies.items()}, pretrained, length)
    for split, arrays in splits.items():
        arrays.labels = label_array(multi_hot([movies[k].genres for k in arrays.ids]), "multilabel", GENRES,
                                    f"{DATASET} {split} labels")
        save_numpy(out / split / "labels.npy", arrays.labels)
    log(f"wrote {sum(len(a) for a in splits.values())} movies, skipped {len(skipped)}")
    return write_manifest(out, dataset=DATASET, classes=GENRES, kinds={"image": "image", "text": "text"},
                          splits=splits, preset=poster.name, params=params,
                          sources={**sources, "fingerprint": fingerprint}, skipped=skipped,
                          warnings=movie_warnings + warnings,
                          tokenizers={"text": text_tokenizer.describe(length)}, task="multilabel")


def find_root(raw: Path) -> Path:
    """The folder holding ``split.json`` (``raw`` or a sub-folder up to two levels down). The layouts that are
    not the raw dataset, and a ``dataset/`` folder without its ``split.json``, are refused with what to get."""
    folders = folders_below(raw, SEARCH_DEPTH)
    for folder in folders:
        if (folder / "split.json").is_file():
            if not (folder / "dataset").is_dir():
                raise UserError(f"{folder / 'split.json'} has no dataset/ folder beside it: MM-IMDb's posters and "
                                f"json files are expected in {folder / 'dataset'} ({LAYOUT}); unpack the whole "
                                "mmimdb.tar.gz there")
            return folder
    for folder in folders:
        if (folder / "multimodal_imdb.hdf5").is_file():
            raise UserError(f"{folder / 'multimodal_imdb.hdf5'} is the authors' pre-processed MM-IMDb (resized "
                            "posters, word ids), not the raw posters and plots this preparer reads: download "
                            f"mmimdb.tar.gz instead and point --raw at it unpacked ({LAYOUT})")
        jsonl = [n for n in ("train.jsonl", "dev.jsonl", "test.jsonl") if (folder / n).is_file()]
        if jsonl:
            raise UserError(f"{folder} holds {', '.join(jsonl)}: MMBT's re-formatted MM-IMDb, which has already "
                            "dropped movies and chosen plots; point --raw at the original mmimdb folder "
                            f"({LAYOUT}) instead")
        if (folder / "dataset").is_dir():
            raise UserError(f"no split.json beside {folder / 'dataset'}: the official split (train/dev/test id "
                            "lists) comes with mmimdb.tar.gz; put its split.json in "
                            f"{folder} and run the same command again")
    raise UserError(f"no MM-IMDb layout under {raw}: expected {LAYOUT} (the unpacked mmimdb.tar.gz)")


def read_split(path: Path) -> dict[str, list[str]]:
    """split.json -> ``{"train": ids, "val": ids, "test": ids}`` (ids as text). ``UserError`` for an unreadable
    file, a missing id list, or an id listed in two splits."""
    refuse_pointer(path)
    try:
        data = json_object(path)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; expected MM-IMDb's {{train, dev, test}} id lists: use the split.json of "
                        "mmimdb.tar.gz") from None
    out: dict[str, list[str]] = {}
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if k in data), None)
        if key is None or not isinstance(data[key], list):
            raise UserError(f"{path} lacks the {keys[0]!r} id list (it has {', '.join(map(str, data)) or 'nothing'}): "
                            "expected train, dev and test lists of movie ids")
        out[split] = [str(i) for i in data[key]]
    seen: dict[str, str] = {}
    for split, ids in out.items():
        for movie in ids:
            if seen.setdefault(movie, split) != split:
                raise UserError(f"{path}: movie {movie} is listed in both {seen[movie]} and {split}: a movie belongs "
                                "to one split; use the official split.json")
    return out


def json_object(path: Path) -> dict[str, Any]:
    """The JSON object stored in ``path``; ``ValueError`` saying why when it is not readable JSON or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    return data


def read_movie(path: Path) -> Movie:
    """A movie's json -> its longest plot and its genres; ``SkipItem`` with the reason when it is missing, a Git
    LFS pointer, unreadable, or lacks a plot or genres."""
    check_media_file(path)
    try:
        data = json_object(path)
    except ValueError as exc:
        raise SkipItem(f"unreadable json: {exc}") from None
    plots = data.get("plot")
    plots = [plots] if isinstance(plots, str) else plots
    if not isinstance(plots, list) or not any(isinstance(p, str) and p.strip() for p in plots):
        raise SkipItem("no plot text in the json's 'plot'")
    genres = data.get("genres")
    if not isinstance(genres, list) or not genres:
        raise SkipItem("no genres in the json's 'genres'")
    texts = [p if isinstance(p, str) else "" for p in plots]
    return Movie(texts[int(np.argmax([len(t) for t in texts]))], tuple(str(g) for g in genres))


def list_movies(root: Path, ids: dict[str, list[str]], preset: PosterPreset
                ) -> tuple[list[Item], dict[str, Movie], list[dict[str, str]], dict[str, Any]]:
    """The movies of ``ids`` whose json and poster are usable, as ``Item``s (the poster decoded later), their
    ``Movie`` by id, the skipped files with reasons, and notes for the manifest (genres not kept, movies
    without a kept genre)."""
    folder = root / "dataset"
    items, movies, skipped = [], {}, []
    not_kept: dict[str, int] = {}
    without_genre = []
    for split, split_ids in ids.items():
        for movie in split_ids:
            meta = folder / f"{movie}.json"
            image = next((folder / f"{movie}{s}" for s in IMAGE_SUFFIXES if (folder / f"{movie}{s}").is_file()),
                         folder / f"{movie}{IMAGE_SUFFIXES[0]}")
            try:
                found = read_movie(meta)
            except SkipItem as exc:
                skipped.append({"file": str(meta), "reason": str(exc)})
                continue
            if not image.is_file():
                skipped.append({"file": str(image), "reason": f"missing poster {image.name}"})
                continue
            if is_lfs_pointer(image):
                skipped.append({"file": str(image), "reason": POINTER_REASON})
                continue
            for genre in found.genres:
                if genre not in GENRES:
                    not_kept[genre] = not_kept.get(genre, 0) + 1
            if not set(found.genres) & set(GENRES):
                without_genre.append(movie)
            movies[movie] = found
            items.append(Item(movie, split, 0, Poster(str(image), str(meta), preset.resize, preset.crop)))
    notes: dict[str, Any] = {"genres_not_kept": dict(sorted(not_kept.items()))}
    if without_genre:
        notes["warnings"] = [f"{len(without_genre)} movie(s) have none of the 23 genres (kept with an all-zero "
                             f"label row), e.g. {', '.join(without_genre[:5])}"]
    return items, movies, skipped, notes


def untrained_genres(items: list[Item], movies: dict[str, Movie], strict: bool, log: Log) -> list[str]:
    """Genres with movies in val or test but none in train cannot be learnt: a warning (returned, and logged), or a
    ``UserError`` when ``strict``."""
    train = multi_hot([movies[it.key].genres for it in items if it.split == "train"]).sum(axis=0)
    other = multi_hot([movies[it.key].genres for it in items if it.split != "train"]).sum(axis=0)
    lacking = [GENRES[k] for k in np.flatnonzero((train == 0) & (other > 0))]
    if not lacking:
        return []
    message = (f"{DATASET}: genre(s) {', '.join(lacking)} have movies in val/test but none in train: the model "
               "cannot learn them")
    return [count_mismatch(message, strict, "use the complete dataset", log)]


def multi_hot(genres: list[tuple[str, ...]]) -> np.ndarray:
    """Genre lists -> uint8 ``[N, 23]``, column ``k`` = 1 when ``GENRES[k]`` is listed (other genres ignored)."""
    out = np.zeros((len(genres), len(GENRES)), np.uint8)
    index = {g: k for k, g in enumerate(GENRES)}
    for row, names in enumerate(genres):
        for name in names:
            if name in index:
                out[row, index[name]] = 1
    return out


def decode_poster(item: Item) -> dict[str, np.ndarray]:
    """A poster -> ``{"image": uint8 [3, crop, crop]}`` (module level: runs in workers): RGB, shorter side resized
    with torchvision's ``resize``, ``center_crop``. ``SkipItem`` for a missing, Git LFS pointer or undecodable
    file; a ``WARNING`` for a poster of one colour."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as F

    src: Poster = item.source
    path = Path(src.image)
    check_media_file(path)
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SkipItem(f"corrupt poster image ({exc})") from None
    cropped = F.center_crop(F.resize(rgb, src.resize), [src.crop, src.crop])
    array = np.ascontiguousarray(np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1))
    out = {"image": array}
    if (warning := blank_warning(array[None])) is not None:
        out[WARNING] = warning.replace("video frames", "poster")
    return out
