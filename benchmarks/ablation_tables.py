"""The issue-18 ablation's tables (docs/ablation.md) from the run directories of ``recipes/paper/ablation.yaml``.

    bogc reproduce recipes/paper/ablation.yaml --jobs 2
    python benchmarks/ablation_tables.py results/ablation18

Prints Markdown: validation and test accuracy per dataset (mean ± sample standard deviation over seeds; †:
``bogc report``'s paired t-test against ``uniform``, bogc_cli/report/significance.py, gives p < 0.05), their
mean over the datasets and the same test pooled over every (dataset, seed) pair; each modality's own head; and
the weights BOGC applied in the last epoch (``method.bogc.weight_mean.<source>`` and ``weight_std``, mean over
seeds). The runs are read as ``bogc report`` reads them (``find_runs``), which writes the per-dataset tables
too; this adds the pooled test and the weights.

Exit 2 with the missing run named when a cell has not finished (``eval.json`` absent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bogc_cli.report.aggregate import EVAL_FILE, UNIMODAL_PREFIX, find_runs, read_jsonl
from bogc_cli.report.significance import REFERENCE, marks, paired_tests

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


def load_runs(root: Path, seeds: list[int]) -> pd.DataFrame:
    """The ablation's runs (``bogc report``'s ``find_runs``), every dataset x method x seed; ``Missing`` names the
    first ``eval.json`` that is not there."""
    runs = find_runs(root)
    runs = runs[runs["dataset"].isin(DATASETS) & runs["method"].isin(METHODS) & runs["seed"].isin(seeds)]
    have = set(zip(runs["dataset"], runs["method"], runs["seed"]))
    for dataset in DATASETS:
        for method in METHODS:
            for seed in seeds:
                if (dataset, method, seed) not in have:
                    path = root / dataset / method / f"seed{seed}" / EVAL_FILE
                    raise Missing(f"{path} is missing: run `bogc reproduce recipes/paper/ablation.yaml` (it resumes) "
                                  "first")
    return runs


def _cell(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def accuracy_table(runs: pd.DataFrame, value: str) -> list[str]:
    means = runs.pivot_table(index="method", columns="dataset", values=value, aggfunc="mean")
    mark = paired_tests(runs, value, "dataset").set_index(["method", "dataset"])["p"]
    # pooled: every (dataset, seed) is one pair
    pooled = runs.assign(seed=runs["dataset"] + "/" + runs["seed"].astype(str), pool="all")
    pooled_p = paired_tests(pooled, value, "pool").set_index("method")["p"]
    reference = runs.loc[runs["method"] == REFERENCE, value].mean()
    lines = ["| method | " + " | ".join(DATASETS) + " | mean | vs uniform, pooled pairs |",
             "|---" * (len(DATASETS) + 3) + "|"]
    for m in METHODS:
        mine = runs[runs["method"] == m]
        cells = []
        for dataset in DATASETS:
            cell = _cell(mine.loc[mine["dataset"] == dataset, value])
            if m != REFERENCE:
                cell += marks(pd.Series([mark[(m, dataset)]])).iloc[0]
            cells.append(f"**{cell}**" if means.loc[m, dataset] == means[dataset].max() else cell)
        total = mine[value].mean()
        vs = "-" if m == REFERENCE else f"{(total - reference) * 100:+.2f} pts, p = {pooled_p[m]:.3f}"
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + f" | {total:.4f} | {vs} |")
    return lines


def heads_table(runs: pd.DataFrame) -> list[str]:
    lines = ["| method | " + " | ".join(f"{d} {h}" for d, h in HEADS) + " |", "|---" * (len(HEADS) + 1) + "|"]
    for m in METHODS:
        mine = runs[runs["method"] == m]
        cells = [_cell(mine.loc[mine["dataset"] == d, UNIMODAL_PREFIX + h]) for d, h in HEADS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def weights_table(runs: pd.DataFrame) -> list[str]:
    lines = ["| variant | " + " | ".join(WEIGHT_DATASETS) + " |", "|---" * (len(WEIGHT_DATASETS) + 1) + "|"]
    for m in (m for m in METHODS if m.startswith("bogc")):
        cells = []
        for dataset in WEIGHT_DATASETS:
            found: dict[str, list[float]] = {}
            for run_dir in runs.loc[(runs["method"] == m) & (runs["dataset"] == dataset), "run_dir"]:
                last = read_jsonl(Path(run_dir) / "metrics.jsonl")[-1]
                for k, v in last.items():
                    if k.startswith("method.bogc.weight_"):
                        found.setdefault(k.removeprefix("method.bogc.weight_"), []).append(v)
            sources = sorted(k.removeprefix("mean.") for k in found if k.startswith("mean."))
            mean = {k: sum(v) / len(v) for k, v in found.items()}
            cells.append(", ".join(f"{s} {mean['mean.' + s]:.2f} (spread {mean['std.' + s]:.2f})" for s in sources))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="the sweep's results folder (results/ablation18)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (5)")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.results, list(range(args.seeds)))
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    blocks = [("Validation accuracy", accuracy_table(runs, "val_accuracy")),
              ("Test accuracy", accuracy_table(runs, "accuracy")),
              ("Each modality's own head (test accuracy)", heads_table(runs)),
              ("Weights applied in the last epoch: mean (spread over dimensions)", weights_table(runs))]
    for title, lines in blocks:
        print(f"\n**{title}**\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
