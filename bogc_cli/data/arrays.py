"""The ``arrays`` format: a user's own data as numpy arrays, usable directly or via ``bogc prepare arrays``.

A folder holding, for each split (``train`` and ``test`` required, ``val`` optional), either::

    <split>/<modality>.npy     first axis = samples
    <split>/labels.npy         integer class indices [N] in [0, C)

or one ``<split>.npz`` with arrays named by modality plus ``labels``. An optional ``classes.txt``
names the classes, one per line (line i = class i). Without ``val``, a stratified, seeded
validation split is carved from train (its rows are recorded as ids ``train:<row>``).

A modality's kind is inferred from its per-sample rank when not given: ``[D]`` -> vector,
``[F, T]`` -> audio (a channel axis is added: ``[1, F, T]``), ``[C, H, W]`` -> image,
``[T, C, H, W]`` -> video.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from bogc_cli.data.cache import (KIND_NDIM, KINDS, SPLITS, Manifest, ModalitySpec, SplitArrays, carve_validation,
                                 class_counts)
from bogc_cli.errors import UserError

LABELS = "labels"
REQUIRED_SPLITS = ("train", "test")
KIND_BY_NDIM = {1: "vector", 2: "audio", 3: "image", 4: "video"}

_FORMAT_HELP = ("expected <split>/<modality>.npy + <split>/labels.npy, or <split>.npz holding the modality "
                "arrays and 'labels', for the splits train and test (val optional)")


def read_arrays_folder(root: Path, kinds: dict[str, str] | None = None, val_fraction: float = 0.1,
                       seed: int = 0) -> tuple[Manifest, dict[str, SplitArrays]]:
    """Read and validate an arrays folder; returns an (unwritten) manifest and the splits.

    ``.npy`` arrays are memory-mapped. Every problem is a ``UserError`` naming the file and the fix.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"arrays folder {root} does not exist: {_FORMAT_HELP}")
    layout = _layout(root)
    raw = {split: _read_split(root, split, layout[split]) for split in layout}
    modalities = _check_modalities(root, raw, layout)
    kinds = _resolve_kinds(root, raw, modalities, layout, kinds or {})
    classes = _classes(root, raw, layout)
    splits = {split: SplitArrays({m: _with_channel(a, kinds[m]) for m, a in inputs.items()}, labels,
                                 [f"{split}:{i}" for i in range(len(labels))])
              for split, (inputs, labels) in raw.items()}
    val_source = "given"
    if "val" not in splits:
        train_rows, val_rows = carve_validation(splits["train"].labels, val_fraction, seed)
        splits["val"] = splits["train"].subset(val_rows)
        splits["train"] = splits["train"].subset(train_rows)
        val_source = "carved from train"
    splits = {s: splits[s] for s in SPLITS if s in splits}
    manifest = Manifest(
        dataset="arrays",
        classes=classes,
        modalities={m: ModalitySpec(kinds[m], list(splits["train"].inputs[m].shape[1:]),
                                    str(splits["train"].inputs[m].dtype)) for m in modalities},
        splits={s: len(a) for s, a in splits.items()},
        class_counts={s: class_counts(a.labels, classes) for s, a in splits.items()},
        params={"val": val_source, "val_fraction": val_fraction if val_source != "given" else None, "seed": seed},
        sources={"root": str(root), "layout": {s: _describe(root, s, layout[s]) for s in layout}},
    )
    return manifest, splits


# ---------------------------------------------------------------------------------------------
# reading


def _layout(root: Path) -> dict[str, str]:
    """Which form each present split takes: ``"npy"`` (a folder) or ``"npz"`` (a file)."""
    layout = {}
    for split in SPLITS:
        folder, archive = root / split, root / f"{split}.npz"
        if folder.is_dir() and archive.is_file():
            raise UserError(f"{root} has both {folder}/ and {archive}: keep one form of the {split} split")
        if folder.is_dir():
            layout[split] = "npy"
        elif archive.is_file():
            layout[split] = "npz"
    missing = [s for s in REQUIRED_SPLITS if s not in layout]
    if missing:
        raise UserError(f"{root} has no {' or '.join(missing)} split: {_FORMAT_HELP}")
    return layout


def _describe(root: Path, split: str, form: str) -> str:
    return str(root / split) + ("/" if form == "npy" else ".npz")


def _read_split(root: Path, split: str, form: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One split's modality arrays ``{name: [N, ...]}`` and its labels ``[N]``, checked against each other."""
    arrays = _read_npy_folder(root / split) if form == "npy" else _read_npz(root / f"{split}.npz")
    where = _describe(root, split, form)
    if LABELS not in arrays:
        raise UserError(f"{where} has no labels: add {'labels.npy' if form == 'npy' else 'an array named labels'} "
                        "holding the integer class index of each sample")
    labels = _check_labels(arrays.pop(LABELS), f"{where}{'labels.npy' if form == 'npy' else ' (labels)'}")
    if not arrays:
        raise UserError(f"{where} holds labels but no modality arrays: {_FORMAT_HELP}")
    for name, array in arrays.items():
        _check_modality_array(array, labels, _file(root, split, form, name))
    return arrays, labels


def _read_npy_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(folder.glob("*.npy")):
        try:
            arrays[path.stem] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"cannot read {path} ({exc}): save it with numpy.save from a numeric array") from None
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}): save it with numpy.savez(path, labels=..., "
                        "<modality>=...) from numeric arrays") from None


def _file(root: Path, split: str, form: str, name: str) -> str:
    return str(root / split / f"{name}.npy") if form == "npy" else f"{root / split}.npz ({name})"


# ---------------------------------------------------------------------------------------------
# validation


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels must be a 1-D integer array of non-negative class indices; returns int64 ``[N]``."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where} has dtype {labels.dtype}; labels must be integer class indices 0..C-1 "
                        "(map class names to indices, save the names in classes.txt, and store "
                        "labels.astype(numpy.int64))")
    if labels.ndim != 1:
        raise UserError(f"{where} has shape {labels.shape}; labels must be 1-D [N] (use labels.reshape(-1))")
    if labels.size and labels.min() < 0:
        raise UserError(f"{where} has negative labels; labels must be class indices 0..C-1")
    return np.asarray(labels, dtype=np.int64)


def _check_modality_array(array: np.ndarray, labels: np.ndarray, where: str) -> None:
    if array.ndim == 0 or array.shape[0] != labels.shape[0]:
        n = array.shape[0] if array.ndim else "no"
        raise UserError(f"{where} has {n} samples but the labels have {labels.shape[0]}: the first axis of every "
                        "modality array must index the same samples as the labels")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise UserError(f"{where} has dtype {array.dtype}: modality arrays must be real numbers "
                        "(uint8 images/frames, float spectrograms or features)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise UserError(f"{where} contains NaN or infinite values: replace them (e.g. numpy.nan_to_num)")


def _check_modalities(root: Path, raw: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
                      layout: dict[str, str]) -> list[str]:
    """Every split must hold the same modalities with the same per-sample shape."""
    train = raw["train"][0]
    for split, (inputs, _) in raw.items():
        for name in sorted(set(train) ^ set(inputs)):
            missing_in, has = (split, "train") if name in train else ("train", split)
            raise UserError(f"modality {name!r} is in the {has} split but missing from "
                            f"{_file(root, missing_in, layout[missing_in], name)}: every split needs the same "
                            "modalities")
        for name, array in inputs.items():
            if array.shape[1:] != train[name].shape[1:]:
                raise UserError(f"{_file(root, split, layout[split], name)} has per-sample shape "
                                f"{list(array.shape[1:])} but train has {list(train[name].shape[1:])}: "
                                "every split must use the same shape")
    return sorted(train)


def _resolve_kinds(root: Path, raw: dict[str, tuple[dict[str, np.ndarray], np.ndarray]], modalities: list[str],
                   layout: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """Each modality's kind: as given, else inferred from its per-sample rank (see module doc)."""
    unknown = sorted(set(given) - set(modalities))
    if unknown:
        raise UserError(f"kinds given for {', '.join(unknown)} but {root} has only the modalities "
                        f"{', '.join(modalities)}")
    kinds = {}
    for name in modalities:
        ndim = raw["train"][0][name].ndim - 1
        where = _file(root, "train", layout["train"], name)
        kind = given.get(name) or KIND_BY_NDIM.get(ndim)
        if kind is None:
            raise UserError(f"{where} has per-sample rank {ndim}; supported: [D] vector, [F, T] or [C, F, T] "
                            "audio, [C, H, W] image, [T, C, H, W] video")
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r} for modality {name!r}; valid: {', '.join(KINDS)}")
        if ndim != KIND_NDIM[kind] and not (kind == "audio" and ndim == 2):
            raise UserError(f"{where} has per-sample rank {ndim} but kind {kind!r} needs {KIND_NDIM[kind]}")
        kinds[name] = kind
    return kinds


def _with_channel(array: np.ndarray, kind: str) -> np.ndarray:
    """Audio given as ``[N, F, T]`` becomes ``[N, 1, F, T]``; everything else is returned unchanged."""
    return array[:, None] if kind == "audio" and array.ndim == 3 else array


def _classes(root: Path, raw: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
             layout: dict[str, str]) -> list[str]:
    """Class names from ``classes.txt`` (checked against the labels), else ``"0"`` .. ``"C-1"``."""
    top = max(int(labels.max()) if labels.size else -1 for _, labels in raw.values())
    path = root / "classes.txt"
    if not path.is_file():
        return [str(i) for i in range(top + 1)]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"{path} lists a class name twice: one unique name per line")
    if top >= len(names):
        split = next(s for s, (_, labels) in raw.items() if labels.size and labels.max() == top)
        raise UserError(f"{_describe(root, split, layout[split])} has label {top} but {path} names only "
                        f"{len(names)} classes: labels must be in [0, {len(names)})")
    return names


def describe_kinds(manifest: Manifest) -> dict[str, str]:
    """``{modality: kind}`` of a manifest, handy for writing it as a cache."""
    return {m: spec.kind for m, spec in manifest.modalities.items()}
