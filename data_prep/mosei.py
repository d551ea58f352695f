"""CMU-MOSEI (and, through ``data_prep.mosi``, CMU-MOSI) sentiment from the feature pickles researchers share.

Raw input (``--raw``): the pickle, or a folder holding it (searched two levels down). Pickles read:

- MulT's (Tsai et al., ACL 2019): word-aligned ``mosei_senti_data.pkl`` (MOSI ``mosi_data.pkl``) and
  unaligned ``mosei_senti_data_noalign.pkl`` (``mosi_data_noalign.pkl``): a dict with ``train``,
  ``valid`` and ``test``, each holding ``text`` ``[N, 50, 300]`` (GloVe), ``audio`` ``[N, T_a, 74]``
  (COVAREP; MOSI 5), ``vision`` ``[N, T_v, 35]`` (Facet; MOSI 20), ``labels`` ``[N, 1, 1]`` (sentiment in
  [-3, 3]) and ``id``. Aligned, every T is 50; unaligned, MOSEI's audio and vision have 500 steps;
- MMSA's (Yu et al.; also Self-MM, MMIM): ``aligned_50.pkl`` / ``unaligned_50.pkl`` with the same split and
  modality keys, ``text`` of 768 BERT features (or 300 GloVe), sentiment in ``regression_labels`` ``[N]``,
  and extra keys (``raw_text``, ``text_bert`` token ids, lengths) that are not used.

Other key spellings met in re-packs are accepted (``visual`` for ``vision``, ``acoustic`` for ``audio``).
Refused with one message naming the file and the fix: a pickle of the other dataset (feature sizes
differ from the preset's), a modality whose sequence length differs between splits, an empty split,
labels that are not finite, a Git LFS pointer instead of the pickle, a file that is not a pickle.

Cache: three ``sequence`` modalities ``[T, D]`` float32 (the features span several orders of
magnitude, so float16 would lose the small ones), the pickle's own splits (``valid`` becomes
``val``; no carve-out). Non-finite values (the MOSEI audio has -inf) become 0, as MulT does, and
are counted in the manifest. Labels: preset ``acc2`` = negative (< 0) vs non-negative (>= 0);
``acc7`` = sentiment rounded and clipped to -3..3; ``regression`` = the sentiment itself, float32 in
[-3, 3] as the pickle holds it (task ``regression``: MulT's, CGGM's and MMSA's protocol, trained with an L1
loss and scored with MAE, Corr, Acc-2, F1, Acc-7). A pickle whose labels hold more than one value per
segment (IEMOCAP's ``[N, 4, 2]`` emotions) is refused with the command that reads it. Pickles can run
code when loaded: only prepare files you trust.

``prepare_pickle`` is shared with ``data_prep.mosi`` and ``data_prep.iemocap``; a ``Targets``
says how the pickle's ``labels`` become the cache's targets (``SENTIMENT`` here, IEMOCAP's emotions
there).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bogc_cli import __version__
from bogc_cli.data.cache import Manifest, SplitArrays, write_cache
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import (Log, check_out_folder, choose_preset, count_mismatch, digest, file_list_checksum,
                               folders_below, log_problems, no_log, require_samples, reusable_manifest,
                               start_rewrite)

MODALITIES = ("text", "audio", "vision")
SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}
KEYS = {"text": ("text",), "audio": ("audio", "acoustic"), "vision": ("vision", "visual", "video"),
        "labels": ("labels", "regression_labels", "label")}
"""The key of each array in a split's dict, in the spellings met: MulT's first, MMSA's and re-packs' after."""
TEXT_DIMS = (300, 768)  # GloVe (MulT), BERT features (MMSA)
MMSA_NAMES = ("aligned_50.pkl", "unaligned_50.pkl")
SEARCH_DEPTH = 2
PRESETS = {"acc2": ["negative", "non-negative"], "acc7": [str(k) for k in range(-3, 4)], "regression": ["sentiment"]}
TASKS = {"acc2": "classification", "acc7": "classification", "regression": "regression"}
"""The task type each preset's cache holds (``Manifest.task``)."""
DEFAULT_PRESET = "acc2"


@dataclass(frozen=True)
class Targets:
    """How a pickle's ``labels`` become a cache's targets.

    ``presets``: prepare preset -> class names (classification) or label names (multilabel); ``default``:
    the preset used without ``--preset``; ``tasks``: preset -> task (``bogc_cli.data.cache.TASKS``),
    classification when absent; ``convert(labels, preset)``: one split's labels as stored in the pickle
    (float32, first axis = segments) -> (targets in the task's storage form, ``{row: reason}`` of the
    segments left out). ``convert`` raises ``ValueError`` with what is wrong when the labels do not fit
    (the caller names the file and split)."""

    presets: dict[str, list[str]]
    default: str
    convert: Callable[[np.ndarray, str], tuple[np.ndarray, dict[int, str]]]
    tasks: dict[str, str] | None = None

    def task(self, preset: str) -> str:
        return (self.tasks or {}).get(preset, "classification")


def sentiment_targets(labels: np.ndarray, preset: str) -> tuple[np.ndarray, dict[int, str]]:
    """MOSI/MOSEI: one sentiment score in [-3, 3] per segment (MulT ``[N, 1, 1]``, MMSA ``[N]``) -> classes
    ``[N]`` by ``labels_for``; no segment is left out."""
    n = labels.shape[0] if labels.ndim else 0
    per_segment = labels.reshape(n, -1).shape[1] if labels.size else 1
    if per_segment != 1:
        raise ValueError(f"the labels hold {per_segment} values per segment (shape {list(labels.shape)}), not one "
                         "sentiment score: is this IEMOCAP's emotion pickle? (`bogc prepare iemocap` reads it)")
    sentiment = labels.reshape(n) if labels.size else np.zeros(0, np.float32)
    if not np.isfinite(sentiment).all():
        raise ValueError("labels that are NaN or infinite: use an intact pickle")
    return labels_for(sentiment, preset), {}


SENTIMENT = Targets(PRESETS, DEFAULT_PRESET, sentiment_targets, tasks=TASKS)


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the MOSEI cache from a MulT or MMSA feature pickle (see the module doc)."""
    return prepare_pickle("mosei", ("mosei_senti_data.pkl", "mosei_data.pkl", "mosei_senti.pkl", "mosei.pkl",
                                    "mosei_senti_data_noalign.pkl", "mosei_data_noalign.pkl", *MMSA_NAMES),
                          {"train": 16326, "val": 1871, "test": 4659}, {"audio": 74, "vision": 35},
                          raw, out, preset, val_fraction, strict, log, overwrite)


def prepare_pickle(dataset: str, names: tuple[str, ...], expected: dict[str, int], dims: dict[str, int], raw: Path,
                   out: Path, preset: str | None, val_fraction: float | None, strict: bool, log: Log,
                   overwrite: bool = False, targets: Targets = SENTIMENT) -> Manifest:
    """Shared by MOSEI, MOSI and IEMOCAP: ``names`` are the pickle names looked for (preferred first),
    ``expected`` the published segments per split (checked before any segment is left out), ``dims`` the
    audio and vision feature sizes (text: 300 GloVe or 768 BERT), ``targets`` how labels become targets.
    Segments that ``targets`` leaves out are reported as skipped (``<pickle>:<split>[<row>]``)."""
    raw, out = Path(raw), Path(out)
    preset = choose_preset(dataset, preset, targets.presets, targets.default)
    if val_fraction is not None:
        raise UserError(f"{dataset} has an official validation split (the pickle's 'valid'): drop --val-fraction")
    path = find_pickle(raw, names, log)
    check_out_folder(out, path.parent)
    task = targets.task(preset)
    params = {"labels": preset, "classes": targets.presets[preset], "task": task,
              "non_finite": "replaced by 0 (as MulT)", "split": "the pickle's train/valid/test", "dtype": "float32"}
    sources = {"pickle": path.name, "file_list_sha256": file_list_checksum([path]), "expected": expected}
    fingerprint = digest({"dataset": dataset, "params": params, "sources": sources, "version": __version__})
    if (done := reusable_manifest(out, fingerprint, overwrite)) is not None:
        log(f"{out} already holds this {dataset} cache; nothing to do")
        return done
    log(f"reading {path}")
    data = load_pickle(path)
    splits, replaced, counts, skipped = {}, {m: 0 for m in MODALITIES}, {}, []
    for split, key in SPLIT_KEYS.items():
        splits[split], counts[split] = _split(path, data, key, dims, targets, preset, replaced, skipped)
    log_problems(log, skipped, [])
    require_samples(dataset, {s: len(a) for s, a in splits.items()}, skipped)
    lengths = _check_lengths(path, splits)
    params["non_finite_replaced"] = replaced
    params["sequence_lengths"] = lengths
    params["text_features"] = int(splits["train"].inputs["text"].shape[2])
    params["aligned"] = len(set(lengths.values())) == 1
    if counts != expected:
        message = (f"{dataset}: the pickle has train {counts['train']} / val {counts['val']} / test {counts['test']} "
                   f"segments, not the published {expected['train']:,} / {expected['val']:,} / {expected['test']:,}")
        sources["count_check"] = count_mismatch(message, strict, "use the full aligned pickle", log)
    start_rewrite(out)
    log(f"writing the cache to {out}")
    return write_cache(out, dataset=dataset, classes=targets.presets[preset],
                       kinds={m: "sequence" for m in MODALITIES}, splits=splits, preset=preset, params=params,
                       sources={**sources, "fingerprint": fingerprint}, skipped=skipped, task=task)


def find_pickle(raw: Path, names: tuple[str, ...], log: Log = no_log) -> Path:
    """``raw`` itself when it is a file, else the first of ``names`` found in ``raw`` or its sub-folders (two levels
    down); when several are found, the one used and the others are logged."""
    if raw.is_file():
        return raw
    if not raw.is_dir():
        raise UserError(f"--raw {raw} does not exist: point it at the feature pickle (e.g. {names[0]}) or its folder")
    folders = folders_below(raw, SEARCH_DEPTH)
    found = [folder / name for name in names for folder in folders if (folder / name).is_file()]
    if not found:
        raise UserError(f"no feature pickle in {raw}: looked for {', '.join(names)}; point --raw at the pickle "
                        "distributed with MulT or MMSA, or the folder holding it")
    if len(found) > 1:
        log(f"using {found[0]} (also found {', '.join(str(p) for p in found[1:3])}: give that file as --raw to use it)")
    return found[0]


def load_pickle(path: Path) -> dict[str, Any]:
    """The pickle's dict; Python 2 era files need ``encoding='latin1'``."""
    refuse_pointer(path)
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
    """Sentiment ``[N]`` in [-3, 3] -> int64 class ``[N]`` (``acc2``: >= 0 is 1; ``acc7``: round + 3), or the
    float32 sentiment itself (``regression``)."""
    if preset == "regression":
        return np.asarray(sentiment, dtype=np.float32)
    if preset == "acc2":
        return (sentiment >= 0).astype(np.int64)
    return (np.round(np.clip(sentiment, -3, 3)) + 3).astype(np.int64)


def _pick(part: dict, name: str) -> Any:
    """The array stored under one of ``KEYS[name]``, or None."""
    return next((part[k] for k in KEYS[name] if k in part), None)


def _split(path: Path, data: dict, key: str, dims: dict[str, int], targets: Targets, preset: str,
           replaced: dict[str, int], skipped: list[dict[str, str]]) -> tuple[SplitArrays, int]:
    """One split of the pickle as arrays, and its number of segments before ``targets`` left any out (those
    are appended to ``skipped``)."""
    if key not in data or not isinstance(data[key], dict):
        raise UserError(f"{path} has no {key!r} split (it has {', '.join(map(str, data))}): expected train, valid, "
                        "test")
    part = data[key]
    missing = [" or ".join(KEYS[k]) for k in (*MODALITIES, "labels") if _pick(part, k) is None]
    if missing:
        raise UserError(f"{path}: split {key!r} lacks {', '.join(missing)} (it has {', '.join(map(str, part))})")
    raw_labels = np.asarray(_pick(part, "labels"), dtype=np.float32)
    try:
        labels, dropped = targets.convert(raw_labels, preset)
    except ValueError as exc:
        raise UserError(f"{path}: split {key!r} has {exc}") from None
    n = int(labels.shape[0])
    inputs = {}
    for m in MODALITIES:
        arr = np.asarray(_pick(part, m), dtype=np.float32)
        if arr.ndim != 3 or arr.shape[0] != n:
            raise UserError(f"{path}: {key}/{m} has shape {arr.shape}; expected [{n}, T, D] "
                            f"(one [T, D] sequence per labelled segment)")
        allowed = TEXT_DIMS if m == "text" else (dims[m],)
        if arr.shape[2] not in allowed:
            raise UserError(f"{path}: {key}/{m} has {arr.shape[2]} features per step, not "
                            f"{' or '.join(map(str, allowed))}: is this the right dataset's pickle?")
        bad = ~np.isfinite(arr)
        replaced[m] += int(bad.sum())
        inputs[m] = np.where(bad, 0.0, arr).astype(np.float32)
    ids = part.get("id", part.get("ids"))
    ids = [_id_text(i) for i in ids] if ids is not None and len(ids) == n else None
    split = SplitArrays(inputs, labels, ids)
    if dropped:
        skipped += [{"file": f"{path.name}:{key}[{row}]" + (f" ({ids[row]})" if ids else ""), "reason": reason}
                    for row, reason in sorted(dropped.items())]
        split = split.subset(np.array([r for r in range(n) if r not in dropped], np.int64))
    return split, n


def _check_lengths(path: Path, splits: dict[str, SplitArrays]) -> dict[str, int]:
    """Each modality's sequence length, which every split must share (the model's input shape)."""
    lengths = {}
    for m in MODALITIES:
        per_split = {s: int(a.inputs[m].shape[1]) for s, a in splits.items()}
        if len(set(per_split.values())) != 1:
            raise UserError(f"{path}: {m} sequences have {per_split} steps in the splits; every split must have "
                            "the same length: use one pickle (aligned or unaligned) for all splits")
        lengths[m] = per_split["train"]
    return lengths


def _id_text(value: Any) -> str:
    parts = np.asarray(value).reshape(-1)
    return "|".join(p.decode() if isinstance(p, bytes) else str(p) for p in parts)
