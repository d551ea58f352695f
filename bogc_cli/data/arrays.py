"""The ``arrays`` format: a user's own data as numpy arrays, usable directly or via ``bogc prepare arrays``.

A folder holding, for each split (``train`` and ``test`` required, ``val`` optional), either::

    <split>/<modality>.npy     first axis = samples
    <split>/labels.npy         integer class labels [N]

or one ``<split>.npz`` with arrays named by modality plus ``labels``. An optional ``classes.txt``
names the classes, one per line (line i = label i). Without ``val``, a stratified, seeded
validation split is carved from train (its rows are recorded as ids ``train:<row>``); every class
keeps a training sample (``cache.carve_validation``).

Rules, each checked across all splits (``read_arrays_folder``):

- labels: the labels used (in any split) become class ids 0..C-1 in their sorted order, named by
  ``classes.txt`` or by the label values themselves (labels 3, 7, 42 are classes "3", "7", "42"; the
  mapping is in ``params["label_map"]``). Names in ``classes.txt`` without a sample anywhere are left
  out (a class with no samples would count as 0 in macro-F1), with a warning;
- classes: one with samples in val or test but none in train, or none in test, gets a warning
  (``strict``: refused), as does a carve-out that leaves a class without validation samples;
- dtypes, one rule per modality: ``uint8`` means pixels, which batches scale by 1/255; every other
  dtype is used as it is. So a modality is ``uint8`` in every split or in none (refused otherwise:
  the splits would be scaled differently), and other differences (float64 train, float32 test) are
  resolved by storing every split in float32, the precision training computes in. Float values
  beyond float32's range (about 3.4e38) are refused: they would become inf;
- names: a modality's name becomes a key in recipes, the model (a ``torch.nn.ModuleDict``), metrics
  and reports, so it must start with a letter and hold only letters, digits, ``_`` and ``-``, and
  must not be ``fused`` (the fused loss's name) or an attribute of ``torch.nn.ModuleDict`` (``keys``,
  ``float``, ``type``, ...); others are refused, naming the file to rename.

Text: a modality given as strings, ``<split>/<modality>.txt`` (UTF-8, one sample per line; a text
with line breaks goes in a ``.npy``) or a ``.npy`` / npz entry of strings ``[N]``, is of kind ``text``.
It is tokenised after the validation carve-out (``data_prep.text``): with the tokenizer of a local
model directory (``tokenizer``, ``bogc prepare arrays --tokenizer DIR``), else with a word vocabulary
built from the train split; ``max_length`` tokens each (``--max-length``, default 128). The cache holds
the ``[N, 2, L]`` int32 ids and mask.

Task types (``task``: the recipe's ``dataset.task`` for a folder read directly, ``bogc prepare arrays
--task``; default classification): ``labels`` holds integer class indices ``[N]`` (classification, as
above), 0/1 rows ``[N, C]`` (multilabel: ``classes.txt`` names the C labels, else they are "0".."C-1")
or finite real values ``[N]`` (regression: ``classes.txt`` names the target, else "target"; stored as
float32). The class rules above apply to classification only; a multilabel or regression carve-out is
seeded but not stratified (``cache.carve_validation``).

A modality's kind is inferred from its per-sample rank when not given: ``[D]`` -> vector,
``[F, T]`` -> audio (a channel axis is added: ``[1, F, T]``), ``[C, H, W]`` -> image,
``[T, C, H, W]`` -> video; ``kinds`` (``bogc prepare arrays --kinds``, or the recipe's
``dataset.kinds`` for a folder read directly) overrides it, e.g. ``sequence`` for ``[T, D]``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bogc_cli.data.cache import (KIND_NDIM, KINDS, SPLITS, Manifest, ModalitySpec, SplitArrays, carve_validation,
                                 carve_warnings, class_counts)
from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError

LABELS = "labels"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
RESERVED = {"fused": "the fused loss's name", LABELS: "the labels' file"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
REQUIRED_SPLITS = ("train", "test")
KIND_BY_NDIM = {1: "vector", 2: "audio", 3: "image", 4: "video"}

_FORMAT_HELP = ("expected <split>/<modality>.npy + <split>/labels.npy, or <split>.npz holding the modality "
                "arrays and 'labels', for the splits train and test (val optional)")


def read_arrays_folder(root: Path, kinds: dict[str, str] | None = None, val_fraction: float = 0.1,
                       seed: int = 0, strict: bool = False, tokenizer: str | Path | None = None,
                       max_length: int | None = None, tokenizers: dict | None = None, task: str = "classification"
                       ) -> tuple[Manifest, dict[str, SplitArrays]]:
    """Read and validate an arrays folder; returns an (unwritten) manifest and the splits.

    Text modalities are tokenised with ``tokenizer`` (a local model directory; default: a word vocabulary
    of the train split) to ``max_length`` tokens; ``tokenizers``, when given, receives the tokenizer of
    each text modality (to save it in the cache). ``UserError`` for a ``tokenizer`` without any text
    modality to use it on.

    ``.npy`` arrays are memory-mapped (copied only when a split's dtype must change). Every problem is a
    ``UserError`` naming the file and the fix. What was decided for the user (a label mapping, a dtype
    made common, a class without training or test samples) is listed in ``manifest.warnings``; with
    ``strict``, the warnings about classes are ``UserError``s instead.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"arrays folder {root} does not exist: {_FORMAT_HELP}")
    layout = _layout(root)
    raw = {split: _read_split(root, split, layout[split], task) for split in layout}
    modalities = _check_modalities(root, raw, layout)
    notes = _unify_dtypes(root, raw, layout, modalities)
    given_kinds = dict(kinds or {})
    kinds = _resolve_kinds(root, raw, modalities, layout, given_kinds)
    if task == "classification":
        classes, label_map, class_notes = _classes(root, raw, layout)
        raw = {split: (inputs, np.searchsorted(np.array(sorted(label_map)), labels).astype(np.int64))
               for split, (inputs, labels) in raw.items()}
        problems = class_notes + _class_presence(raw, classes)
    else:
        classes, label_map, problems = _target_names(root, raw, layout, task), {}, []
    splits = {split: SplitArrays({m: _with_channel(a, kinds[m]) for m, a in inputs.items()}, labels,
                                 [f"{split}:{i}" for i in range(len(labels))])
              for split, (inputs, labels) in raw.items()}
    val_source = "given"
    if "val" not in splits:
        train_rows, val_rows = carve_validation(splits["train"].labels, val_fraction, seed)
        if task == "classification":
            problems += carve_warnings(splits["train"].labels, val_rows, classes, str(root))
        if len(val_rows) == 0:
            raise UserError(f"{root} has no val split and its {len(train_rows)} training samples are too few to carve "
                            "one" + (" (every class keeps a training sample)" if task == "classification" else "") +
                            ": add a val split or more training samples")
        splits["val"] = splits["train"].subset(val_rows)
        splits["train"] = splits["train"].subset(train_rows)
        val_source = "carved from train"
    if strict and problems:
        raise UserError(f"{problems[0]} (--strict): fix the arrays, or drop --strict")
    splits = {s: splits[s] for s in SPLITS if s in splits}
    described = _tokenise(root, splits, kinds, tokenizer, max_length, tokenizers)
    params = {"val": val_source, "val_fraction": val_fraction if val_source != "given" else None, "seed": seed,
              "dtype_rule": "uint8 = pixels (scaled by 1/255 in batches) in every split or none; other dtypes as "
                            "they are, float32 when the splits differ"}
    if any(k != v for k, v in label_map.items()):
        params["label_map"] = {str(k): v for k, v in label_map.items()}
    if given_kinds:
        params["kinds_given"] = given_kinds
    manifest = Manifest(
        dataset="arrays",
        classes=classes,
        modalities={m: ModalitySpec(kinds[m], list(splits["train"].inputs[m].shape[1:]),
                                    str(splits["train"].inputs[m].dtype), described.get(m)) for m in modalities},
        splits={s: len(a) for s, a in splits.items()},
        class_counts={s: class_counts(a.labels, classes, task) for s, a in splits.items()},
        params=params,
        sources={"root": str(root), "layout": {s: _describe(root, s, layout[s]) for s in layout}},
        warnings=notes + problems,
        task=task,
    )
    return manifest, splits


def _tokenise(root: Path, splits: dict[str, SplitArrays], kinds: dict[str, str], tokenizer: str | Path | None,
              max_length: int | None, keep: dict | None) -> dict[str, dict]:
    """Replace every text modality's strings by its ``[N, 2, L]`` int32 ids and mask, in place; returns each
    text modality's tokenizer description (``ModalitySpec.tokenizer``)."""
    from data_prep.text import check_max_length, encode_texts, make_tokenizer

    texts = [m for m, k in kinds.items() if k == "text"]
    if tokenizer is not None and not texts:
        raise UserError(f"--tokenizer {tokenizer}: {root} has no text modality to tokenise (text is given as "
                        "<split>/<modality>.txt or a .npy of strings); remove --tokenizer")
    length = check_max_length(max_length)
    described = {}
    for m in texts:
        tok = make_tokenizer(tokenizer, [str(t) for t in splits["train"].inputs[m]])
        for split in splits.values():
            split.inputs[m] = encode_texts([str(t) for t in split.inputs[m]], tok, length)
        described[m] = tok.describe(length)
        if keep is not None:
            keep[m] = tok
    return described


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


def _read_split(root: Path, split: str, form: str, task: str = "classification"
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One split's modality arrays ``{name: [N, ...]}`` and its labels (``task``'s form), checked against each
    other."""
    arrays = _read_npy_folder(root / split) if form == "npy" else _read_npz(root / f"{split}.npz")
    where = _describe(root, split, form)
    if LABELS not in arrays:
        raise UserError(f"{where} has no labels: add {'labels.npy' if form == 'npy' else 'an array named labels'} "
                        "holding the integer class index of each sample")
    labels = _check_labels(arrays.pop(LABELS), f"{where}{'labels.npy' if form == 'npy' else ' (labels)'}", task)
    if not arrays:
        raise UserError(f"{where} holds labels but no modality arrays: {_FORMAT_HELP}")
    if labels.size == 0:
        hint = "remove it to have one carved from train" if split == "val" else "every split needs samples"
        raise UserError(f"{where} has 0 samples: {hint}")
    for name, array in arrays.items():
        _check_name(name, _file(root, split, form, name))
        _check_modality_array(array, labels, _file(root, split, form, name))
    return arrays, labels


def _check_name(name: str, where: str) -> None:
    """A modality name must work as a key everywhere it goes (recipe, ModuleDict, metrics, report columns)."""
    import torch

    why = None
    if not NAME.match(name):
        why = "use letters, digits, _ and -, starting with a letter"
    elif name in RESERVED:
        why = f"{name!r} is {RESERVED[name]}"
    elif hasattr(torch.nn.ModuleDict(), name):
        why = f"{name!r} is an attribute of torch.nn.ModuleDict, which holds the model's per-modality encoders"
    if why:
        raise UserError(f"{where}: modality name {name!r} cannot be used ({why}); the name becomes a key in recipes, "
                        "the model, metrics and reports: rename the file (or the npz entry), e.g. to "
                        f"{_suggest(name)!r}")


def _suggest(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "modality"
    cleaned = cleaned if cleaned[0].isalpha() else f"m_{cleaned}"
    return cleaned if NAME.match(cleaned) and cleaned not in RESERVED else f"{cleaned}_data"


def _read_npy_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(folder.glob("*.npy")):
        refuse_pointer(path)
        try:
            arrays[path.stem] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"cannot read {path} ({exc}): save it with numpy.save from a numeric array") from None
        if arrays[path.stem].dtype.kind in "US":
            arrays[path.stem] = _as_texts(arrays[path.stem], str(path))
    for path in sorted(folder.glob("*.txt")):
        if path.name == "ids.txt":  # a prepared cache's sample ids, not a modality
            continue
        if path.stem in arrays:
            raise UserError(f"{folder} has both {path.stem}.npy and {path.name}: keep one file per modality")
        arrays[path.stem] = _read_texts(path)
    return arrays


def _read_texts(path: Path) -> np.ndarray:
    """A text file's lines as an object array of str ``[N]`` (one sample per line, UTF-8; a final newline
    ends the last line rather than adding an empty sample)."""
    refuse_pointer(path)
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8, one "
                        "sample per line") from None
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return np.array([line.removesuffix("\r") for line in lines], dtype=object)


def _as_texts(array: np.ndarray, where: str) -> np.ndarray:
    """Strings of a ``.npy`` (numpy ``str_`` or UTF-8 ``bytes_``) as an object array of str."""
    if array.ndim != 1:
        raise UserError(f"{where} holds strings of shape {list(array.shape)}: a text modality is one string per "
                        "sample, shape [N]")
    try:
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.tolist()], dtype=object)
    except UnicodeDecodeError:
        raise UserError(f"{where} holds bytes that are not UTF-8 text: store str values (numpy.array(texts))") from None


def _is_text(array: np.ndarray) -> bool:
    return array.dtype == object


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    refuse_pointer(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
            return {name: _as_texts(a, f"{path} ({name})") if a.dtype.kind in "US" else a for name, a in arrays.items()}
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}): save it with numpy.savez(path, labels=..., "
                        "<modality>=...) from numeric arrays") from None


def _file(root: Path, split: str, form: str, name: str) -> str:
    if form != "npy":
        return f"{root / split}.npz ({name})"
    text = root / split / f"{name}.txt"
    return str(text if text.is_file() else root / split / f"{name}.npy")


# ---------------------------------------------------------------------------------------------
# validation


def _check_labels(labels: np.ndarray, where: str, task: str = "classification") -> np.ndarray:
    """Labels in ``task``'s form: a 1-D integer array of non-negative class indices (int64 ``[N]``), 0/1 rows
    (multilabel: uint8 ``[N, C]``) or finite real values (regression: float32 ``[N]``)."""
    if task == "multilabel":
        if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise UserError(f"{where} has shape {labels.shape} and dtype {labels.dtype}; multilabel labels are one row "
                            "of 0/1 per sample, [N, C] integers (column c = label c)")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise UserError(f"{where} holds values other than 0 and 1; multilabel labels are 0/1 rows [N, C]")
        return np.asarray(labels, dtype=np.uint8)
    if task == "regression":
        if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.floating) or np.issubdtype(labels.dtype, np.integer)):
            raise UserError(f"{where} has shape {labels.shape} and dtype {labels.dtype}; regression labels are one "
                            "real value per sample, [N] numbers (use labels.reshape(-1))")
        values = np.asarray(labels, dtype=np.float32)
        if values.size and not np.isfinite(values).all():
            raise UserError(f"{where} holds NaN or infinite values (or values beyond float32's range); regression "
                            "labels must be finite")
        return values
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where} has dtype {labels.dtype}; labels must be integer class indices 0..C-1 "
                        "(map class names to indices, save the names in classes.txt, and store "
                        "labels.astype(numpy.int64)); real-valued targets: set dataset.task: regression "
                        "(`bogc prepare arrays --task regression`)")
    if labels.ndim != 1:
        raise UserError(f"{where} has shape {labels.shape}; labels must be 1-D [N] (use labels.reshape(-1)); 0/1 "
                        "rows [N, C] of several labels per sample: set dataset.task: multilabel (`bogc prepare arrays "
                        "--task multilabel`)")
    if labels.size and labels.min() < 0:
        raise UserError(f"{where} has negative labels; labels must be class indices 0..C-1")
    return np.asarray(labels, dtype=np.int64)


def _check_modality_array(array: np.ndarray, labels: np.ndarray, where: str) -> None:
    if array.ndim == 0 or array.shape[0] != labels.shape[0]:
        n = array.shape[0] if array.ndim else "no"
        raise UserError(f"{where} has {n} samples but the labels have {labels.shape[0]}: the first axis of every "
                        "modality array must index the same samples as the labels")
    if _is_text(array):
        return
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise UserError(f"{where} has dtype {array.dtype}: modality arrays must be real numbers "
                        "(uint8 images/frames, float spectrograms or features) or strings (text)")
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
            if _is_text(array) != _is_text(train[name]):
                raise UserError(f"{_file(root, split, layout[split], name)} and train's {name} differ: one holds text, "
                                "the other numbers; every split must hold the same kind of data")
            if array.shape[1:] != train[name].shape[1:]:
                raise UserError(f"{_file(root, split, layout[split], name)} has per-sample shape "
                                f"{list(array.shape[1:])} but train has {list(train[name].shape[1:])}: "
                                "every split must use the same shape")
    return sorted(train)


def _unify_dtypes(root: Path, raw: dict[str, tuple[dict[str, np.ndarray], np.ndarray]], layout: dict[str, str],
                  modalities: list[str]) -> list[str]:
    """One dtype rule per modality across splits (see the module doc); converts ``raw`` in place where the splits
    differ, refuses uint8 mixed with another dtype and float values beyond float32; returns notes for the user."""
    notes = []
    for name in modalities:
        arrays = {split: inputs[name] for split, (inputs, _) in raw.items()}
        if _is_text(arrays["train"]):
            continue  # strings: tokenised later
        for split, array in arrays.items():
            if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize > 4 and array.size:
                peak = float(np.max(np.abs(array)))
                if peak > FLOAT32_MAX:
                    raise UserError(f"{_file(root, split, layout[split], name)} holds values up to {peak:.3g}, beyond "
                                    f"float32's {FLOAT32_MAX:.3g}: training computes in float32, where they become "
                                    "inf. Rescale the modality (e.g. standardise it) and save it again")
        dtypes = {split: a.dtype for split, a in arrays.items()}
        if len(set(dtypes.values())) == 1:
            continue
        pixels = [s for s, d in dtypes.items() if d == np.uint8]
        if pixels:
            other = next(s for s, d in dtypes.items() if d != np.uint8)
            raise UserError(f"{_file(root, pixels[0], layout[pixels[0]], name)} is uint8 (pixels, scaled by 1/255 in "
                            f"training) but {_file(root, other, layout[other], name)} is {dtypes[other]} (used as it "
                            "is): the splits would be scaled differently. Store every split of a modality in one dtype, "
                            f"e.g. {other}.astype(numpy.uint8) for pixels 0-255")
        for split, (inputs, _) in raw.items():
            inputs[name] = np.asarray(inputs[name], dtype=np.float32)
        notes.append(f"modality {name!r} has dtypes {', '.join(f'{s} {d}' for s, d in dtypes.items())}: every split is "
                     "stored as float32, the precision training computes in")
    return notes


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
        if _is_text(raw["train"][0][name]) or given.get(name) == "text":
            kinds[name] = _text_kind(raw["train"][0][name], given.get(name), where)
            continue
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


def _text_kind(array: np.ndarray, given: str | None, where: str) -> str:
    """``text`` for strings; a kind given otherwise is refused either way round."""
    if not _is_text(array):
        raise UserError(f"{where} holds numbers, but kind text is given: text comes as strings, <split>/<modality>.txt "
                        "(one sample per line) or a .npy of strings, and is tokenised by bogc")
    if given not in (None, "text"):
        raise UserError(f"{where} holds text, but kind {given!r} is given: text modalities are of kind text")
    return "text"


def _with_channel(array: np.ndarray, kind: str) -> np.ndarray:
    """Audio given as ``[N, F, T]`` becomes ``[N, 1, F, T]``; everything else is returned unchanged."""
    return array[:, None] if kind == "audio" and array.ndim == 3 else array


def _classes(root: Path, raw: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
             layout: dict[str, str]) -> tuple[list[str], dict[int, int], list[str]]:
    """The classes, ``{label: class id}`` and warnings. The labels used in any split become ids 0..C-1 in sorted
    order, named by ``classes.txt`` (line i names label i; names without samples are left out) or by the labels."""
    used = sorted(set().union(*(np.unique(labels).tolist() for _, labels in raw.values())))
    label_map = {int(v): i for i, v in enumerate(used)}
    path = root / "classes.txt"
    notes = []
    if not path.is_file():
        if used != list(range(len(used))):
            notes.append(f"the labels of {root} are {_listing(used)}, not 0..{len(used) - 1}: they are mapped to class "
                         f"ids 0..{len(used) - 1} in that order and keep their values as class names")
        return [str(v) for v in used], label_map, notes
    refuse_pointer(path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"{path} lists a class name twice: one unique name per line")
    top = used[-1]
    if top >= len(names):
        split = next(s for s, (_, labels) in raw.items() if labels.size and labels.max() == top)
        raise UserError(f"{_describe(root, split, layout[split])} has label {top} but {path} names only "
                        f"{len(names)} classes: labels must be in [0, {len(names)})")
    unused = [names[i] for i in range(len(names)) if i not in label_map]
    if unused:
        notes.append(f"{path} names {len(names)} classes but {len(unused)} of them have no sample in any split "
                     f"({_listing(unused)}): they are left out, so the model has {len(used)} classes")
    return [names[v] for v in used], label_map, notes


def _target_names(root: Path, raw: dict, layout: dict[str, str], task: str) -> list[str]:
    """The names of a multilabel folder's C labels or a regression folder's target: ``classes.txt`` (one per
    line), else "0".."C-1" / "target". Every split must have the same number of label columns."""
    widths = {s: (labels.shape[1] if task == "multilabel" else 1) for s, (_, labels) in raw.items()}
    if len(set(widths.values())) > 1:
        raise UserError(f"the splits of {root} have different numbers of label columns ({widths}): every split's "
                        "multilabel rows must have one column per label")
    width = next(iter(widths.values()))
    path = root / "classes.txt"
    if not path.is_file():
        return [str(k) for k in range(width)] if task == "multilabel" else ["target"]
    refuse_pointer(path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != width or len(set(names)) != len(names):
        what = f"{width} label names" if task == "multilabel" else "one name (the target's)"
        raise UserError(f"{path} has {len(names)} line(s); a {task} folder's classes.txt holds {what}, one unique "
                        "name per line")
    return names


def _listing(values: list, limit: int = 8) -> str:
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def _class_presence(raw: dict[str, tuple[dict[str, np.ndarray], np.ndarray]], classes: list[str]) -> list[str]:
    """Warnings for classes with samples elsewhere but none in train (cannot be learnt) or none in test (no test
    accuracy; macro-F1 counts them as 0)."""
    counts = {s: np.bincount(labels, minlength=len(classes)) for s, (_, labels) in raw.items()}
    out = []
    untrained = [classes[k] for k in np.flatnonzero(counts["train"] == 0)]
    if untrained:
        out.append(f"class(es) {_listing(untrained)} have samples in val/test but none in train: the model cannot "
                   "learn them")
    untested = [classes[k] for k in np.flatnonzero(counts["test"] == 0)]
    if untested:
        out.append(f"class(es) {_listing(untested)} have no test samples: their test accuracy is undefined and "
                   "macro-F1 counts them as 0")
    return out


def describe_kinds(manifest: Manifest) -> dict[str, str]:
    """``{modality: kind}`` of a manifest, handy for writing it as a cache."""
    return {m: spec.kind for m, spec in manifest.modalities.items()}
