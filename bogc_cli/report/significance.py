"""Paired significance of a method against a reference (``uniform``) over training seeds.

For each (method, column) cell the per-seed values are paired with the reference's values of the
same seed and column, and a two-sided paired t-test (``scipy.stats.ttest_rel``) is run on them. The
t-test, not Wilcoxon's signed-rank test, because with 3 or 5 seeds Wilcoxon cannot reach p < 0.05
(its smallest two-sided p-value is 0.25 for 3 pairs and 0.0625 for 5).

A cell needs ``MIN_PAIRS`` = 3 paired seeds to be tested. With 2 the t-test has one degree of freedom:
its p-value rests on the spread of just two differences, and two differences that happen to be close
give p < 0.05 however small the effect (the tables then say n instead of marking).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

REFERENCE = "uniform"
ALPHA = 0.05
MARK = "†"
MIN_PAIRS = 3


def paired_tests(df: pd.DataFrame, value: str, col: str, reference: str = REFERENCE) -> pd.DataFrame:
    """Columns ``method, <col>, p, pairs``: one row per (method, col) with a paired test against ``reference``.

    ``df`` has one row per run with ``method``, ``seed``, ``col`` and ``value``; cells with fewer than
    ``MIN_PAIRS`` paired seeds, or whose differences are all equal (no variance to test), get ``p = NaN``."""
    rows = []
    runs = df.dropna(subset=[value])
    ref = runs[runs["method"] == reference].set_index(["seed", col])[value]
    ref = ref[~ref.index.duplicated()]
    for (method, column), part in runs[runs["method"] != reference].groupby(["method", col]):
        mine = part.set_index("seed")[value]
        mine = mine[~mine.index.duplicated()]
        pairs = [(v, ref[(s, column)]) for s, v in mine.items() if (s, column) in ref.index]
        p = np.nan
        if len(pairs) >= MIN_PAIRS:
            a, b = map(np.asarray, zip(*pairs))
            if np.ptp(a - b) > 0:
                p = float(scipy_stats.ttest_rel(a, b).pvalue)
        rows.append({"method": method, col: column, "p": p, "pairs": len(pairs)})
    return pd.DataFrame(rows, columns=["method", col, "p", "pairs"])


def marks(p: pd.Series) -> pd.Series:
    """``MARK`` where p < ALPHA, else an empty string."""
    return p.map(lambda v: MARK if pd.notna(v) and v < ALPHA else "")
