"""arrays: turn a folder of the user's own numpy arrays into a prepared cache.

See ``bogc_cli.data.arrays`` for the folder format (``<split>/<modality>.npy`` + ``labels.npy``, or
``<split>.npz``; optional ``classes.txt``; text as ``<split>/<modality>.txt`` or strings, tokenised here
with ``--tokenizer DIR`` or a word vocabulary of train, ``--max-length`` tokens, the tokenizer saved in
the cache's ``tokenizers/<modality>/``). A recipe may also point at such a folder directly; preparing
it once saves the validation carve-out and gives memory-mappable arrays for every split. ``--task``
(``task``): how ``labels`` is read (classification, multilabel, regression; ``bogc_cli.data.arrays``).
"""

from __future__ import annotations

from pathlib import Path

from bogc_cli import __version__
from bogc_cli.data.arrays import describe_kinds, read_arrays_folder
from bogc_cli.data.cache import SPLITS, Manifest, write_cache
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_val_fraction, digest, file_list_checksum, no_log,
                               reject_preset, reusable_manifest, start_rewrite)
from data_prep.text import save_tokenizer, text_fingerprint

DEFAULT_VAL_FRACTION = 0.1


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False,
            kinds: dict[str, str] | None = None, tokenizer: str | Path | None = None,
            max_length: int | None = None, task: str | None = None) -> Manifest:
    """Validate the arrays folder ``raw`` and write it to ``out`` as a cache; returns its manifest.

    Without a ``val`` split, ``val_fraction`` (default 0.1) of train is carved out, stratified and seeded.
    ``kinds`` sets modality kinds (``--kinds``), recorded in the manifest; ``strict`` turns the warnings about
    classes (none in train, none in test, none left for validation, names without samples) into errors.
    ``tokenizer`` (a local model directory) and ``max_length`` tokenise text modalities (``data_prep.text``).
    ``workers`` is accepted for a uniform interface.
    """
    raw, out = Path(raw), Path(out)
    reject_preset("arrays", preset, "your arrays are stored as they are; choose modalities in the recipe")
    val_fraction = choose_val_fraction(val_fraction, DEFAULT_VAL_FRACTION)
    if not raw.is_dir():
        raise UserError(f"arrays folder {raw} does not exist: point --raw at the folder holding train/ and test/ "
                        "(or train.npz and test.npz)")
    check_out_folder(out, raw)
    files = _input_files(raw)
    text = text_fingerprint(tokenizer, max_length)
    fingerprint = digest({"files": [str(p.relative_to(raw)) for p in files], "sha": file_list_checksum(files),
                          "seed": seed, "val_fraction": val_fraction, "kinds": dict(sorted((kinds or {}).items())),
                          "version": __version__, **({"text": text} if text else {}),
                          **({"task": task} if task else {})})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this arrays cache; nothing to do")
        return done

    log(f"reading and checking {raw}")
    tokenizers: dict = {}
    manifest, splits = read_arrays_folder(raw, kinds=kinds, val_fraction=val_fraction, seed=seed, strict=strict,
                                          tokenizer=tokenizer, max_length=max_length, tokenizers=tokenizers,
                                          task=task or "classification")
    for warning in manifest.warnings:
        log(f"warning: {warning}")
    start_rewrite(out)
    log(f"writing the cache to {out}")
    for m, tok in tokenizers.items():
        save_tokenizer(out, m, tok)
    return write_cache(out, dataset="arrays", classes=manifest.classes, kinds=describe_kinds(manifest),
                       splits=splits, params=manifest.params,
                       sources={**manifest.sources, "fingerprint": fingerprint}, warnings=manifest.warnings,
                       tokenizers={m: manifest.modalities[m].tokenizer for m in tokenizers}, task=manifest.task)


def _input_files(raw: Path) -> list[Path]:
    """The files ``read_arrays_folder`` reads: ``<split>/*.npy``, ``<split>/*.txt``, ``<split>.npz``,
    ``classes.txt``."""
    files = [raw / f"{split}.npz" for split in SPLITS] + [raw / "classes.txt"]
    files += [p for split in SPLITS for pattern in ("*.npy", "*.txt") for p in (raw / split).glob(pattern)
              if p.name != "ids.txt"]
    return sorted(p for p in files if p.is_file())
