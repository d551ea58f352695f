"""CMU-MOSEI (and, through ``data_prep.mosi``, CMU-MOSI) sentiment from the word-aligned feature pickle.

Raw input (``--raw``): the aligned pickle distributed with MulT (Tsai et al., ACL 2019),
``mosei_senti_data.pkl`` (MOSI: ``mosi_data.pkl``), or a folder holding it. It is a dict with
``train``, ``valid`` and ``test``, each holding ``text`` ``[N, 50, 300]`` (GloVe), ``audio``
``[N, 50, 74]`` (COVAREP; MOSI 5), ``vision`` ``[N, 50, 35]`` (Facet; MOSI 20), ``labels``
``[N, 1, 1]`` (sentiment in [-3, 3]) and ``id``. Pickles can run code when loaded: only prepare
files you trust.

Cache: three ``sequence`` modalities ``[50, D]`` float32 (the features span several orders of
magnitude, so float16 would lose the small ones), the pickle's own splits (``valid`` becomes
``val``; no carve-out). Non-finite values (the MOSEI audio has -inf) become 0, as MulT does, and
are counted in the manifest. Labels: preset ``acc2`` = negative (< 0) vs non-negative (>= 0);
``acc7`` = sentiment rounded and clipped to -3..3.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, SplitArrays, write_cache
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_preset, count_mismatch, digest, file_list_checksum, no_log,
                               reusable_manifest, start_rewrite)

MODALITIES = ("text", "audio", "vision")
SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}
PRESETS = {"acc2": ["negative", "non-negative"], "acc7": [str(k) for k in range(-3, 4)]}
DEFAULT_PRESET = "acc2"


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log) -> Manifest:
    """Prepare the MOSEI cache from its aligned pickle."""
    return prepare_pickle("mosei", ("mosei_senti_data.pkl", "mosei_data.pkl", "mosei_senti.pkl", "mosei.pkl"),
                          {"train": 16326, "val": 1871, "test": 4659}, {"text": 300, "audio": 74, "vision": 35},
                          raw, out, preset, val_fraction, strict, log)


def prepare_pickle(dataset: str, names: tuple[str, ...], expected: dict[str, int], dims: dict[str, int], raw: Path,
                   out: Path, preset: str | None, val_fraction: float | None, strict: bool, log: Log) -> Manifest:
    """Shared by MOSEI and MOSI: ``names`` are the pickle names looked for, ``expected`` the published sizes."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(dataset, preset, PRESETS, DEFAULT_PRESET)
    if val_fraction is not None:
        raise UserError(f"{dataset} has an official validation split (the pickle's 'valid'): drop --val-fraction")
    path = find_pickle(raw, names)
    check_out_folder(out, path.parent)
    params = {"labels": preset, "classes": PRESETS[preset], "non_finite": "replaced by 0 (as MulT)",
              "split": "the pickle's train/valid/test", "dtype": "float32"}
    sources = {"pickle": path.name, "file_list_sha256": file_list_checksum([path]), "expected": expected}
    fingerprint = digest({"dataset": dataset, "params": params, "sources": sources, "version": __version__})
    if (done := reusable_manifest(out, fingerprint)) is not None:
        log(f"{out} already holds this {dataset} cache; nothing to do")
        return done
    log(f"reading {path}")
    data = load_pickle(path)
    splits, replaced = {}, {m: 0 for m in MODALITIES}
    for split, key in SPLIT_KEYS.items():
        splits[split] = _split(path, data, key, dims, preset, replaced)
    params["non_finite_replaced"] = replaced
    counts = {s: len(a) for s, a in splits.items()}
    if counts != expected:
        message = (f"{dataset}: the pickle has train {counts['train']} / val {counts['val']} / test {counts['test']} "
                   f"segments, not the published {expected['train']:,} / {expected['val']:,} / {expected['test']:,}")
        sources["count_check"] = count_mismatch(message, strict, "use the full aligned pickle", log)
    start_rewrite(out)
    log(f"writing the cache to {out}")
    return write_cache(out, dataset=dataset, classes=PRESETS[preset], kinds={m: "sequence" for m in MODALITIES},
                       splits=splits, preset=preset, params=params, sources={**sources, "fingerprint": fingerprint})


def find_pickle(raw: Path, names: tuple[str, ...]) -> Path:
    if raw.is_file():
        return raw
    for name in names:
        if (raw / name).is_file():
            return raw / name
    raise UserError(f"no aligned feature pickle in {raw}: looked for {', '.join(names)}; point --raw at the "
                    "pickle distributed with MulT, or the folder holding it")


def load_pickle(path: Path) -> dict[str, Any]:
    """The pickle's dict; Python 2 era files need ``encoding='latin1'``."""
    try:
        with open(path, "rb") as fh:
            try:
                data = pickle.load(fh)
            except UnicodeDecodeError:
                fh.seek(0)
                data = pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError) as exc:
        raise UserError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}): "
                        "use the aligned feature pickle distributed with MulT") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not the dict of train/valid/test splits")
    return data


def labels_for(sentiment: np.ndarray, preset: str) -> np.ndarray:
    """Sentiment ``[N]`` in [-3, 3] -> int64 class ``[N]`` (``acc2``: >= 0 is 1; ``acc7``: round + 3)."""
    if preset == "acc2":
        return (sentiment >= 0).astype(np.int64)
    return (np.round(np.clip(sentiment, -3, 3)) + 3).astype(np.int64)


def _split(path: Path, data: dict, key: str, dims: dict[str, int], preset: str, replaced: dict[str, int]) -> SplitArrays:
    if key not in data or not isinstance(data[key], dict):
        raise UserError(f"{path} has no {key!r} split (it has {', '.join(map(str, data))}): expected train, valid, test")
    part = data[key]
    missing = [k for k in (*MODALITIES, "labels") if k not in part]
    if missing:
        raise UserError(f"{path}: split {key!r} lacks {', '.join(missing)} (it has {', '.join(map(str, part))})")
    sentiment = np.asarray(part["labels"], dtype=np.float32).reshape(len(part["labels"]), -1)[:, 0]
    inputs = {}
    for m in MODALITIES:
        arr = np.asarray(part[m], dtype=np.float32)
        if arr.ndim != 3 or arr.shape[0] != sentiment.shape[0]:
            raise UserError(f"{path}: {key}/{m} has shape {arr.shape}; expected [{sentiment.shape[0]}, T, D] "
                            f"(one [T, D] sequence per labelled segment)")
        if arr.shape[2] != dims[m]:
            raise UserError(f"{path}: {key}/{m} has {arr.shape[2]} features per step, not {dims[m]}: is this the "
                            "right dataset's pickle?")
        bad = ~np.isfinite(arr)
        replaced[m] += int(bad.sum())
        inputs[m] = np.where(bad, 0.0, arr).astype(np.float32)
    ids = [_id_text(i) for i in part["id"]] if "id" in part else None
    return SplitArrays(inputs, labels_for(sentiment, preset), ids)


def _id_text(value: Any) -> str:
    parts = np.asarray(value).reshape(-1)
    return "|".join(p.decode() if isinstance(p, bytes) else str(p) for p in parts)
