"""IEMOCAP emotions (neutral, happy, sad, angry) from MulT's feature pickles; the reader is ``data_prep.mosei``'s.

Raw input (``--raw``): ``iemocap_data.pkl`` (word-aligned) or ``iemocap_data_noalign.pkl`` (unaligned), as
distributed with MulT (Tsai et al., ACL 2019), or a folder holding one (searched two levels down). A dict
with ``train``, ``valid`` and ``test``, each holding ``text`` ``[N, T, 300]`` (GloVe), ``audio``
``[N, T, 74]`` (COVAREP), ``vision`` ``[N, T, 35]`` (Facet) and ``labels`` ``[N, 4, 2]``: for each of
neutral, happy, sad, angry (MulT's ``eval_iemocap`` order), a two-way one-hot (absent, present). Aligned,
T is 20 for every modality; unaligned, text 20, audio 400, vision 500. Published sizes (MulT's pickle):
2,717 / 798 / 938 segments, checked (a warning; ``--strict``: an error).

Targets, as the seed papers' code makes them:

- preset ``multilabel`` (default): MulT's. ``src/dataset.py`` turns each segment's ``[4, 2]`` into
  ``argmax(labels, -1)`` (1 = the emotion is present) and ``src/train.py`` trains four binary
  (present/absent) tasks, a 2-way softmax cross-entropy per emotion, scored per emotion by accuracy and
  weighted F1 (``src/eval_metrics.py::eval_iemocap``). The cache stores the same ``[N, 4]`` presence as a
  multilabel target (uint8 multi-hot, labels ``neutral happy sad angry``): a 2-way softmax over (absent,
  present) equals a sigmoid on the difference of its two logits, so the multilabel task's per-label
  binary cross-entropy is MulT's loss with one logit per emotion instead of two. It is the default
  because it is what this pickle's own authors evaluate, and it keeps every segment.
- preset ``4class``: CGGM's (Guo et al., NeurIPS 2024; ``datasets/IEMODataset.py``, ``run/iemo_run.py``):
  ``argmax`` over the four emotions, one 4-way class per segment (CrossEntropyLoss, ``output_dim`` 4,
  scored by accuracy and weighted F1). CGGM reads other features for it (the MMIN-style h5 files:
  BERT text 22 x 1024, ComParE audio 350 x 130, OpenFace vision 50 x 342, with a 10-fold ``cvNo`` split),
  not MulT's pickle; this preset applies CGGM's target rule to MulT's features. A segment with no
  emotion or several present has no single class: it is left out and reported (never assigned by
  tie-breaking).

Like MOSI/MOSEI: three ``sequence`` modalities float32, the pickle's own splits (``valid`` -> ``val``),
non-finite values replaced by 0 as MulT does. A pickle whose labels are not ``[N, 4, 2]`` (a MOSI/MOSEI
sentiment pickle) is refused with one message. Pickles can run code when loaded: only prepare files you
trust.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bogc_cli.data.cache import Manifest
from data_prep._common import Log, no_log
from data_prep.mosei import Targets, prepare_pickle

EMOTIONS = ["neutral", "happy", "sad", "angry"]
"""MulT's order of the label axis (``eval_iemocap``: Neutral, Happy, Sad, Angry)."""
EXPECTED = {"train": 2717, "val": 798, "test": 938}
NAMES = ("iemocap_data.pkl", "iemocap.pkl", "iemocap_data_noalign.pkl")
DIMS = {"audio": 74, "vision": 35}
PRESETS = {"multilabel": EMOTIONS, "4class": EMOTIONS}
DEFAULT_PRESET = "multilabel"


def presence(labels: np.ndarray) -> np.ndarray:
    """MulT's labels ``[N, 4, 2]`` -> uint8 ``[N, 4]``, 1 where the emotion is present: ``argmax`` over the last
    axis, as MulT's ``src/dataset.py`` does (a ``[0, 0]`` pair is absent). ``ValueError`` for another shape or
    non-finite values."""
    if labels.ndim != 3 or labels.shape[1:] != (len(EMOTIONS), 2):
        raise ValueError(f"labels of shape {list(labels.shape)}, not [N, 4, 2] (a present/absent pair for each of "
                         f"{', '.join(EMOTIONS)}): is this a MOSI/MOSEI sentiment pickle? (`bogc prepare mosei` "
                         "reads those)")
    if not np.isfinite(labels).all():
        raise ValueError("labels that are NaN or infinite: use an intact pickle")
    return np.argmax(labels, axis=-1).astype(np.uint8)


def emotion_targets(labels: np.ndarray, preset: str) -> tuple[np.ndarray, dict[int, str]]:
    """``multilabel``: the presence matrix ``[N, 4]``; ``4class``: the index of the one present emotion ``[N]``
    (int64), segments with none or several present left out with the reason."""
    present = presence(labels)
    if preset == "multilabel":
        return present, {}
    count = present.sum(axis=1)
    dropped = {}
    for row in np.flatnonzero(count != 1):
        names = [EMOTIONS[k] for k in np.flatnonzero(present[row])]
        dropped[int(row)] = ("no emotion present" if not names else
                             f"{len(names)} emotions present ({', '.join(names)}): no single class for preset 4class")
    return np.argmax(present, axis=1).astype(np.int64), dropped


TARGETS = Targets(PRESETS, DEFAULT_PRESET, emotion_targets, tasks={"multilabel": "multilabel"})


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the IEMOCAP cache from MulT's pickle (see the module doc); ``seed`` and ``workers`` are accepted for
    a uniform interface (the splits are the pickle's, nothing is decoded in parallel)."""
    return prepare_pickle("iemocap", NAMES, EXPECTED, DIMS, raw, out, preset, val_fraction, strict, log, overwrite,
                          targets=TARGETS)
