"""BraTS glioma grade: HGG vs LGG from four MRI sequences (t1, t1ce, t2, flair), one sample per patient.

Raw layouts read under ``--raw`` (the training download, or a folder up to three levels above it, as
Kaggle's zips unpack), one folder per patient holding ``<pid>_<sequence>.nii.gz`` or ``.nii``:

- BraTS 2017-2019 (``MICCAI_BraTS_2019_Data_Training``): ``HGG/<pid>/`` and ``LGG/<pid>/``; the grade is the
  folder. Published: 2019 335 patients (259 HGG + 76 LGG), 2018 285 (210 + 75);
- BraTS 2020 (``MICCAI_BraTS2020_TrainingData``, also Kaggle's uncompressed ``.nii`` re-pack): a flat folder
  of ``BraTS20_Training_<n>/`` and ``name_mapping.csv``, whose ``Grade`` column gives each patient's grade
  (matched through whichever column holds the folder names). Published: 369 (293 + 76);
- BraTS 2021 and later (``BraTS2021_<n>/``, 2023's ``BraTS-GLI-<n>-<k>/`` with ``t1n``/``t1c``/``t2w``/``t2f``
  sequence names) publish no grade: they are read when a CSV beside the patient folders has a ``Grade``
  column (HGG/LGG) and a column of patient ids, and refused otherwise, saying so.

Reported and left out, never silently used: a patient with a file that does not follow its siblings'
``<pid>_<sequence>.nii[.gz]`` naming (Kaggle's BraTS 2020 names one segmentation
``W39_1998.09.19_Segm.nii``: rename it ``BraTS20_Training_355_seg.nii``), a file naming another patient,
two files for one sequence, a missing sequence, no grade in the table, Git LFS pointers and files that
cannot be read. A patient whose volumes differ in shape from the other patients' is kept (resampled to
the preset like every volume) and reported with a warning; sequences of different shapes within one
patient are skipped.

Each volume is z-scored over its brain (non-zero) voxels, background 0. Presets:

- ``slices2d``: the axial slice with the largest tumour area in ``seg`` (largest brain area when
  there is no tumour mask) and its two neighbours, each resized to 128x128 (bilinear, antialiased):
  kind image ``[3, 128, 128]`` float16, the three slices as channels (2.5-D input for a 2-D CNN);
- ``vol3d``: the volume resampled to 64x64x64 (trilinear), kind video ``[64, 1, 64, 64]`` float16
  (axial slices as frames).

Split: patient level, stratified by grade and seeded: 20% of patients test, ``val_fraction``
(default 0.1) of the rest validation; the patient ids of each split are saved in ``ids.txt``.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, carve_validation, carve_warnings, write_manifest
from bogc_cli.data.lfs import FIX as LFS_FIX
from bogc_cli.data.lfs import POINTER_REASON, is_lfs_pointer
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_preset, choose_val_fraction, count_mismatch, digest,
                               file_list_checksum, folders_below, log_problems, no_log, require_samples,
                               reusable_manifest, start_rewrite)
from data_prep.clipstore import WARNING, Item, SkipItem, build_store

DATASET = "brats_grade"
CLASSES = ["LGG", "HGG"]
SEQUENCES = ("t1", "t1ce", "t2", "flair")
ALIASES = {"t1": ("t1", "t1n"), "t1ce": ("t1ce", "t1c", "t1gd"), "t2": ("t2", "t2w"), "flair": ("flair", "t2f"),
           "seg": ("seg",)}
PUBLISHED = {2018: {"HGG": 210, "LGG": 75}, 2019: {"HGG": 259, "LGG": 76}, 2020: {"HGG": 293, "LGG": 76}}
EXPECTED = PUBLISHED[2019]
TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1
PRESETS = {"slices2d": {"slices": 3, "size": 128, "kind": "image"},
           "vol3d": {"depth": 64, "size": 64, "kind": "video"}}
DEFAULT_PRESET = "slices2d"
LAYOUT = ("HGG/<pid>/<pid>_t1.nii.gz ... and LGG/<pid>/... (BraTS 2017-2019), or <pid>/<pid>_t1.nii ... with "
          "name_mapping.csv giving the Grade (BraTS 2020)")
SEARCH_DEPTH = 3
_NII = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_YEAR = re.compile(r"^brats[-_]?(20)?(\d\d)", re.IGNORECASE)


@dataclass(frozen=True)
class Patient:
    """One patient's folder, its files per sequence (``seg`` optional), the preset to decode it with, and the
    volume shape of the other patients (``Item.source``)."""

    folder: str
    preset: str
    files: tuple[tuple[str, str], ...] = ()
    common_shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        return self.folder

    def file(self, sequence: str) -> Path | None:
        return next((Path(p) for s, p in self.files if s == sequence), None)


@dataclass
class Listing:
    """The patients found (folder, grade), the layout, and the folders or files left out with reasons."""

    root: Path
    patients: list[tuple[Path, str]]
    layout: str
    skipped: list[dict[str, str]] = field(default_factory=list)


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the BraTS grade cache in ``out`` from ``raw`` (see the module doc for the layouts read)."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the BraTS training data ({LAYOUT})")
    listing = list_patients(raw)
    check_out_folder(out, raw)
    patients, skipped = check_patients(listing, preset)
    counts = {g: sum(grade == g for _, grade in listing.patients) for g in ("HGG", "LGG")}
    year = _year(listing.patients)
    expected = PUBLISHED.get(year, EXPECTED)
    sources = {"root": str(listing.root), "layout": listing.layout, "patients": counts, "year": year,
               "expected": expected,
               "file_list_sha256": file_list_checksum(Path(f) for p in patients for _, f in p.source.files)}
    warnings = []
    if counts != expected:
        message = (f"{DATASET}: {counts['HGG']} HGG + {counts['LGG']} LGG patients, not the published "
                   f"{expected['HGG']} + {expected['LGG']} of BraTS {year or 2019}")
        sources["count_check"] = count_mismatch(message, strict, "use the complete BraTS training data", log)
    for grade in ("HGG", "LGG"):
        if not any(it.label == CLASSES.index(grade) for it in patients):
            message = f"{DATASET}: no usable {grade} patient: the model cannot learn that grade"
            if strict:
                raise UserError(f"{message} (--strict): use the complete training data, or drop --strict")
            log(f"warning: {message}")
            warnings.append(message)
    items, carve_problems = split_patients(patients, seed, val_fraction)
    for problem in carve_problems:
        if strict:
            raise UserError(f"{DATASET}: {problem} (--strict): use more patients, or drop --strict")
        log(f"warning: {problem}")
    warnings += carve_problems
    if not any(it.split == "test" for it in items) or not any(it.split == "train" for it in items):
        raise UserError(f"too few usable patients under {listing.root} for a train/test split ({len(items)} found"
                        + (f"; {len(skipped)} left out, e.g. {skipped[0]['file']}: {skipped[0]['reason']}"
                           if skipped else "") + ")")
    params = {**PRESETS[preset], "normalisation": "z-score over non-zero voxels per volume", "seed": seed,
              "test_fraction": TEST_FRACTION, "val_fraction": val_fraction,
              "split": "patient level, stratified by grade (sklearn train_test_split)"}
    if preset == "slices2d":
        params["slice_choice"] = "largest tumour area in seg (> 0), with its two neighbours; largest brain area without"
    fingerprint = digest({"dataset": DATASET, "params": params, "sources": sources, "version": __version__,
                          "items": [(it.key, it.split, it.label) for it in items]})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this {DATASET} cache; nothing to do")
        return done
    start_rewrite(out)
    shape = _sample_shape(preset)
    layout = {seq: (shape, "float16") for seq in SEQUENCES}
    log(f"preparing {len(items)} patients with preset {preset}, {workers} worker(s)")
    splits, decode_skipped, decode_warnings = build_store(out, items, layout, decode_patient, fingerprint=fingerprint,
                                                          workers=workers, log=log, noun="patients")
    skipped += decode_skipped
    log_problems(log, skipped, decode_warnings)
    require_samples(DATASET, {s: len(a) for s, a in splits.items() if s != "val"}, skipped)
    log(f"wrote {sum(len(s) for s in splits.values())} patients, skipped {len(skipped)}")
    return write_manifest(out, dataset=DATASET, classes=CLASSES, kinds={s: PRESETS[preset]["kind"] for s in SEQUENCES},
                          splits=splits, preset=preset, params=params,
                          sources={**sources, "fingerprint": fingerprint}, skipped=skipped,
                          warnings=warnings + decode_warnings)


# ---------------------------------------------------------------------------------------------
# finding the patients and their grades


def _has_volumes(folder: Path) -> bool:
    return any(_NII.search(p.name) for p in folder.iterdir() if p.is_file())


def list_patients(raw: Path) -> Listing:
    """The patients under ``raw`` with their grades: from ``HGG/`` and ``LGG/`` folders, or from a flat folder of
    patient folders and a CSV with a ``Grade`` column."""
    for root in folders_below(raw, SEARCH_DEPTH):
        if (root / "HGG").is_dir() or (root / "LGG").is_dir():
            patients = [(p, grade) for grade in ("HGG", "LGG") if (root / grade).is_dir()
                        for p in sorted((root / grade).iterdir()) if p.is_dir()]
            return Listing(root, patients, "HGG/ and LGG/ folders")
    for root in folders_below(raw, SEARCH_DEPTH):
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_volumes(p))
        if folders:
            return _grades_from_table(root, folders)
    raise UserError(f"no BraTS patient folders in {raw} or below it: point --raw at the BraTS training data ({LAYOUT})")


def _grades_from_table(root: Path, folders: list[Path]) -> Listing:
    """Grades of a flat folder of patients from a CSV (``name_mapping.csv`` in BraTS 2020) in ``root`` or its parent."""
    names = {p.name for p in folders}
    for table in sorted({*root.glob("*.csv"), *root.parent.glob("*.csv")}):
        grades = _read_grade_table(table, names)
        if grades is None:
            continue
        listing = Listing(root, [], f"flat folder, grades from {table.name}")
        for folder in folders:
            grade = grades.get(folder.name)
            if grade in ("HGG", "LGG"):
                listing.patients.append((folder, grade))
            else:
                reason = (f"no grade for {folder.name} in {table.name}" if grade is None else
                          f"grade {grade!r} in {table.name} is not HGG or LGG")
                listing.skipped.append({"file": str(folder), "reason": reason})
        return listing
    year = _year([(folders[0], "")])
    hint = ("BraTS 2020 ships name_mapping.csv with a Grade column: put it beside the patient folders" if year == 2020
            else "BraTS 2021 and later publish no grade: give a CSV beside the patient folders with a column of "
                 "patient ids and a Grade column (HGG or LGG)")
    raise UserError(f"{root} holds {len(folders)} patient folders ({folders[0].name}, ...) but no table giving each "
                    f"patient's grade: {hint}")


def _read_grade_table(path: Path, names: set[str]) -> dict[str, str] | None:
    """``{patient folder name: grade}`` when ``path`` has a Grade column and a column holding patient folder names."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows:
        return None
    columns = list(rows[0])
    grade_col = next((c for c in columns if c and c.strip().lower() == "grade"), None)
    if grade_col is None:
        return None
    id_col = max(columns, key=lambda c: sum((r.get(c) or "").strip() in names for r in rows))
    if not any((r.get(id_col) or "").strip() in names for r in rows):
        return None
    return {(r.get(id_col) or "").strip(): (r.get(grade_col) or "").strip().upper() for r in rows}


def _year(patients: list[tuple[Path, str]]) -> int | None:
    """The BraTS edition named by the patient ids (``Brats18_``, ``BraTS19_``, ``BraTS20_``, ``BraTS2021_``)."""
    years = Counter()
    for folder, _ in patients:
        match = _YEAR.match(folder.name)
        if match:
            years[2000 + int(match[2])] += 1
    return years.most_common(1)[0][0] if years else None


def _sequence_of(name: str) -> str | None:
    """The sequence a file name ends with (``..._t1ce.nii.gz`` -> t1ce; 2023's ``...-t1c.nii.gz`` -> t1ce)."""
    last = re.split(r"[_-]", _NII.sub("", name).lower())[-1]
    return next((seq for seq, names in ALIASES.items() if last in names), None)


def _patient_files(folder: Path) -> tuple[dict[str, Path], str | None]:
    """The files of each sequence in ``folder``, or the reason the patient cannot be used."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and _NII.search(p.name)):
        seq = _sequence_of(path.name)
        stem = _NII.sub("", path.name)
        if seq is None:
            guess = "seg" if "seg" in path.name.lower() else "<sequence>"
            return found, (f"{path.name} does not follow its siblings' <patient>_<sequence>.nii[.gz] naming (sequence "
                           f"t1, t1ce, t2, flair or seg): rename it, e.g. {folder.name}_{guess}{_NII.search(path.name)[0]}")
        if stem[:len(folder.name)].lower() != folder.name.lower():
            return found, f"{path.name} names another patient than its folder {folder.name}"
        if seq in found:
            return found, f"two files for {seq}: {found[seq].name} and {path.name} (keep one)"
        found[seq] = path
    missing = [s for s in SEQUENCES if s not in found]
    if missing:
        return found, f"missing {', '.join(f'{folder.name}_{s}.nii.gz' for s in missing)}"
    pointers = [p.name for p in found.values() if is_lfs_pointer(p)]
    if pointers:
        return found, f"{pointers[0]}: {POINTER_REASON}"
    return found, None


def check_patients(listing: Listing, preset: str) -> tuple[list[Item], list[dict[str, str]]]:
    """One (unsplit) ``Item`` per usable patient, the shape of most patients' volumes recorded in each, and the
    patients left out with their reasons (``listing.skipped`` included)."""
    import nibabel as nib

    skipped = list(listing.skipped)
    usable, shapes = [], {}
    for folder, grade in listing.patients:
        files, reason = _patient_files(folder)
        if reason is not None:
            skipped.append({"file": str(folder), "reason": reason})
            continue
        usable.append((folder, grade, files))
        try:
            shapes[folder] = tuple(nib.load(str(files["t1"])).shape)
        except Exception:  # noqa: BLE001 - reported when the patient is decoded
            pass
    pointers = sum("Git LFS pointer" in s["reason"] for s in skipped)
    if not usable and pointers:
        raise UserError(f"no BraTS patient under {listing.root} can be used; the volumes of {pointers} of them are "
                        f"Git LFS pointer files, not images: {LFS_FIX}")
    common = Counter(shapes.values()).most_common(1)[0][0] if shapes else None
    items = [Item(folder.name, "train", CLASSES.index(grade),
                  Patient(str(folder), preset, tuple(sorted((s, str(p)) for s, p in files.items())), common))
             for folder, grade, files in usable]
    return items, skipped


def split_patients(patients: list[Item], seed: int, val_fraction: float) -> tuple[list[Item], list[str]]:
    """The patients split at patient level: stratified, seeded test then val carve-outs; returns the items and
    the carve-out warnings (``carve_warnings``)."""
    labels = np.array([it.label for it in patients], np.int64)
    if len(patients) < 3:
        return patients, []
    rest, test = carve_validation(labels, TEST_FRACTION, seed)
    train, val = carve_validation(labels[rest], val_fraction, seed)
    split_of = {**{int(i): "test" for i in test}, **{int(rest[i]): "val" for i in val},
                **{int(rest[i]): "train" for i in train}}
    items = [Item(it.key, split_of[i], it.label, it.source) for i, it in enumerate(patients)]
    return items, carve_warnings(labels[rest], val, CLASSES, "the training patients")


def _sample_shape(preset: str) -> tuple[int, ...]:
    p = PRESETS[preset]
    return (p["slices"], p["size"], p["size"]) if preset == "slices2d" else (p["depth"], 1, p["size"], p["size"])


# ---------------------------------------------------------------------------------------------
# decoding one patient (runs in worker processes)


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume as float32 ``[X, Y, Z]``; unreadable, missing or Git LFS pointer files skip the patient."""
    import nibabel as nib

    if not path.is_file():
        raise SkipItem(f"missing {path.name}")
    if is_lfs_pointer(path):
        raise SkipItem(f"{path.name}: {POINTER_REASON}")
    try:
        return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - nibabel and gzip raise many types for a damaged file
        raise SkipItem(f"unreadable {path.name} ({type(exc).__name__}: {exc})") from None


def zscore_brain(volume: np.ndarray) -> np.ndarray:
    """Standardise over the non-zero (brain) voxels; background stays 0."""
    brain = volume != 0
    if not brain.any():
        return np.zeros_like(volume)
    values = volume[brain]
    std = values.std()
    out = np.zeros_like(volume)
    out[brain] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


def choose_slice(seg: np.ndarray | None, brain: np.ndarray) -> int:
    """The axial index (last axis) with the largest tumour area, or the largest brain area without a tumour."""
    mask = seg > 0 if seg is not None and (seg > 0).any() else brain
    return int(np.argmax(mask.reshape(-1, mask.shape[-1]).sum(axis=0)))


def slices2d(volume: np.ndarray, centre: int, size: int, count: int = 3) -> np.ndarray:
    """Slices ``centre - 1 .. centre + 1`` (clamped) of ``[X, Y, Z]``, each resized: float32 ``[count, size, size]``."""
    import torch

    half = count // 2
    index = np.clip(np.arange(centre - half, centre - half + count), 0, volume.shape[-1] - 1)
    stack = torch.from_numpy(np.ascontiguousarray(volume[:, :, index].transpose(2, 0, 1)))[None]  # [1, count, X, Y]
    resized = torch.nn.functional.interpolate(stack, size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)
    return resized[0].numpy()


def volume3d(volume: np.ndarray, depth: int, size: int) -> np.ndarray:
    """``[X, Y, Z]`` -> float32 ``[depth, 1, size, size]`` (trilinear), axial slices first."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 0, 1)))[None, None]  # [1, 1, Z, X, Y]
    resized = torch.nn.functional.interpolate(x, size=(depth, size, size), mode="trilinear", align_corners=False)
    return resized[0].permute(1, 0, 2, 3).numpy()


def decode_patient(item: Item) -> dict[str, np.ndarray]:
    """One patient -> ``{sequence: float16 sample}`` for the item's preset (with a ``WARNING`` when its volumes'
    shape differs from the other patients')."""
    source: Patient = item.source
    volumes = {seq: read_volume(source.file(seq)) for seq in SEQUENCES}
    shapes = {seq: v.shape for seq, v in volumes.items()}
    if len(set(shapes.values())) != 1:
        raise SkipItem(f"sequences differ in shape: {shapes}")
    p = PRESETS[source.preset]
    normalised = {seq: zscore_brain(v) for seq, v in volumes.items()}
    if source.preset == "slices2d":
        seg_path = source.file("seg")
        seg = read_volume(seg_path) if seg_path is not None else None
        if seg is not None and seg.shape != shapes["t1"]:
            raise SkipItem(f"seg shape {seg.shape} differs from the sequences' {shapes['t1']}")
        brain = np.any([v != 0 for v in volumes.values()], axis=0)
        centre = choose_slice(seg, brain)
        out = {seq: slices2d(v, centre, p["size"], p["slices"]).astype(np.float16) for seq, v in normalised.items()}
    else:
        out = {seq: volume3d(v, p["depth"], p["size"]).astype(np.float16) for seq, v in normalised.items()}
    if source.common_shape is not None and tuple(shapes["t1"]) != tuple(source.common_shape):
        out[WARNING] = (f"volume shape {tuple(shapes['t1'])} differs from the other patients' "
                        f"{tuple(source.common_shape)}: resampled to the preset all the same")
    return out
