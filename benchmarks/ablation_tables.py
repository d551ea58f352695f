"""The issue-18 ablation's tables (docs/ablation.md) from the run directories of ``recipes/paper/ablation.yaml``.

    bogc reproduce recipes/paper/ablation.yaml --jobs 2
    python benchmarks/ablation_tables.py results/ablation18

Prints Markdown: validation and test accuracy per dataset (mean ± sample standard deviation over seeds; †: a
two-sided paired t-test over that dataset's seeds against ``uniform`` gives p < 0.05), their mean over the
datasets and the paired t-test pooled over every (dataset, seed) pair; each modality's own head; and the
weights BOGC applied in the last epoch (``method.bogc.weight_mean.<source>`` and ``weight_std``, mean over
seeds). ``bogc report`` writes the per-dataset tables too; this adds the pooled test and the weights.

Exit 2 with the missing run named when a cell has not finished (``eval.json`` absent).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

DATASETS = ["avdigits-avmnist", "mfeat-weak3", "synthetic-r1", "synthetic-r2", "synthetic-r4"]
METHODS = ["joint", "uniform", "bogc-dims", "bogc-laplace", "bogc-precision", "bogc-modality",
           "bogc-modality-precision", "bogc-paper", "ogm_ge", "mmpareto"]
LABELS = {"bogc-dims": "bogc-dims (former default)", "bogc-modality": "bogc-modality (default now)",
          "bogc-paper": "bogc-paper (laplace + modality + precision)"}
HEADS = [("avdigits-avmnist", "audio"), ("avdigits-avmnist", "image"), ("mfeat-weak3", "mor"),
         ("synthetic-r4", "a"), ("synthetic-r4", "b")]
WEIGHT_DATASETS = ["avdigits-avmnist", "mfeat-weak3", "synthetic-r4"]


class Missing(Exception):
    pass


def _eval(root: Path, dataset: str, method: str, seed: int) -> dict:
    path = root / dataset / method / f"seed{seed}" / "eval.json"
    if not path.is_file():
        raise Missing(f"{path} is missing: run `bogc reproduce recipes/paper/ablation.yaml` (it resumes) first")
    return json.loads(path.read_text())


def values(root: Path, method: str, key: str, datasets: list[str], seeds: list[int]) -> np.ndarray:
    """``[datasets, seeds]`` of ``eval.json``'s ``key`` (``a/b`` for nested keys)."""
    out = []
    for dataset in datasets:
        row = []
        for seed in seeds:
            v = _eval(root, dataset, method, seed)
            for k in key.split("/"):
                v = v[k]
            row.append(float(v))
        out.append(row)
    return np.array(out)


def accuracy_table(root: Path, key: str, seeds: list[int]) -> list[str]:
    uni = values(root, "uniform", key, DATASETS, seeds)
    table = {m: values(root, m, key, DATASETS, seeds) for m in METHODS}
    best = [max(x[i].mean() for x in table.values()) for i in range(len(DATASETS))]
    lines = ["| method | " + " | ".join(DATASETS) + " | mean | vs uniform, pooled pairs |",
             "|---" * (len(DATASETS) + 3) + "|"]
    for m, x in table.items():
        cells = []
        for i in range(len(DATASETS)):
            mark = "" if m == "uniform" or stats.ttest_rel(x[i], uni[i]).pvalue >= 0.05 else "†"
            cell = f"{x[i].mean():.3f} ± {x[i].std(ddof=1):.3f}{mark}"
            cells.append(f"**{cell}**" if x[i].mean() == best[i] else cell)
        pooled = "-" if m == "uniform" else (f"{(x - uni).mean() * 100:+.2f} pts, "
                                             f"p = {stats.ttest_rel(x.ravel(), uni.ravel()).pvalue:.3f}")
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + f" | {x.mean():.4f} | {pooled} |")
    return lines


def heads_table(root: Path, seeds: list[int]) -> list[str]:
    lines = ["| method | " + " | ".join(f"{d} {h}" for d, h in HEADS) + " |", "|---" * (len(HEADS) + 1) + "|"]
    for m in METHODS:
        cells = [values(root, m, f"unimodal_accuracy/{h}", [d], seeds)[0] for d, h in HEADS]
        lines.append(f"| {m} | " + " | ".join(f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" for x in cells) + " |")
    return lines


def weights_table(root: Path, seeds: list[int]) -> list[str]:
    lines = ["| variant | " + " | ".join(WEIGHT_DATASETS) + " |", "|---" * (len(WEIGHT_DATASETS) + 1) + "|"]
    for m in (m for m in METHODS if m.startswith("bogc")):
        cells = []
        for dataset in WEIGHT_DATASETS:
            found: dict[str, list[float]] = {}
            for seed in seeds:
                _eval(root, dataset, m, seed)  # a finished run
                path = root / dataset / m / f"seed{seed}" / "metrics.jsonl"
                last = json.loads(path.read_text().splitlines()[-1])
                for k, v in last.items():
                    if k.startswith("method.bogc.weight_"):
                        found.setdefault(k.removeprefix("method.bogc.weight_"), []).append(v)
            sources = sorted(k.removeprefix("mean.") for k in found if k.startswith("mean."))
            cells.append(", ".join(f"{s} {np.mean(found['mean.' + s]):.2f} (spread {np.mean(found['std.' + s]):.2f})"
                                   for s in sources))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="the sweep's results folder (results/ablation18)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (5)")
    args = ap.parse_args(argv)
    seeds = list(range(args.seeds))
    try:
        blocks = [("Validation accuracy", accuracy_table(args.results, "val_accuracy", seeds)),
                  ("Test accuracy", accuracy_table(args.results, "accuracy", seeds)),
                  ("Each modality's own head (test accuracy)", heads_table(args.results, seeds)),
                  ("Weights applied in the last epoch: mean (spread over dimensions)",
                   weights_table(args.results, seeds))]
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for title, lines in blocks:
        print(f"\n**{title}**\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
