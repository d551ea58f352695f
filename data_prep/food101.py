"""UPMC Food-101 (Wang et al., ICME workshops 2015): food images with the text of the web page each came
from, 101 classes (ETH Food-101's), as CGGM (Guo et al., NeurIPS 2024) uses it: image + text.

Raw layouts read under ``--raw`` (the folder itself or one up to three levels below it):

- the UPMC Food-101 release (also Kaggle's ``upmcfood101``): ``images/train/<class>/<file>.jpg``,
  ``images/test/<class>/<file>.jpg`` and ``texts/train_titles.csv``, ``texts/test_titles.csv``: CSV
  (quoted fields) without a header, three columns per row: image file name, text, class
  (``apple_pie_0.jpg,"Apple pie recipe ...",apple_pie``); the image of a row is
  ``images/<split>/<class>/<file>``. A header row (a first row whose first field is no image file name
  and whose third is no class name) is skipped. Published: 67,988 train + 22,716 test rows (90,704 pairs,
  the size reported for the release, and what a public analysis of it counts: MarihamR/UPMC-Food101-
  ImageText-Fusion's notebooks print ``Train_set: 67988, Test_set: 22716``). Texts are kept as written
  (web-page titles, HTML entities such as ``&#8217;`` included);
- CGGM's pre-processed form (zrguo/CGGM ``datasets/FOODDataset.py``): ``train.json`` and ``test.json``,
  each a JSON list of ``{"id", "text_tokens", "img_path", "label"}`` (``img_path`` relative to the folder,
  ``label`` a class name); the text is ``" ".join(text_tokens)`` as CGGM joins it. ``dev.json``, which CGGM
  never reads, is ignored. No published count is checked for this form (CGGM does not state it).

Refused with one message naming the expected layout (exit 2): a folder without either form, a CSV with
other columns, ETH Food-101's images-only release (``meta/`` + ``images/<class>/``: it has no text), a JSON
whose records lack those keys. Reported and left out: rows of an unknown class, rows with empty text, a
second row for one image, rows whose image is missing, rows naming a path instead of a file name (and JSON
``img_path``s leading out of the folder), images no row names, and images PIL cannot decode.

Split: the official train/test; validation is carved from train (``--val-fraction``, default 0.1,
stratified and seeded). CGGM selects its epoch on the test set (its ``valid`` loader is the test split);
here selection is on the carved validation split and test is reported at that epoch (DESIGN.md).
Text: ``--max-length`` defaults to 50 tokens, CGGM's ``TEXT_MAX_LENGTH``; CGGM tokenises with
bert-base-uncased (give its local directory as ``--tokenizer``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bogc_cli.data.cache import Manifest
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import Log, folders_below, no_log
from data_prep.imagetext import (Pair, PairListing, carve_problems, check_arguments, check_counts, prepare_pairs,
                                 split_off)
from data_prep.media import IMAGE_SUFFIXES

DATASET = "food101"
CLASSES = (
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding "
    "breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate cheesecake "
    "chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder club_sandwich "
    "crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame eggs_benedict escargots "
    "falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup french_toast fried_calamari "
    "fried_rice frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole gyoza "
    "hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna lobster_bisque "
    "lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings oysters pad_thai "
    "paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib pulled_pork_sandwich ramen ravioli "
    "red_velvet_cake risotto samosa sashimi scallops seaweed_salad shrimp_and_grits spaghetti_bolognese "
    "spaghetti_carbonara spring_rolls steak strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare waffles"
).split()
EXPECTED = {"train": 67988, "test": 22716}
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_MAX_LENGTH = 50  # CGGM's TEXT_MAX_LENGTH
CSV_FILES = {"train": "texts/train_titles.csv", "test": "texts/test_titles.csv"}
JSON_FILES = {"train": "train.json", "test": "test.json"}
JSON_KEYS = ("id", "text_tokens", "img_path", "label")
LAYOUT = ("images/{train,test}/<class>/<file>.jpg with texts/train_titles.csv and texts/test_titles.csv (rows: "
          "image file, text, class), or CGGM's train.json and test.json")
SEARCH_DEPTH = 3


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False,
            tokenizer: str | Path | None = None, max_length: int | None = None) -> Manifest:
    """Prepare the UPMC Food-101 cache in ``out`` from ``raw`` (see the module doc for the layouts read)."""
    raw, out, preset, val_fraction = check_arguments(DATASET, raw, out, preset, val_fraction, DEFAULT_VAL_FRACTION,
                                                     LAYOUT)
    root, layout = find_root(raw)
    listing = list_csv(root) if layout == "csv" else list_json(root)
    warnings = []
    if layout == "csv":
        found = {s: listing.sources["rows"][s] for s in EXPECTED}
        message = check_counts(DATASET, found, EXPECTED, strict, log, "the text CSVs have rows",
                               "use the complete UPMC Food-101 release")
        if message:
            listing.sources["count_check"] = message
    listing.pairs, labels, carved = split_off(listing.pairs, val_fraction, seed, "val")
    warnings += carve_problems(DATASET, labels, carved, listing.classes, strict, log)
    listing.params.update(split="official train/test; val carved from train (stratified, seeded)",
                          val_fraction=val_fraction)
    return prepare_pairs(DATASET, out, listing, preset=preset, seed=seed, strict=strict, workers=workers, log=log,
                         overwrite=overwrite, tokenizer=tokenizer, max_length=max_length,
                         default_max_length=DEFAULT_MAX_LENGTH, warnings=warnings)


def find_root(raw: Path) -> tuple[Path, str]:
    """The folder holding the dataset and its form (``csv`` or ``json``), searched in ``raw`` and up to three
    levels below; a folder that is neither is refused naming what was expected."""
    for root in folders_below(raw, SEARCH_DEPTH):
        if any((root / name).is_file() for name in JSON_FILES.values()):
            missing = [name for name in JSON_FILES.values() if not (root / name).is_file()]
            if missing:
                raise UserError(f"{root} holds CGGM's json form but lacks {', '.join(missing)}: expected {LAYOUT}")
            return root, "json"
        if (root / "texts").is_dir() or ((root / "images").is_dir() and not (root / "meta").is_dir()):
            missing = [name for name in (*CSV_FILES.values(), "images/train", "images/test")
                       if not (root / name).exists()]
            if missing:
                raise UserError(f"{root} looks like UPMC Food-101 but lacks {', '.join(missing)}: expected {LAYOUT}")
            return root, "csv"
        if (root / "meta").is_dir() and (root / "images").is_dir():
            raise UserError(f"{root} is ETH Food-101 (images and meta/ only): it has no text. bogc prepares UPMC "
                            f"Food-101, whose images come with their web pages' text: {LAYOUT}")
    raise UserError(f"no UPMC Food-101 under {raw} or below it: expected {LAYOUT}")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-empty rows of a text CSV (UTF-8, else Latin-1), each with the file line it starts on."""
    refuse_pointer(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, line = [], 1
    try:
        for row in reader:
            if row:
                rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{path} is not a readable CSV ({exc}): expected rows of image file, text, class") from None
    return rows


def list_csv(root: Path) -> PairListing:
    """The pairs of the UPMC release under ``root``: each CSV row's text with its image (see the module doc)."""
    index = {c: k for k, c in enumerate(CLASSES)}
    listing = PairListing([], list(CLASSES), params={"layout": "UPMC images/ + texts/*_titles.csv"},
                          sources={"root": str(root), "rows": {}})
    for split, name in CSV_FILES.items():
        path = root / name
        rows = _read_rows(path)
        if rows and len(rows[0][1]) == 3 and Path(rows[0][1][0].strip()).suffix.lower() not in IMAGE_SUFFIXES \
                and rows[0][1][2].strip() not in index:
            rows = rows[1:]  # a header row
        if rows and len(rows[0][1]) != 3:
            first = rows[0][1]
            raise UserError(f"{path}: its first row has {len(first)} column(s) ({', '.join(first[:4])[:120]}): "
                            "expected 3 (image file name, text, class), as UPMC Food-101's texts/*_titles.csv")
        listing.sources["rows"][split] = len(rows)
        seen: set[str] = set()
        for line, row in rows:
            where = f"{path} line {line}"
            if len(row) != 3:
                listing.skipped.append({"file": where, "reason": f"{len(row)} columns, not 3 (image, text, class)"})
                continue
            file, text, label = (field.strip() for field in row)
            if label not in index:
                listing.skipped.append({"file": where, "reason": f"unknown class {label[:60]!r}"})
                continue
            if Path(file).name != file or file in ("", ".", ".."):
                listing.skipped.append({"file": where, "reason": f"{file[:60]!r} is not an image file name"})
                continue
            if file in seen:
                listing.skipped.append({"file": where, "reason": f"a second row for {file}"})
                continue
            seen.add(file)
            image = root / "images" / split / label / file
            if not image.is_file():
                listing.skipped.append({"file": where, "reason": f"missing image images/{split}/{label}/{file}"})
                continue
            if not text:
                listing.skipped.append({"file": where, "reason": "empty text"})
                continue
            listing.pairs.append(Pair(f"{split}/{file}", split, index[label], image, text))
        for image in sorted((root / "images" / split).glob("*/*")):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.name not in seen:
                listing.skipped.append({"file": str(image), "reason": f"no row in {name}"})
    return listing


def list_json(root: Path) -> PairListing:
    """The pairs of CGGM's ``train.json`` / ``test.json`` under ``root`` (see the module doc)."""
    index = {c: k for k, c in enumerate(CLASSES)}
    listing = PairListing([], list(CLASSES), params={"layout": "CGGM train.json / test.json"},
                          sources={"root": str(root), "rows": {}})
    for split, name in JSON_FILES.items():
        path = root / name
        refuse_pointer(path)
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path} is not readable JSON ({exc}): expected a list of {{{', '.join(JSON_KEYS)}}} "
                            "records, as CGGM's datasets/FOODDataset.py reads") from None
        if not isinstance(records, list) or (records and not (isinstance(records[0], dict)
                                                              and all(k in records[0] for k in JSON_KEYS))):
            first = records[0] if isinstance(records, list) else records
            keys = ", ".join(list(first)[:6]) if isinstance(first, dict) else type(first).__name__
            raise UserError(f"{path}: records hold {keys}; expected a list of records with {', '.join(JSON_KEYS)} "
                            "(CGGM's Food-101 json)")
        listing.sources["rows"][split] = len(records)
        for n, rec in enumerate(records):
            where = f"{path} record {n}"
            tokens = rec.get("text_tokens") if isinstance(rec, dict) else None
            label = str(rec.get("label", "")) if isinstance(rec, dict) else ""
            if not isinstance(tokens, list) or label not in index or not rec.get("img_path"):
                listing.skipped.append({"file": where, "reason": "record without text_tokens, img_path or a known "
                                                                 "class label"})
                continue
            text = " ".join(str(t) for t in tokens).strip()
            if not text:
                listing.skipped.append({"file": where, "reason": "empty text"})
                continue
            image = root / str(rec["img_path"])
            if not image.resolve().is_relative_to(root.resolve()):
                listing.skipped.append({"file": where, "reason": f"img_path {str(rec['img_path'])[:60]!r} leads out "
                                                                 f"of {root}"})
                continue
            listing.pairs.append(Pair(f"{split}/{rec['id']}", split, index[label], image, text))
    keys = [p.key for p in listing.pairs]
    if len(set(keys)) != len(keys):
        raise UserError(f"{root}: an id occurs twice in one of {', '.join(JSON_FILES.values())}: ids must be unique")
    return listing
