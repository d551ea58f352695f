"""Helpers shared by the preparers: logging callback, fingerprints, safe (re)writes of a cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from bogc_cli.data.cache import SPLITS, TOKENIZERS_DIR, Manifest, read_manifest, summarise_skipped
from bogc_cli.errors import UserError

Log = Callable[[str], None]

#: What a cache folder may hold; anything else in ``--out`` means it is not ours to overwrite.
_CACHE_ENTRIES = {"manifest.json", TOKENIZERS_DIR, *SPLITS}


def folders_below(raw: Path, depth: int) -> list[Path]:
    """``raw`` and its sub-folders up to ``depth`` levels down (hidden ones left out), shallowest first, each level
    sorted: where a preparer looks for a dataset, so that a re-pack's extra folder level (``CREMA-D-master/``,
    ``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/``) does not matter."""
    found = [raw]
    for level in range(1, depth + 1):
        found += sorted(p for p in raw.glob("/".join(["*"] * level))
                        if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(raw).parts))
    return found


def no_log(message: str) -> None:
    """The default ``log`` callback: preparers stay silent unless given one."""


def digest(obj: Any) -> str:
    """sha256 (hex) of ``obj`` serialised as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_list_checksum(paths: Iterable[Path]) -> str:
    """sha256 of the sorted ``name size`` lines of ``paths``: cheap, and changes when files do."""
    lines = sorted(f"{p.name} {p.stat().st_size}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_out_folder(out: Path, raw: Path) -> None:
    """Refuse to write a cache over the raw data, into a folder that holds other files, or where this user
    cannot write (checked before anything is read, so a long preparation never fails at its end)."""
    if out.resolve() == raw.resolve():
        raise UserError(f"--out {out} is the raw folder itself: choose a separate output folder, e.g. data/<dataset>")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder: choose a folder for the prepared cache")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} cannot be written by this user: choose a folder you can write to")
    if not out.exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _CACHE_ENTRIES and not p.name.startswith("."))
    if foreign:
        raise UserError(f"--out {out} is not empty and is not a prepared cache (it holds {', '.join(foreign[:5])}): "
                        "choose an empty or new folder")


def reusable_manifest(out: Path, fingerprint: str, overwrite: bool = False) -> Manifest | None:
    """What to do with a cache already in ``out``, the same rule for every preparer (and the same as
    ``bogc train``'s for results):

    - a complete cache made from the same inputs and parameters: its manifest is returned (nothing to do),
      unless ``overwrite`` asks to make it again;
    - a complete cache made from other inputs or parameters: ``UserError`` unless ``overwrite``;
    - no complete cache (a new folder, or one an interrupted run left): ``None``, so preparation starts
      or resumes.
    """
    if not (out / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(out)
    except UserError:
        return None  # a damaged manifest is no usable cache: it is rewritten
    if not all((out / split).is_dir() for split in manifest.splits):
        return None
    if overwrite:
        return None
    if manifest.sources.get("fingerprint") == fingerprint:
        return manifest
    preset = f" (preset {manifest.preset})" if manifest.preset else ""
    made = f", made {manifest.created}," if manifest.created else ""
    raise UserError(f"--out {out} already holds a prepared {manifest.dataset}{preset} cache{made} from other inputs "
                    "or parameters: add --overwrite to replace it, or choose another --out")


def start_rewrite(out: Path) -> None:
    """Drop the old manifest before any array is replaced, so a half-rewritten folder never looks complete,
    and the old split folders unless an interrupted preparation staged in ``out/.partial`` will resume
    (their files belong to the cache being replaced: a modality the new one lacks must not linger)."""
    (out / "manifest.json").unlink(missing_ok=True)
    if (out / ".partial").exists():
        return
    for split in (*SPLITS, TOKENIZERS_DIR):
        if (out / split).is_dir():
            shutil.rmtree(out / split)


def require_samples(dataset: str, counts: dict[str, int], skipped: list[dict[str, str]]) -> None:
    """Refuse to finish a cache with an empty train or test split (or an empty val split that was listed):
    ``counts`` are the samples written per split, ``skipped`` the files left out with their reasons."""
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise UserError(f"{dataset}: no usable sample is left in the {' and '.join(empty)} split "
                        f"({summarise_skipped(skipped)}); no cache was written: fix the raw data and run the same "
                        "command again")


def reject_preset(dataset: str, preset: str | None, hint: str) -> None:
    """For datasets without prepare presets: any ``--preset`` is a user error explained by ``hint``."""
    if preset is not None:
        raise UserError(f"`bogc prepare {dataset}` takes no --preset (got {preset!r}): {hint}")


def choose_preset(dataset: str, preset: str | None, presets: dict, default: str) -> str:
    """``preset`` (or the dataset's default), refused with the valid names when unknown."""
    preset = preset or default
    if preset not in presets:
        raise UserError(f"unknown {dataset} preset {preset!r}; valid: {', '.join(presets)}")
    return preset


def choose_val_fraction(val_fraction: float | None, default: float) -> float:
    """``--val-fraction`` (or the dataset's default), checked to lie in (0, 1).

    0 is refused rather than taken as "no validation": training picks its best epoch on the validation
    split and would then carve one itself (``dataset.val_fraction``), so the cache would not hold what
    the user asked for."""
    value = default if val_fraction is None else float(val_fraction)
    if value == 0:
        raise UserError("--val-fraction 0 would leave no validation split, but training picks its best epoch on one "
                        "(and would then carve dataset.val_fraction of train itself): give a share in (0, 1), "
                        f"e.g. {default:g}")
    if not 0 < value < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {value:g}")
    return value


def count_mismatch(message: str, strict: bool, fix: str, log: Log) -> str:
    """A raw folder whose counts differ from the published ones: an error with ``--strict``
    (telling the user to ``fix``), else a logged warning; returns ``message`` for the manifest."""
    if strict:
        raise UserError(f"{message} (--strict): {fix}, or drop --strict")
    log(f"warning: {message}")
    return message


def log_problems(log: Log, skipped: list[dict[str, str]], warnings: list[str]) -> None:
    """Log each skipped file with its reason (``{"file", "reason"}``), then each warning about a kept one."""
    for item in skipped:
        log(f"skipped {item['file']}: {item['reason']}")
    for warning in warnings:
        log(f"warning: {warning}")
