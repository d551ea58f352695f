"""Training throughput of ``bogc train`` over a full epoch, data loading included, and how much of the
epoch the training step itself occupies (the rest is time the GPU waits on input).

    python benchmarks/throughput.py                       # CUDA: cremad-gpu; CPU: cremad-cpu
    python benchmarks/throughput.py --preset cremad-gpu --methods joint,bogc --samples 4096

The data is CREMA-D-shaped (benchmarks/cremad_like.py) and prepared as ``bogc prepare`` stores it
(uint8 frames, float16 spectrograms, memory-mapped). Each row is a real ``train_run`` of 2 epochs
(random resized crop and flip on the device); the figures are the second epoch's, so worker start-up
and kernel autotuning stay out. ``busy`` = time inside the training step / epoch time (steps are
synchronised, so this is time the GPU had work queued); ``input wait`` = 1 - busy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cremad_like import Shape, clips  # noqa: E402

from bogc_cli.engine.trainer import train_run  # noqa: E402
from bogc_cli.recipe import validate_recipe  # noqa: E402

PRESETS = {
    "cremad-gpu": dict(shape=Shape(frames=3, side=224, raw_size=(480, 360)), encoders="resnet18", batch=64,
                       samples=2048, model={}),
    "cremad-cpu": dict(shape=Shape(frames=1, side=64, raw_size=(160, 120)), encoders="cnn-small", batch=32,
                       samples=128, model={"cnn_channels": [8, 16, 32], "feature_dim": 32}),
}
# label -> train block overrides: the fast path as shipped, and the same loop in plain fp32
VARIANTS = {
    "fast": {},
    "fp32-plain": {"precision": "fp32", "channels_last": False, "fused_optimizer": False},
}


def recipe_for(cache: Path, preset: dict, method: str, variant: dict, out: Path, workers, compile_: bool) -> dict:
    return {
        "experiment": "throughput", "seed": 0,
        "dataset": {"name": "cremad", "root": str(cache)},
        "model": {"encoders": preset["encoders"], **preset["model"]},
        "method": {"name": method},
        "optim": {"name": "sgd", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": preset["batch"], "eval_batch_size": preset["batch"],
                  "num_workers": workers, "compile": compile_,
                  "augment": {"crop_scale": [0.08, 1.0], "flip": True}, **variant},
        "output": {"dir": str(out)},
    }


def measure(cache: Path, preset: dict, method: str, variant: dict, out: Path, workers, compile_: bool) -> dict:
    """One ``train_run``; its second epoch's record."""
    recipe = validate_recipe(recipe_for(cache, preset, method, variant, out, workers, compile_), "throughput")
    result = train_run(recipe, Console(quiet=True), overwrite=True)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    env = json.loads((result.run_dir / "environment.json").read_text())
    settings = " ".join([env["precision"]] + [k for k in ("channels_last", "fused_optimizer", "compile") if env[k]])
    return {**records[-1], "num_workers": env["num_workers"], "settings": settings, "rows": result.test["train_rows"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default=None, help="default: cremad-gpu on CUDA, else cremad-cpu")
    ap.add_argument("--samples", type=int, default=None, help="clips in the epoch (default: the preset's)")
    ap.add_argument("--methods", default="joint,bogc")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", default="auto", help="train.num_workers (default auto)")
    ap.add_argument("--compile", action="store_true", help="also rows with train.compile")
    ap.add_argument("--work", type=Path, default=None, help="folder for the data (default: a temporary one)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    preset_name = args.preset or ("cremad-gpu" if cuda else "cremad-cpu")
    preset = PRESETS[preset_name]
    n = args.samples or preset["samples"]
    workers = args.workers if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        _, prep_s = clips(work, n, preset["shape"])
        rows = []
        for method in args.methods.split(","):
            for label in args.variants.split(","):
                for compile_ in ([False, True] if args.compile else [False]):
                    rec = measure(work / "cache", preset, method, VARIANTS[label], work / "results", workers,
                                  compile_)
                    rows.append((method, label + ("+compile" if compile_ else ""), rec))
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# throughput, preset {preset_name}: {n} clips, batch {preset['batch']}, {where}, torch {torch.__version__}; "
          f"prepared once in {prep_s:.1f} s")
    print(f"{'method':<10}{'variant':<20}{'resolved to':<40}{'workers':>8}{'samples/s':>11}{'epoch s':>9}{'busy':>7}{'input wait':>12}")
    for method, label, rec in rows:
        busy = rec["step_time_s"] / rec["epoch_time_s"]
        print(f"{method:<10}{label:<20}{rec['settings']:<40}{rec['num_workers']:>8}{rec['rows'] / rec['epoch_time_s']:>11.1f}"
              f"{rec['epoch_time_s']:>9.2f}{busy:>7.1%}{1 - busy:>12.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
