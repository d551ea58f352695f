"""CMU-MOSI sentiment from the MulT (``mosi_data.pkl``, ``mosi_data_noalign.pkl``) or MMSA (``aligned_50.pkl``,
``unaligned_50.pkl``) feature pickles: see ``data_prep.mosei``."""

from __future__ import annotations

from pathlib import Path

from bogc_cli.data.cache import Manifest
from data_prep._common import Log, no_log
from data_prep.mosei import MMSA_NAMES, prepare_pickle


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log, overwrite: bool = False) -> Manifest:
    """Prepare the MOSI cache: 1,284 / 229 / 686 segments; audio 5, vision 20 features per step (text 300 or 768)."""
    return prepare_pickle("mosi", ("mosi_data.pkl", "mosi_senti_data.pkl", "mosi.pkl", "mosi_data_noalign.pkl",
                                   *MMSA_NAMES),
                          {"train": 1284, "val": 229, "test": 686}, {"audio": 5, "vision": 20},
                          raw, out, preset, val_fraction, strict, log, overwrite)
