"""CMU-MOSI sentiment from the word-aligned MulT pickle ``mosi_data.pkl``: see ``data_prep.mosei``."""

from __future__ import annotations

from pathlib import Path

from bogc_cli.data.cache import Manifest
from data_prep._common import Log, no_log
from data_prep.mosei import prepare_pickle


def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
            workers: int = 1, strict: bool = False, log: Log = no_log) -> Manifest:
    """Prepare the MOSI cache: 1,284 / 229 / 686 segments; text 300, audio 5, vision 20 features per step."""
    return prepare_pickle("mosi", ("mosi_data.pkl", "mosi_senti_data.pkl", "mosi.pkl"),
                          {"train": 1284, "val": 229, "test": 686}, {"text": 300, "audio": 5, "vision": 20},
                          raw, out, preset, val_fraction, strict, log)
