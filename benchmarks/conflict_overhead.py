"""What sampling the gradient conflict costs joint training: ``train.conflict_every`` against none.

    python benchmarks/conflict_overhead.py                      # the quickstart's joint model and data
    python benchmarks/conflict_overhead.py --every 0,100,50,25 --epochs 2 --rounds 3

Two measurements, both printed:

1. per sample: in one process, interleaved, the median time of one training step of ``joint`` and of one
   conflict sample (engine/conflict.py, same batch size); sampling every N steps then costs
   (sample / step) / N of the steps' time ("predicted");
2. in real runs: ``bogc train`` (in-process ``train_run``) of the recipe with each ``every``, in rounds;
   "measured" is the time spent sampling over the rest of the epochs' time (``epoch_time_s``: steps, data
   and sampling, not validation or the final evaluation), both from the same run, so a loaded machine
   slows both alike; median over rounds. "on/off" is 1 + measured: the epochs' time with sampling over
   the same epochs' time without it, the slowdown the option's 5% budget is about; the last line gives it
   for the default ``train.conflict_every``. The epochs' time itself is printed too, but on a shared
   machine it varies more between runs than the sampling costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from bogc_cli.recipe import TrainBlock

LIMIT = 0.05
"""Issue 19, item 4: sampling may slow joint training by at most 5%."""


def per_sample_ratio(recipe, repeats: int) -> tuple[float, float]:
    """(median ms of a joint training step, median ms of a conflict sample) on the recipe's model and data."""
    from contextlib import nullcontext

    from bogc_cli.data.loader import make_loader, to_device
    from bogc_cli.engine.conflict import GradientConflict
    from bogc_cli.engine.optim import build_optimizer
    from bogc_cli.engine.setup import build_parts
    from bogc_cli.fusion import StepContext

    parts = build_parts(recipe)
    model = parts.model
    optimizer = build_optimizer(model.parameters(), recipe.optim)
    method = parts.method_cls(parts.options, model, StepContext(device=torch.device("cpu"), optimizer=optimizer))
    train = parts.data.splits["train"]
    monitor = GradientConflict(model, method.fused_loss, train, recipe.train.batch_size, 1, torch.device("cpu"),
                               nullcontext)
    loader = make_loader(train, recipe.train.batch_size, shuffle=True, seed=0)
    batches = [to_device(raw, torch.device("cpu")) for _, raw in zip(range(repeats), loader)]
    model.train()
    steps, samples = [], []
    for k, batch in enumerate(batches):
        t0 = time.perf_counter()
        method.step(batch)
        steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        monitor.measure(k)
        samples.append(time.perf_counter() - t0)
    return 1000 * statistics.median(steps), 1000 * statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--every", default="0,100,50,25,10", help="conflict_every values (0: no sampling)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="steps and samples timed for the per-sample ratio")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", type=Path, default=None, help="results folder (default: a temporary one)")
    args = parser.parse_args(argv)
    every = [int(v) for v in args.every.split(",")]

    from bogc_cli.engine.trainer import train_run
    from bogc_cli.recipe import load_recipe

    base = [*args.overrides, "method.name=joint", f"train.epochs={args.epochs}"]
    recipe = load_recipe(args.recipe, base).for_seed(0)
    step_ms, sample_ms = per_sample_ratio(recipe, args.repeats)
    ratio = sample_ms / step_ms

    from bogc_cli.engine import conflict

    spent: list[float] = []
    measure = conflict.GradientConflict.measure

    def timed(self, k):
        t0 = time.perf_counter()
        try:
            return measure(self, k)
        finally:
            spent.append(time.perf_counter() - t0)

    conflict.GradientConflict.measure = timed
    work = args.work or Path(tempfile.mkdtemp(prefix="conflict_overhead_"))
    seconds: dict[int, list[float]] = {n: [] for n in every}
    shares: dict[int, list[float]] = {n: [] for n in every}
    steps = None
    for r in range(args.rounds):
        for n in every:
            spent.clear()
            run = load_recipe(args.recipe, [*base, f"train.conflict_every={n}", f"output.dir={work / f'r{r}n{n}'}"])
            result = train_run(run.for_seed(0), Console(quiet=True), overwrite=True)
            records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            total = sum(rec["epoch_time_s"] for rec in records)
            seconds[n].append(total)
            shares[n].append(sum(spent) / (total - sum(spent)))
            steps = records[0]["steps"]
    conflict.GradientConflict.measure = measure
    print(f"# gradient-conflict sampling cost: joint on {args.recipe} {' '.join(args.overrides)}, "
          f"{args.epochs} epochs of {steps} steps, CPU, {torch.get_num_threads()} thread(s), {args.rounds} rounds")
    print(f"# per sample: joint step {step_ms:.1f} ms, conflict sample {sample_ms:.1f} ms "
          f"(median of {args.repeats}): {ratio:.2f} steps")
    print(f"{'conflict_every':>14s} {'samples/epoch':>13s} {'predicted':>9s} {'measured':>8s} {'on/off':>7s} "
          f"{'epochs s':>9s}")
    for n in every:
        per_epoch = 0 if n == 0 else steps / n
        predicted = 0.0 if n == 0 else ratio / n
        share = statistics.median(shares[n])
        print(f"{n if n else 'off':>14} {per_epoch:13.1f} {100 * predicted:8.1f}% "
              f"{100 * share:7.1f}% {1 + share:7.3f} {statistics.median(seconds[n]):9.2f}")
    default = TrainBlock.model_fields["conflict_every"].default
    if default in shares:
        slowdown = 1 + statistics.median(shares[default])
        verdict = "within" if slowdown <= 1 + LIMIT else "ABOVE"
        print(f"# default train.conflict_every={default}: joint with conflict sampling on / off = {slowdown:.3f} "
              f"(same runs' epochs with and without the sampling time; limit {1 + LIMIT:.2f}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
