"""MVSA-Single (Niu et al., MMM 2016): tweets with their image, one annotator's sentiment for the text and
for the image; 3 classes after the standard cleaning.

Raw layout read under ``--raw`` (the folder itself or one up to three levels below, e.g. ``MVSA_Single/``):
``labelResultAll.txt`` and ``data/<id>.jpg`` + ``data/<id>.txt``. ``labelResultAll.txt`` has a header
line (``ID  text,image``), then one line per tweet: the id and ``<text label>,<image label>`` separated
by white space, labels ``positive``, ``neutral``, ``negative``.

Label cleaning, the rule of the MVSA papers and public loaders (Xu & Mao, CIKM 2017 "MultiSentiNet";
CLMLF, Li et al. NAACL 2022, and the loaders that reuse it): both labels agree -> that label; one of them
neutral -> the other one; positive against negative -> the pair is dropped (counted in the manifest's
``sources.dropped_conflicts``). Published: 4,511 pairs after cleaning, 2,683 positive, 470 neutral, 1,358
negative (Xu & Mao's table; CLMLF's split files hold exactly these counts): checked, a warning (an error with
``--strict``). The raw size is not checked: the 4,869 pairs sometimes quoted could not be confirmed (no copy
of the label file was at hand, and CLMLF's kept tweet ids run from 1 to 5,129, which suggests more lines);
the number of label lines read is recorded in ``sources.label_lines``.

Refused with one message (exit 2): no ``labelResultAll.txt`` or no ``data/`` folder, a label file of
another form (e.g. MVSA-Multiple's three annotations per line). Reported and left out: label lines that
cannot be read or hold unknown labels, tweets whose text file is missing or empty, images that are
missing or cannot be decoded. Texts are read as UTF-8, else Latin-1, and kept as they are (URLs and
hashtags included).

Split: MVSA has no official split; the customary random 8:1:1 (CLMLF's) is drawn here stratified by
class and seeded (``--seed``): 10% of the cleaned pairs for test, then ``--val-fraction`` (default 1/9)
of the rest for validation, i.e. 8:1:1 overall. To use CLMLF's own draw instead (3,611 / 450 / 450, the
split of many later papers), put its ``train.json``, ``dev.json``, ``test.json`` (its repository's
``dataset/data/MVSA-single/10-flod-1/``) beside ``labelResultAll.txt`` or in a ``10-flod-1/`` folder
there: each pair goes to the split the files name (a pair they do not list is reported and left out; a
label that differs from this cleaning's is a warning). Its 4,511 pairs (2,683 / 470 / 1,358 by class) are the
published counts of this cleaning. The ids of each split are saved in ``<split>/ids.txt``.
Classes in CLMLF's order: positive, neutral, negative.
"""

from __future__ import annotations

import json
from pathlib import Path

from bogc_cli.data.cache import Manifest
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import Log, folders_below, no_log
from data_prep.clipstore import SkipItem
from data_prep.imagetext import (Pair, PairListing, carve_problems, check_arguments, check_counts, prepare_pairs,
                                 read_text_file, split_off)

DATASET = "mvsa_single"
CLASSES = ["positive", "neutral", "negative"]
LABEL_FILE = "labelResultAll.txt"
#: After cleaning (4,511): Xu & Mao 2017's table, and the labels of CLMLF's published split files (counted).
EXPECTED = {"positive": 2683, "neutral": 470, "negative": 1358}
TEST_FRACTION = 0.1
DEFAULT_VAL_FRACTION = 1 / 9  # of the 90% left after the test carve-out: 8:1:1 overall
DEFAULT_MAX_LENGTH = 128
LAYOUT = f"{LABEL_FILE} (lines: <id> <text label>,<image label>) beside data/<id>.jpg and data/<id>.txt"
SEARCH_DEPTH = 3
#: CLMLF's MVSA-Single split (Li et al., NAACL 2022; Link-Li/CLMLF dataset/data/MVSA-single/10-flod-1/): 3,611 /
#: 450 / 450 ids, used by many later papers; read when the user puts the files beside labelResultAll.txt.
CLMLF_FOLDER = "10-flod-1"
CLMLF_FILES = {"train": "train.json", "val": "dev.json", "test": "test.json"}


def clean_label(text_label: str, image_label: str) -> str | None:
    """The standard MVSA cleaning of one (text, image) label pair: agreeing labels stay, a neutral one yields
    to the other, positive against negative gives ``None`` (the pair is dropped)."""
    if text_label == image_label:
        return text_label
    if text_label == "neutral":
        return image_label
    if image_label == "neutral":
        return text_label
    return None


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False,
            tokenizer: str | Path | None = None, max_length: int | None = None) -> Manifest:
    """Prepare the MVSA-Single cache in ``out`` from ``raw`` (see the module doc)."""
    raw, out, preset, val_fraction = check_arguments(DATASET, raw, out, preset, val_fraction, DEFAULT_VAL_FRACTION,
                                                     LAYOUT)
    listing = list_pairs(find_root(raw))
    sources = listing.sources
    mismatch = check_counts(DATASET, sources["after_cleaning"], EXPECTED, strict, log, "the label cleaning keeps",
                            "use the complete MVSA-Single release")
    if mismatch:
        sources["count_check"] = mismatch
    listing.params["cleaning"] = "agree -> label; one neutral -> the other; positive vs negative -> dropped"
    split_files = find_clmlf_split(Path(sources["root"]))
    if split_files is not None:
        carve = apply_clmlf_split(listing, split_files, strict, log)
    else:
        listing.pairs, _, _ = split_off(listing.pairs, TEST_FRACTION, seed, "test")
        listing.pairs, labels, carved = split_off(listing.pairs, val_fraction, seed, "val")
        carve = carve_problems(DATASET, labels, carved, CLASSES, strict, log)
        listing.params.update(split="no official split: stratified, seeded 10% test, then val_fraction of the rest "
                                    "(default 1/9: 8:1:1)", test_fraction=TEST_FRACTION, val_fraction=val_fraction)
    return prepare_pairs(DATASET, out, listing, preset=preset, seed=seed, strict=strict, workers=workers, log=log,
                         overwrite=overwrite, tokenizer=tokenizer, max_length=max_length,
                         default_max_length=DEFAULT_MAX_LENGTH, warnings=carve)


def find_clmlf_split(root: Path) -> dict[str, Path] | None:
    """CLMLF's split files (``train.json``, ``dev.json``, ``test.json``) in ``root`` or ``root/10-flod-1/``,
    if the user put them there; None when there are none. Some but not all of them is a ``UserError``."""
    for folder in (root / CLMLF_FOLDER, root):
        found = {split: folder / name for split, name in CLMLF_FILES.items() if (folder / name).is_file()}
        if found and len(found) < len(CLMLF_FILES):
            missing = sorted(set(CLMLF_FILES.values()) - {p.name for p in found.values()})
            raise UserError(f"{folder} has CLMLF's split files but not {', '.join(missing)}: give all three "
                            f"({', '.join(CLMLF_FILES.values())}) or none (then a seeded 8:1:1 split is drawn)")
        if found:
            return found
    return None


def apply_clmlf_split(listing: PairListing, files: dict[str, Path], strict: bool, log: Log) -> list[str]:
    """Put each cleaned pair in the split CLMLF's files give it (records ``{"id", "text", "emotion_label"}``,
    labels 0 positive, 1 neutral, 2 negative). A pair the files do not list is skipped and reported; a label
    that differs from this cleaning's is a warning (an error with ``strict``). Returns the warnings."""
    split_of: dict[str, tuple[str, int]] = {}
    for split, path in files.items():
        refuse_pointer(path)
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
            split_of.update({str(r["id"]): (split, int(r["emotion_label"])) for r in records})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{path} is not CLMLF's split file ({type(exc).__name__}: {exc}): expected a JSON list "
                            "of {id, text, emotion_label} records") from None
    kept, differ = [], []
    for pair in listing.pairs:
        if pair.key not in split_of:
            listing.skipped.append({"file": str(pair.image.with_suffix(".txt")),
                                    "reason": f"not in CLMLF's split files ({', '.join(CLMLF_FILES.values())})"})
            continue
        split, label = split_of[pair.key]
        if label != pair.label:
            differ.append(pair.key)
        kept.append(Pair(pair.key, split, pair.label, pair.image, pair.text))
    listing.pairs = kept
    listing.params.update(split=f"CLMLF's split files ({files['train'].parent})")
    listing.sources["clmlf_split"] = {"files": {s: str(p) for s, p in files.items()}, "listed": len(split_of),
                                      "label_differs": len(differ)}
    if not differ:
        return []
    message = (f"{DATASET}: {len(differ)} pair(s) ({', '.join(differ[:5])}) have another label in CLMLF's split files "
               "than this cleaning gives them (the cleaning's label is kept)")
    if strict:
        raise UserError(f"{message} (--strict): check the label file and the split files, or drop --strict")
    log(f"warning: {message}")
    return [message]


def find_root(raw: Path) -> Path:
    """The folder holding ``labelResultAll.txt`` and ``data/`` (``raw`` or up to three levels below)."""
    for root in folders_below(raw, SEARCH_DEPTH):
        if (root / LABEL_FILE).is_file():
            if not (root / "data").is_dir():
                raise UserError(f"{root} has {LABEL_FILE} but no data/ folder of <id>.jpg and <id>.txt: expected "
                                f"{LAYOUT}")
            return root
    raise UserError(f"no {LABEL_FILE} in {raw} or below it: point --raw at the MVSA-Single download ({LAYOUT})")


def _label_lines(path: Path) -> list[tuple[int, list[str]]]:
    """The white-space separated fields of each line of the label file after its header, with its line number."""
    refuse_pointer(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc}): expected {LAYOUT}") from None
    rows = [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]
    if rows and not rows[0][1][0].isdigit():
        rows = rows[1:]  # the "ID text,image" header
    if not rows:
        raise UserError(f"{path} lists no tweet: expected {LAYOUT}")
    first = rows[0][1]
    if len(first) > 2 and all("," in f for f in first[1:]):
        raise UserError(f"{path} has {len(first) - 1} annotations per line: that is MVSA-Multiple's label file (three "
                        f"annotators). bogc prepares MVSA-Single: {LAYOUT}")
    if len(first) != 2 or first[1].count(",") != 1:
        raise UserError(f"{path}: its first line reads {' '.join(first)[:80]!r}; expected {LAYOUT}")
    return rows


def list_pairs(root: Path) -> PairListing:
    """The cleaned pairs under ``root``, their texts read (see the module doc)."""
    path = root / LABEL_FILE
    rows = _label_lines(path)
    listing = PairListing([], list(CLASSES), params={"layout": f"{LABEL_FILE} + data/<id>.jpg, data/<id>.txt"},
                          sources={"root": str(root), "label_lines": len(rows)})
    kept = {c: 0 for c in CLASSES}
    conflicts = 0
    seen: set[str] = set()
    for line, fields in rows:
        where = f"{path} line {line}"
        labels = fields[1].split(",") if len(fields) == 2 and fields[0].isdigit() else []
        if len(labels) != 2 or not all(lb in CLASSES for lb in labels):
            listing.skipped.append({"file": where, "reason": f"not '<id> <text label>,<image label>' with labels "
                                                             f"{', '.join(CLASSES)}: {' '.join(fields)[:60]!r}"})
            continue
        tweet = fields[0]
        if tweet in seen:
            listing.skipped.append({"file": where, "reason": f"a second line for tweet {tweet}"})
            continue
        seen.add(tweet)
        label = clean_label(*labels)
        if label is None:
            conflicts += 1
            continue
        kept[label] += 1
        try:
            text = read_text_file(root / "data" / f"{tweet}.txt")
        except SkipItem as exc:
            listing.skipped.append({"file": str(root / "data" / f"{tweet}.txt"), "reason": str(exc)})
            continue
        listing.pairs.append(Pair(tweet, "train", CLASSES.index(label), root / "data" / f"{tweet}.jpg", text))
    listing.sources.update(after_cleaning=kept, dropped_conflicts=conflicts)
    return listing
