"""BraTS 2019 glioma grade: HGG vs LGG from four MRI sequences (t1, t1ce, t2, flair), one sample per patient.

Raw layout (``--raw``, the training download ``MICCAI_BraTS_2019_Data_Training`` or its parent):
``HGG/<pid>/<pid>_{t1,t1ce,t2,flair,seg}.nii.gz`` and the same under ``LGG/``; volumes are
240x240x155, read with nibabel. Published: 335 patients, 259 HGG + 76 LGG.

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, carve_validation, write_manifest
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_preset, choose_val_fraction, count_mismatch, digest,
                               file_list_checksum, no_log, reusable_manifest, start_rewrite)
from data_prep.clipstore import Item, SkipItem, build_store

DATASET = "brats_grade"
CLASSES = ["LGG", "HGG"]
SEQUENCES = ("t1", "t1ce", "t2", "flair")
EXPECTED = {"HGG": 259, "LGG": 76}
TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1
PRESETS = {"slices2d": {"slices": 3, "size": 128, "kind": "image"},
           "vol3d": {"depth": 64, "size": 64, "kind": "video"}}
DEFAULT_PRESET = "slices2d"
LAYOUT = "HGG/<pid>/<pid>_t1.nii.gz ... and LGG/<pid>/..., as in MICCAI_BraTS_2019_Data_Training"


@dataclass(frozen=True)
class Patient:
    """One patient's folder and the preset to decode it with (``Item.source``)."""

    folder: str
    preset: str

    def describe(self) -> str:
        return self.folder


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log) -> Manifest:
    """Prepare the BraTS grade cache in ``out`` from ``raw``; returns its manifest."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(DATASET, preset, PRESETS, DEFAULT_PRESET)
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} does not exist: point --raw at the BraTS 2019 training data ({LAYOUT})")
    root = find_root(raw)
    check_out_folder(out, raw)
    patients = {grade: sorted(p for p in (root / grade).iterdir() if p.is_dir()) if (root / grade).is_dir() else []
                for grade in ("HGG", "LGG")}
    counts = {g: len(ps) for g, ps in patients.items()}
    sources = {"root": str(root), "patients": counts, "expected": EXPECTED,
               "file_list_sha256": file_list_checksum(f for ps in patients.values() for p in ps for f in p.iterdir())}
    if counts != EXPECTED:
        message = (f"{DATASET}: {counts['HGG']} HGG + {counts['LGG']} LGG patients, not the published "
                   f"{EXPECTED['HGG']} + {EXPECTED['LGG']}")
        sources["count_check"] = count_mismatch(message, strict, "use the complete BraTS 2019 training data", log)
    items = split_patients(patients, preset, seed, val_fraction)
    if not any(it.split == "test" for it in items) or not any(it.split == "train" for it in items):
        raise UserError(f"too few patients under {root} for a train/test split ({sum(counts.values())} found)")
    params = {**PRESETS[preset], "normalisation": "z-score over non-zero voxels per volume", "seed": seed,
              "test_fraction": TEST_FRACTION, "val_fraction": val_fraction,
              "split": "patient level, stratified by grade (sklearn train_test_split)"}
    if preset == "slices2d":
        params["slice_choice"] = "largest tumour area in seg (> 0), with its two neighbours; largest brain area without"
    fingerprint = digest({"dataset": DATASET, "params": params, "sources": sources, "version": __version__,
                          "items": [(it.key, it.split, it.label) for it in items]})
    if (done := reusable_manifest(out, fingerprint)) is not None:
        log(f"{out} already holds this {DATASET} cache; nothing to do")
        return done
    start_rewrite(out)
    shape = _sample_shape(preset)
    layout = {seq: (shape, "float16") for seq in SEQUENCES}
    log(f"preparing {len(items)} patients with preset {preset}, {workers} worker(s)")
    splits, skipped = build_store(out, items, layout, decode_patient, fingerprint=fingerprint, workers=workers,
                                  log=log, noun="patients")
    for item in skipped:
        log(f"skipped {item['file']}: {item['reason']}")
    log(f"wrote {sum(len(s) for s in splits.values())} patients, skipped {len(skipped)}")
    return write_manifest(out, dataset=DATASET, classes=CLASSES, kinds={s: PRESETS[preset]["kind"] for s in SEQUENCES},
                          splits=splits, preset=preset, params=params,
                          sources={**sources, "fingerprint": fingerprint}, skipped=skipped)


def find_root(raw: Path) -> Path:
    for root in (raw, raw / "MICCAI_BraTS_2019_Data_Training"):
        if (root / "HGG").is_dir() or (root / "LGG").is_dir():
            return root
    raise UserError(f"no HGG/ or LGG/ folder in {raw}: point --raw at the BraTS 2019 training data ({LAYOUT})")


def split_patients(patients: dict[str, list[Path]], preset: str, seed: int, val_fraction: float) -> list[Item]:
    """One ``Item`` per patient, split at patient level: stratified, seeded test then val carve-outs."""
    folders = [p for grade in ("HGG", "LGG") for p in patients[grade]]
    labels = np.array([CLASSES.index(p.parent.name) for p in folders])
    if len(folders) < 3:
        return [Item(p.name, "train", int(y), Patient(str(p), preset)) for p, y in zip(folders, labels)]
    rest, test = carve_validation(labels, TEST_FRACTION, seed)
    train, val = carve_validation(labels[rest], val_fraction, seed)
    split_of = {**{int(i): "test" for i in test}, **{int(rest[i]): "val" for i in val},
                **{int(rest[i]): "train" for i in train}}
    return [Item(p.name, split_of[i], int(labels[i]), Patient(str(p), preset)) for i, p in enumerate(folders)]


def _sample_shape(preset: str) -> tuple[int, ...]:
    p = PRESETS[preset]
    return (p["slices"], p["size"], p["size"]) if preset == "slices2d" else (p["depth"], 1, p["size"], p["size"])


# ---------------------------------------------------------------------------------------------
# decoding one patient (runs in worker processes)


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume as float32 ``[X, Y, Z]``; unreadable or missing files skip the patient."""
    import nibabel as nib

    if not path.is_file():
        raise SkipItem(f"missing {path.name}")
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
    """One patient -> ``{sequence: float16 sample}`` for the item's preset."""
    source: Patient = item.source
    folder = Path(source.folder)
    volumes = {seq: read_volume(folder / f"{folder.name}_{seq}.nii.gz") for seq in SEQUENCES}
    shapes = {seq: v.shape for seq, v in volumes.items()}
    if len(set(shapes.values())) != 1:
        raise SkipItem(f"sequences differ in shape: {shapes}")
    p = PRESETS[source.preset]
    normalised = {seq: zscore_brain(v) for seq, v in volumes.items()}
    if source.preset == "slices2d":
        seg_path = folder / f"{folder.name}_seg.nii.gz"
        seg = read_volume(seg_path) if seg_path.is_file() else None
        if seg is not None and seg.shape != shapes["t1"]:
            raise SkipItem(f"seg shape {seg.shape} differs from the sequences' {shapes['t1']}")
        brain = np.any([v != 0 for v in volumes.values()], axis=0)
        centre = choose_slice(seg, brain)
        return {seq: slices2d(v, centre, p["size"], p["slices"]).astype(np.float16) for seq, v in normalised.items()}
    return {seq: volume3d(v, p["depth"], p["size"]).astype(np.float16) for seq, v in normalised.items()}
