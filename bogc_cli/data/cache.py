"""The prepared cache: the one on-disk format every dataset is turned into.

Layout of a cache folder::

    manifest.json                 see ``Manifest``
    <split>/<modality>.npy        one array per split and modality, first axis = samples
    <split>/labels.npy            the targets; their form follows the manifest's ``task``:
                                  classification: int64 class indices [N];
                                  multilabel: uint8 multi-hot [N, C] (1 = the label applies);
                                  regression: float32 values [N] (one target, named by ``classes[0]``)
    <split>/ids.txt               optional: one source id per sample (file name, row number)
    tokenizers/<modality>/        text modalities: the tokenizer their ids came from (a copy of the
                                  pretrained one, or the word vocabulary built from train: vocab.txt)

Splits are ``train``, ``val`` and ``test``. Arrays are plain ``.npy`` so they can be
memory-mapped. Frames are stored as uint8, spectrograms as float16, feature vectors as
float32. A modality's ``kind`` tells the model what it is:

- ``audio``: spectrogram ``[C, F, T]`` (C is 1 for a mono spectrogram)
- ``image``: ``[C, H, W]``
- ``video``: frames ``[T, C, H, W]``
- ``vector``: features ``[D]``
- ``sequence``: a time series of feature vectors ``[T, D]`` (e.g. MOSEI word-aligned features)
- ``text``: tokenised text ``[2, L]`` int32: row 0 the token ids, row 1 the attention mask (1 = a
  token, 0 = padding), ``L`` the ``--max-length``. The modality's ``tokenizer`` (in the manifest)
  says where the ids came from: ``vocab_size``, ``pad_id``, ``kind`` (``word`` or ``pretrained``)
  and the source. One array keeps the two rows together through batching, memory-mapping and
  data-parallel sharding; batches reach the model as float32 like every kind (ids are exact up to
  2**24) and the text encoders read them back as integers. A missing text (``model.fill:
  zero-input``, modality dropout) is all zeros: every position padding, mask 0.

``data_prep/text.py`` tokenises (a local Hugging Face tokenizer, or a word vocabulary built from
the train split) for every preparer with a text modality.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bogc_cli import __version__
from bogc_cli.atomic import save_numpy, write_json, write_text
from bogc_cli.errors import UserError

CACHE_FORMAT = "bogc-cache/1"
SPLITS = ("train", "val", "test")
#: What a dataset's targets are (``Manifest.task``); a recipe may override it (``dataset.task``).
TASKS = ("classification", "multilabel", "regression")
KINDS = ("audio", "image", "video", "vector", "sequence", "text")
KIND_NDIM = {"audio": 3, "image": 3, "video": 4, "vector": 1, "sequence": 2, "text": 2}
TOKENIZERS_DIR = "tokenizers"


@dataclass
class ModalitySpec:
    """What one modality's arrays hold: ``kind`` (see module doc), per-sample ``shape``, ``dtype``; for a
    ``text`` modality, ``tokenizer``: ``vocab_size``, ``pad_id``, ``kind`` and source of its token ids."""

    kind: str
    shape: list[int]
    dtype: str
    tokenizer: dict[str, Any] | None = None

    @property
    def vocab_size(self) -> int:
        """A text modality's number of token ids (every id is below it)."""
        if not self.tokenizer or "vocab_size" not in self.tokenizer:
            raise UserError("this text modality's manifest entry lacks its tokenizer's vocab_size: prepare the "
                            "dataset again")
        return int(self.tokenizer["vocab_size"])


@dataclass
class Manifest:
    """Everything needed to read a cache back and to know where it came from.

    ``task`` (one of ``TASKS``) says what ``labels.npy`` holds; ``classes`` are the class names
    (classification), the label names (multilabel: one per column) or the target's name (regression,
    one entry). ``class_counts`` per split: samples per class, positives per label (multilabel), or
    nothing (regression). Caches written before task types existed read back as classification.
    """

    dataset: str
    classes: list[str]
    modalities: dict[str, ModalitySpec]
    splits: dict[str, int]
    preset: str | None = None
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    format: str = CACHE_FORMAT
    tool_version: str = __version__
    created: str = ""
    task: str = "classification"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Manifest":
        obj = dict(obj)
        obj["modalities"] = {k: ModalitySpec(**v) for k, v in obj["modalities"].items()}
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass
class SplitArrays:
    """One split in memory (or memory-mapped): ``inputs[modality]`` is ``[N, *shape]``; ``labels`` is ``[N]``
    (classification, regression) or ``[N, C]`` (multilabel), see ``label_array``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> "SplitArrays":
        ids = [self.ids[i] for i in index] if self.ids is not None else None
        return SplitArrays({m: a[index] for m, a in self.inputs.items()}, self.labels[index], ids)


def class_counts(labels: np.ndarray, classes: list[str], task: str = "classification") -> dict[str, int]:
    """Samples per class (classification), positives per label (multilabel, ``labels`` ``[N, C]``), or ``{}``
    (regression)."""
    if task == "regression":
        return {}
    if task == "multilabel":
        counts = np.asarray(labels).reshape(len(labels), -1).sum(axis=0)
    else:
        counts = np.bincount(labels.astype(np.int64), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


def label_array(labels: np.ndarray, task: str, classes: list[str], where: str = "labels") -> np.ndarray:
    """``labels`` in the storage form of ``task``: int64 ``[N]``, uint8 multi-hot ``[N, C]`` or float32 ``[N]``.

    Raises ``UserError`` naming ``where`` when the shape or values do not fit the task (a multilabel array
    that is not ``[N, len(classes)]`` of 0/1, class indices outside ``[0, len(classes))``, a non-finite
    regression target)."""
    labels = np.asarray(labels)
    if task not in TASKS:
        raise UserError(f"{where}: unknown task {task!r}; use one of {', '.join(TASKS)}")
    if task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != len(classes):
            raise UserError(f"{where}: multilabel targets must be [N, {len(classes)}] (one column per label), "
                            f"got shape {list(labels.shape)}")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise UserError(f"{where}: multilabel targets must be 0 or 1")
        return labels.astype(np.uint8)
    if labels.ndim != 1:
        raise UserError(f"{where}: {task} targets must be one value per sample [N], got shape {list(labels.shape)}")
    if task == "regression":
        out = labels.astype(np.float32)
        if out.size and not np.isfinite(out).all():
            raise UserError(f"{where}: a regression target is NaN or infinite")
        return out
    out = labels.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= len(classes)):
        raise UserError(f"{where}: class index outside [0, {len(classes)})")
    return out


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices ``[0, N)`` of ``labels`` ``[N]`` into (kept, carved), stratified by label and seeded.

    Returns two sorted int64 index arrays. The carve-out is scikit-learn's
    ``train_test_split(test_size=fraction, stratify=labels, random_state=seed)`` where it can stratify;
    where it cannot (a class with a single row, or fewer carved rows than classes), each class gives
    ``round(fraction * n_c)`` of its rows, drawn by ``numpy.random.default_rng(seed)``. Either way every
    class keeps at least one row on the kept side: a carve-out never takes a class's only training sample.
    ``fraction`` 0 carves nothing. Used for every validation, test and held-out carve-out in bogc.

    Targets that are not class indices (multilabel rows ``[N, C]``, float regression values ``[N]``) have no
    class to stratify by: their carve-out is ``train_test_split`` without ``stratify`` (seeded), and at least
    one row stays on the kept side.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    index = np.arange(labels.shape[0])
    if fraction <= 0 or index.size == 0:
        return index, index[:0]
    if labels.ndim != 1 or np.issubdtype(labels.dtype, np.floating):
        take = min(index.size - 1, int(round(fraction * index.size)))
        if take <= 0:
            return index, index[:0]
        kept, carved = train_test_split(index, test_size=take, random_state=seed)
        return np.sort(np.asarray(kept, np.int64)), np.sort(np.asarray(carved, np.int64))
    try:
        kept, carved = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:
        kept, carved = _carve_per_class(labels, fraction, seed)
    kept, carved = _keep_one_per_class(labels, np.asarray(kept, np.int64), np.asarray(carved, np.int64))
    return np.sort(kept), np.sort(carved)


def _carve_per_class(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``round(fraction * n_c)`` random rows of each class (at most ``n_c - 1``); at least one row overall
    when some class has two."""
    rng = np.random.default_rng(seed)
    carved = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(len(rows) - 1, int(round(fraction * len(rows))))
        carved.extend(rng.choice(rows, size=take, replace=False).tolist() if take > 0 else [])
    if not carved:
        values, counts = np.unique(labels, return_counts=True)
        if counts.max() >= 2:
            carved = [int(rng.choice(np.flatnonzero(labels == values[np.argmax(counts)])))]
    carved_set = set(carved)
    return np.array([i for i in range(len(labels)) if i not in carved_set], np.int64), np.array(carved, np.int64)


def _keep_one_per_class(labels: np.ndarray, kept: np.ndarray, carved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move back one carved row of every class that has none left on the kept side."""
    lost = sorted(set(labels[carved].tolist()) - set(labels[kept].tolist()))
    if not lost:
        return kept, carved
    back = [int(carved[labels[carved] == c][0]) for c in lost]
    return np.concatenate([kept, back]), np.setdiff1d(carved, back)


def carve_warnings(labels: np.ndarray, carved: np.ndarray, classes: list[str], where: str) -> list[str]:
    """What a validation carve-out of ``labels`` ``[N]`` (rows ``carved`` taken) could not do, in words:
    classes with a single training sample (kept in train, so absent from validation), or no row carved."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    single = [classes[k] for k in np.flatnonzero(counts == 1)]
    out = []
    if len(carved) == 0:
        out.append(f"no validation sample could be carved from the {len(labels)} training samples of {where} "
                   "(every class keeps at least one training sample)")
    elif single:
        out.append(f"class(es) {', '.join(single[:10])}{' ...' if len(single) > 10 else ''} have a single training "
                   f"sample in {where}: it stays in train, so the validation split has none of them")
    return out


def summarise_skipped(skipped: list[dict[str, str]], limit: int = 3) -> str:
    """``"12 files skipped: 10 Git LFS pointer file, ...; 2 empty audio"``: the commonest reasons with counts."""
    if not skipped:
        return "no file was skipped"
    reasons: dict[str, int] = {}
    for item in skipped:
        reason = str(item.get("reason", "")).split(" (")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    top = sorted(reasons.items(), key=lambda kv: -kv[1])
    text = "; ".join(f"{n} x {reason}" for reason, n in top[:limit])
    more = f"; {len(top) - limit} other reason(s)" if len(top) > limit else ""
    return f"{len(skipped)} file(s) skipped: {text}{more} (each listed in manifest.json and the prepare report)"


def write_cache(
    out: str | Path,
    *,
    dataset: str,
    classes: list[str],
    kinds: dict[str, str],
    splits: dict[str, SplitArrays],
    preset: str | None = None,
    params: dict[str, Any] | None = None,
    sources: dict[str, Any] | None = None,
    skipped: list[dict[str, str]] | None = None,
    warnings: list[str] | None = None,
    tokenizers: dict[str, dict[str, Any]] | None = None,
    task: str = "classification",
) -> Manifest:
    """Write ``splits`` (arrays already in their storage dtype) and the manifest to ``out``.

    ``tokenizers``: for each ``text`` modality, its tokenizer's description (``data_prep.text``), stored
    as the modality's ``tokenizer`` in the manifest. The manifest is written last, so a folder with a
    manifest is a complete cache.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split_name, split in splits.items():
        if split_name not in SPLITS:
            raise ValueError(f"unknown split {split_name!r}")
        for m, arr in split.inputs.items():
            save_numpy(out / split_name / f"{m}.npy", np.ascontiguousarray(arr))
        save_numpy(out / split_name / "labels.npy",
                   label_array(split.labels, task, classes, f"{dataset} {split_name} labels"))
        if split.ids is not None:
            write_text(out / split_name / "ids.txt", "\n".join(split.ids) + "\n")
    return write_manifest(out, dataset=dataset, classes=classes, kinds=kinds, splits=splits, preset=preset,
                          params=params, sources=sources, skipped=skipped, warnings=warnings, tokenizers=tokenizers,
                          task=task)


def write_manifest(
    out: str | Path,
    *,
    dataset: str,
    classes: list[str],
    kinds: dict[str, str],
    splits: dict[str, SplitArrays],
    preset: str | None = None,
    params: dict[str, Any] | None = None,
    sources: dict[str, Any] | None = None,
    skipped: list[dict[str, str]] | None = None,
    warnings: list[str] | None = None,
    tokenizers: dict[str, dict[str, Any]] | None = None,
    task: str = "classification",
) -> Manifest:
    """Describe ``splits`` (already written to ``out``, e.g. memory-mapped from there) in ``out/manifest.json``.

    Call it last: a folder with a manifest is a complete cache.
    """
    modalities: dict[str, ModalitySpec] = {}
    tokenizers = tokenizers or {}
    for split_name, split in splits.items():
        for m, arr in split.inputs.items():
            if kinds[m] not in KINDS:
                raise ValueError(f"unknown kind {kinds[m]!r} for modality {m!r}")
            if (kinds[m] == "text") != (m in tokenizers):
                raise ValueError(f"modality {m!r}: a text modality needs its tokenizer's description, and only a "
                                 "text modality has one")
            spec = ModalitySpec(kinds[m], list(arr.shape[1:]), str(arr.dtype), tokenizers.get(m))
            if m in modalities and modalities[m] != spec:
                raise ValueError(f"modality {m!r} has shape/dtype {spec} in {split_name} but {modalities[m]} elsewhere")
            modalities[m] = spec
    manifest = Manifest(
        dataset=dataset,
        preset=preset,
        classes=list(classes),
        modalities=modalities,
        splits={s: len(a) for s, a in splits.items()},
        class_counts={s: class_counts(a.labels, classes, task) for s, a in splits.items()},
        params=params or {},
        sources=sources or {},
        skipped=skipped or [],
        warnings=list(warnings or []),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task=task,
    )
    write_json(Path(out) / "manifest.json", manifest.to_json())
    return manifest


def read_manifest(root: str | Path) -> Manifest:
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir():
        raise UserError(f"prepared dataset folder {root} does not exist: run `bogc prepare` first, or fix dataset.root")
    if not path.is_file():
        raise UserError(f"{root} has no manifest.json: it is not a prepared cache (run `bogc prepare` on the raw data)")
    from bogc_cli.data.lfs import refuse_pointer

    refuse_pointer(path)
    try:
        manifest = Manifest.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is corrupt ({exc}); prepare the dataset again") from None
    if manifest.task not in TASKS:
        raise UserError(f"{path} declares task {manifest.task!r}, which this version of bogc does not know "
                        f"({', '.join(TASKS)}): prepare the dataset again, or update bogc")
    return manifest


def load_split(root: str | Path, manifest: Manifest, split: str, modalities: list[str] | None = None,
               mmap: bool = True) -> SplitArrays:
    """Open one split of a cache; arrays are memory-mapped unless ``mmap`` is False."""
    root = Path(root)
    names = modalities if modalities is not None else list(manifest.modalities)
    mode = "r" if mmap else None
    inputs = {}
    for m in names:
        inputs[m] = _load_npy(root / split / f"{m}.npy", mode)
    labels = np.asarray(_load_npy(root / split / "labels.npy", None))
    labels = labels.astype({"multilabel": np.uint8, "regression": np.float32}.get(manifest.task, np.int64))
    ids_path = root / split / "ids.txt"
    ids = ids_path.read_text().splitlines() if ids_path.is_file() else None
    for m, arr in inputs.items():
        if arr.shape[0] != labels.shape[0]:
            raise UserError(f"{root / split / (m + '.npy')} has {arr.shape[0]} samples but labels.npy has "
                            f"{labels.shape[0]}: prepare the dataset again")
    return SplitArrays(inputs, labels, ids)


def _load_npy(path: Path, mmap_mode: str | None) -> np.ndarray:
    from bogc_cli.data.lfs import refuse_pointer

    if not path.is_file():
        raise UserError(f"missing file {path}: the prepared cache is incomplete; prepare the dataset again")
    refuse_pointer(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}); prepare the dataset again") from None
