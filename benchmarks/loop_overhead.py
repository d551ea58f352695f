"""The train loop's own cost per step: real ``train_run``s of the quickstart, the epoch's time minus the time
inside ``method.step``, per step.

    python benchmarks/loop_overhead.py                      # 3 runs of 2 epochs, the quickstart as shipped
    python benchmarks/loop_overhead.py --runs 5 --n-train 1500 --method bogc

What the loop adds around each step (fetching and moving the batch, batch transforms, the tally, progress,
stop checks, callbacks) is ``(epoch_time_s - step_time_s) / steps`` of each epoch's record in
metrics.jsonl; the table prints it per run, and the median over every epoch of every run. Compare two
versions of the loop by running this script from each, at the same time of day on the same machine
(docs/engine.md: how the split of the loop into named parts was checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from bogc_cli.engine.trainer import train_run
from bogc_cli.recipe import read_yaml, validate_recipe

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def measure(out: Path, epochs: int, n_train: int | None, method: str) -> list[dict]:
    """One run; its epochs' records."""
    raw = read_yaml(QUICKSTART)
    raw["train"] = {**raw.get("train", {}), "epochs": epochs, "device": "cpu"}
    raw["method"] = {"name": method}
    raw["output"] = {"dir": str(out)}
    if n_train is not None:
        raw["dataset"] = {**raw["dataset"], "n_train": n_train}
    result = train_run(validate_recipe(raw, "loop_overhead").for_seed(0), Console(quiet=True), overwrite=True)
    return [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


def overhead_ms(record: dict) -> float:
    return (record["epoch_time_s"] - record["step_time_s"]) / record["steps"] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=None, help="dataset.n_train (default: the quickstart's)")
    ap.add_argument("--method", default="joint")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(1, args.runs + 1):
            rows.append((run, measure(Path(tmp), args.epochs, args.n_train, args.method)))
    print(f"# loop overhead, quickstart {args.method}, {args.epochs} epochs x {args.runs} runs, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'run':>4}{'steps/epoch':>13}{'step ms (median)':>18}{'loop ms/step':>14}{'epoch s':>9}")
    for run, records in rows:
        print(f"{run:>4}{records[0]['steps']:>13}{statistics.median(r['step_time_ms_median'] for r in records):>18.2f}"
              f"{statistics.median(overhead_ms(r) for r in records):>14.3f}"
              f"{statistics.fmean(r['epoch_time_s'] for r in records):>9.2f}")
    every = [overhead_ms(r) for _, records in rows for r in records]
    print(f"median loop overhead: {statistics.median(every):.3f} ms/step over {len(every)} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
