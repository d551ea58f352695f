"""Raw dataset -> prepared cache. One module per dataset, plus media helpers.

``PREPARERS[name](raw=..., out=..., preset=..., seed=..., val_fraction=..., workers=..., strict=...,
overwrite=..., log=...)`` prepares dataset ``name`` and returns its ``Manifest``; ``arrays`` also takes
``kinds``, and those in ``TEXT_PREPARERS`` ``tokenizer`` and ``max_length``. Every preparer follows one rule for an existing cache in ``out``: the same inputs and
parameters -> nothing to do; other ones -> refused unless ``overwrite``; an interrupted run -> resumed. Modules are imported on first
call, so listing the preparers stays cheap (torchaudio/torchvision load only for avdigits).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from bogc_cli.data.cache import Manifest

Preparer = Callable[..., Manifest]


def _lazy(module: str) -> Preparer:
    """A preparer that imports ``data_prep.<module>`` on first call and runs its ``prepare``."""

    def prepare(raw: Path, out: Path, preset: str | None = None, seed: int = 0, val_fraction: float | None = None,
                workers: int = 1, strict: bool = False, overwrite: bool = False, **kwargs: Any) -> Manifest:
        run = importlib.import_module(f"data_prep.{module}").prepare
        return run(raw=raw, out=out, preset=preset, seed=seed, val_fraction=val_fraction, workers=workers,
                   strict=strict, overwrite=overwrite, **kwargs)

    prepare.__name__ = prepare.__qualname__ = f"prepare_{module}"
    prepare.__doc__ = f"Prepare the {module} dataset (see data_prep.{module}.prepare)."
    return prepare


#: Preparers whose data may hold text: they take ``tokenizer`` (a local model directory, ``--tokenizer``) and
#: ``max_length`` (``--max-length``) and tokenise with ``data_prep.text``. A preparer of a text dataset adds
#: its name here.
TEXT_PREPARERS: set[str] = {"arrays", "food101", "mvsa_single", "mmimdb"}

PREPARERS: dict[str, Preparer] = {name: _lazy(name) for name in (
    "avdigits", "mfeat", "arrays", "cremad", "kinetics_sounds", "ave", "mosei", "mosi", "iemocap", "brats_grade",
    "food101", "mvsa_single", "mmimdb")}
