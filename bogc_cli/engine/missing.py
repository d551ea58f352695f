"""Missing-modality evaluation: accuracy when a seeded fraction of test samples lacks a modality.

For each modality m and rate r, the first ``round(r * N)`` rows of a seeded permutation (one
per modality) miss m, so the missing sets are nested as r grows. At rate 1.0 every non-empty
subset of modalities is also evaluated missing together.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from bogc_cli.atomic import atomic_path
from bogc_cli.engine.evaluate import classification_metrics, predict
from bogc_cli.engine.inference import LoadedRun
from bogc_cli.errors import UserError

DEFAULT_RATES = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)


def missing_masks(n: int, modalities: list[str], rate: float, missing: tuple[str, ...], all_modalities: list[str],
                  seed: int) -> dict[str, np.ndarray]:
    """``present[m]``: bool ``[n]``; modalities in ``missing`` lack ``round(rate * n)`` seeded rows."""
    present = {m: np.ones(n, dtype=bool) for m in all_modalities}
    k = int(round(rate * n))
    for m in missing:
        # one permutation per modality, independent of the rate and of the other modalities
        perm = np.random.default_rng([seed, all_modalities.index(m)]).permutation(n)
        present[m][perm[:k]] = False
    return present


def evaluate_missing(run: LoadedRun, modalities: list[str] | None, rates: list[float], fill: str | None,
                     seed: int, split: str = "test") -> pd.DataFrame:
    """One row per (missing set, rate): missing, rate, fill, mask_seed, accuracy, macro_f1, n."""
    model = run.model
    all_mods = list(model.modalities)
    chosen = modalities or all_mods
    bad = [m for m in chosen if m not in all_mods]
    if bad:
        raise UserError(f"--modalities {','.join(bad)}: not a modality of this run; valid: {', '.join(all_mods)}")
    bad_rates = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad_rates:
        raise UserError(f"--rates {bad_rates}: rates must lie in [0, 1]")
    if fill is not None:
        model.fill = fill
    loader = run.loader(split)
    n = len(run.parts.data.splits[split])
    classes = run.parts.data.classes
    settings = [((m,), r) for m in chosen for r in rates]
    if len(chosen) > 1:
        settings += [(subset, 1.0) for k in range(2, len(chosen) + 1) for subset in combinations(chosen, k)]
    rows = []
    for missing, rate in settings:
        present = missing_masks(n, chosen, rate, missing, all_mods, seed)
        p = predict(model, loader, run.device, run.autocast, present=present)
        metrics = classification_metrics(p.labels, p.fused, classes)
        rows.append({"missing": "+".join(missing), "rate": rate, "fill": model.fill, "mask_seed": seed,
                     "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]})
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
