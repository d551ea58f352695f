"""What the balance metrics add to a run: seconds of each part of the end-of-training evaluation, against
the whole `bogc train` run.

    python benchmarks/eval_cost.py                                   # the quickstart, as a user runs it
    python benchmarks/eval_cost.py --recipe recipes/avdigits/joint.yaml --set train.epochs=2

Trains the recipe once (seed 0, into a temporary folder unless --work), then times on its best.pt,
each ``--repeats`` times (median): the evaluation every run had before (``predict`` on test), and each
part of today's (``balance_metrics``): the pass over test (predictions and features, replacing
``predict``), the passes over train and val, the 2^M subsets' predictions and Shapley values,
calibration, the linear probes and the FLOP count; and, during the run itself, the balance metrics as the
run computed them (the first use of their imports and the reliability diagram included). Prints a table;
the last line is what the balance metrics add to the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="results folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from bogc_cli.engine import balance_eval as be
    from bogc_cli.engine.calibration_metrics import calibration
    from bogc_cli.engine.contribution import absent_features, contributions, score_subsets
    from bogc_cli.engine.cost import forward_flops_per_sample
    from bogc_cli.engine.evaluate import predict
    from bogc_cli.engine.inference import load_run
    from bogc_cli.engine.trainer import train_run
    from bogc_cli.recipe import load_recipe

    from bogc_cli.engine import final_eval

    as_run: list[float] = []
    real = final_eval.run_balance_metrics

    def timed(*a, **k):  # the balance metrics as the run computes them: first use of their imports included
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            as_run.append(time.perf_counter() - t0)

    final_eval.run_balance_metrics = timed
    work = args.work or Path(tempfile.mkdtemp(prefix="eval_cost_"))
    recipe = load_recipe(args.recipe, [*args.overrides, f"output.dir={work}"]).for_seed(0)
    t0 = time.perf_counter()
    result = train_run(recipe, Console(quiet=True), overwrite=True)
    run_seconds = time.perf_counter() - t0
    final_eval.run_balance_metrics = real

    run = load_run(result.run_dir, device="cpu")
    model, dev, ac = run.model, run.device, run.autocast
    loaders = be.balance_loaders(run.parts.data.splits, "test", run.recipe.train.eval_batch_size)
    passes = {s: be.split_pass(model, loaders[s], dev, ac) for s in loaders}
    test = passes["test"]
    absent = absent_features(model, test.example)
    mods = list(model.modalities)
    before = _median_seconds(lambda: predict(model, loaders["test"], dev, ac), args.repeats)
    rows = [
        ("test pass: predictions + features", lambda: be.split_pass(model, loaders["test"], dev, ac)),
        (f"train ({len(loaders['train'].dataset)} probe rows) and val passes",
         lambda: [be.split_pass(model, loaders[s], dev, ac) for s in ("train", "val")]),
        (f"subsets' predictions (2^{len(mods)}) + Shapley",
         lambda: contributions(score_subsets(model, test.features, test.labels, absent, ac), mods, model.fill)),
        ("calibration (ECE, NLL, Brier)", lambda: calibration(test.predictions.fused, test.predictions.labels)),
        (f"linear probes ({len(mods)} x {len(be.C_GRID)} C)", lambda: be.probes(model, passes)),
        ("forward FLOPs", lambda: forward_flops_per_sample(model, test.example)),
    ]
    timed = [(name, _median_seconds(fn, args.repeats)) for name, fn in rows]
    warm = sum(s for _, s in timed)
    print(f"# end-of-training evaluation cost: {args.recipe} {' '.join(args.overrides)}, seed 0, "
          f"{dev.type.upper()}, {torch.get_num_threads()} thread(s), parts: median of {args.repeats}")
    print(f"{'part':56s} {'seconds':>8s} {'of the run':>11s}")

    def row(name: str, seconds: float) -> None:
        print(f"{name:56s} {seconds:8.2f} {100 * seconds / run_seconds:10.1f}%")

    row("bogc train (the whole run)", run_seconds)
    row("evaluation before: predictions on test", before)
    row("balance metrics in the run (test predictions included)", as_run[0])
    row("  first use of their imports (scikit-learn, matplotlib, ...)", as_run[0] - warm)
    for name, seconds in timed:
        row("  " + name, seconds)
    row("added by the balance metrics (in the run - before)", as_run[0] - before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
