"""Helpers shared by the preparers: logging callback, fingerprints, safe (re)writes of a cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from bogc_cli.data.cache import SPLITS, Manifest, read_manifest
from bogc_cli.errors import UserError

Log = Callable[[str], None]

#: What a cache folder may hold; anything else in ``--out`` means it is not ours to overwrite.
_CACHE_ENTRIES = {"manifest.json", *SPLITS}


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
    """Refuse to write a cache over the raw data or into a folder that holds other files."""
    if out.resolve() == raw.resolve():
        raise UserError(f"--out {out} is the raw folder itself: choose a separate output folder, e.g. data/<dataset>")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose a folder for the prepared cache")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _CACHE_ENTRIES and not p.name.startswith("."))
    if foreign:
        raise UserError(f"--out {out} is not empty and is not a prepared cache (it holds {', '.join(foreign[:5])}): "
                        "choose an empty or new folder")


def reusable_manifest(out: Path, fingerprint: str) -> Manifest | None:
    """The manifest of a complete cache in ``out`` made from the same inputs and parameters, else None."""
    if not (out / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(out)
    except UserError:
        return None
    if manifest.sources.get("fingerprint") != fingerprint:
        return None
    if not all((out / split).is_dir() for split in manifest.splits):
        return None
    return manifest


def start_rewrite(out: Path) -> None:
    """Drop the old manifest before any array is replaced, so a half-rewritten folder never looks complete."""
    (out / "manifest.json").unlink(missing_ok=True)


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
    """``--val-fraction`` (or the dataset's default), checked to lie in [0, 1)."""
    value = default if val_fraction is None else float(val_fraction)
    if not 0 <= value < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {value}")
    return value


def count_mismatch(message: str, strict: bool, fix: str, log: Log) -> str:
    """A raw folder whose counts differ from the published ones: an error with ``--strict``
    (telling the user to ``fix``), else a logged warning; returns ``message`` for the manifest."""
    if strict:
        raise UserError(f"{message} (--strict): {fix}, or drop --strict")
    log(f"warning: {message}")
    return message
