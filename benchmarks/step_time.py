"""Median training-step time of each method on the same model and batch, as ratios to joint.

    python benchmarks/step_time.py                       # CPU: avdigits-shaped data, cnn-small encoders
    python benchmarks/step_time.py --preset cremad-gpu   # GPU: resnet18 x2, 3 frames at 224 px, 257x188 spectrograms
    OMP_NUM_THREADS=1 python benchmarks/step_time.py --preset mfeat-cpu --clock cpu   # mfeat's MLPs, CPU time
    OMP_NUM_THREADS=1 python benchmarks/step_time.py --preset avmnist-cpu --clock cpu # avdigits-avmnist's shapes

Methods are measured in interleaved rounds within one process, so every ratio comes from
the same run under the same machine load. Prints one row per method:
``<method>  <median ms>  <ratio>x  <peak memory>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.engine.runtime import autocast_factory, keep_freed_host_memory, peak_memory_mb
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

PRESETS = {
    "avdigits-cpu": dict(specs={"audio": ModalitySpec("audio", [1, 64, 101], "float16"),
                                "image": ModalitySpec("image", [1, 28, 28], "uint8")},
                         encoders="cnn-small", batch=64, classes=10,
                         model=dict(cnn_channels=[16, 32, 64], feature_dim=64)),
    # avdigits prepared with --preset avmnist (40-bin log-mel of noisy speech, PCA-reduced images), as
    # recipes/avdigits-avmnist/*.yaml and the avdigits-avmnist cells of recipes/paper/all-methods.yaml
    "avmnist-cpu": dict(specs={"audio": ModalitySpec("audio", [1, 40, 51], "float16"),
                               "image": ModalitySpec("image", [1, 28, 28], "float16")},
                        encoders="cnn-small", batch=64, classes=10,
                        model=dict(cnn_channels=[16, 32, 64], feature_dim=64)),
    # mfeat preset weak3 (fou 76, zer 47, mor 6 features) as recipes/mfeat/*.yaml: mlp 128 -> 64, dropout 0.2
    "mfeat-cpu": dict(specs={"fou": ModalitySpec("vector", [76], "float32"),
                             "zer": ModalitySpec("vector", [47], "float32"),
                             "mor": ModalitySpec("vector", [6], "float32")},
                      encoders="mlp", batch=64, classes=10,
                      model=dict(hidden_dim=128, feature_dim=64, dropout=0.2)),
    "cremad-gpu": dict(specs={"audio": ModalitySpec("audio", [1, 257, 188], "float16"),
                              "visual": ModalitySpec("video", [3, 3, 224, 224], "uint8")},
                       encoders="resnet18", batch=64, classes=6, model={}),
}

VARIANTS = {
    "joint": ("joint", {}),
    "uniform": ("uniform", {}),
    "bogc": ("bogc", {}),
    "bogc-dims": ("bogc", {"frame": "dims"}),  # the default before the issue-18 ablation (frame: modality now)
    "bogc-chunks2": ("bogc", {"chunks": 2}),
    "bogc-ema": ("bogc", {"moments": "ema"}),
    "bogc-relative": ("bogc", {"evidence": "relative"}),
    "bogc-sign": ("bogc", {"frame": "sign"}),
    "bogc-calibrate1": ("bogc", {"single_source": "calibrate"}),
    "bogc-norm": ("bogc", {"norm": "match"}),
    "bogc-laplace": ("bogc", {"moments": "laplace"}),
    "bogc-modality": ("bogc", {"frame": "modality"}),
    "bogc-precision": ("bogc", {"evidence": "precision"}),
    "bogc-modality-precision": ("bogc", {"frame": "modality", "evidence": "precision"}),
    "bogc-laplace-modality-precision": ("bogc", {"moments": "laplace", "frame": "modality", "evidence": "precision"}),
}
for baseline in ("ogm_ge", "opm", "agm", "pmr", "mmpareto", "cggm", "gblending", "mla", "i2m2", "mimo",
                 "lfm", "mmcosine", "cml", "mbsd", "greedy", "amco", "reconboost", "relearning", "inforeg",
                 "smv"):
    VARIANTS[baseline] = (baseline, {})
VARIANTS["dimml"] = ("dimml", {"contrast_start_epoch": 9})  # its dimensions chosen at the timed epoch: contrast on
VARIANTS["dimml-stage2"] = ("dimml", {"stage1_epochs": 9})  # the fusion classifier alone, on frozen features
VARIANTS["lfm-learned"] = ("lfm", {"weighting": "learned"})  # plus its once-per-epoch weight step (not timed)
VARIANTS["greedy-random"] = ("greedy", {"selection": "random"})
# epoch 10 is a boosting epoch of reconboost's defaults (one learner with gradient, the other without); with stages
# of one boosting and one rectification epoch it is a rectification epoch (every learner with gradient)
VARIANTS["reconboost-rectify"] = ("reconboost", {"epochs_per_stage": 1, "correct_epoch": 1})


def make_method(name: str, options: dict, preset: dict, device: torch.device, precision: str, batch: Batch):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders=preset["encoders"], **preset["model"]), preset["specs"],
                        preset["classes"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    cls = METHODS[name]
    parsed = cls.Options.model_validate(options)
    cls.adapt_model(parsed, model)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # methods that make per-epoch passes (pmr prototypes, gblending weights) get the timed batch as their split
    ctx = StepContext(device=device, optimizer=opt, autocast=autocast_factory(device, precision),
                      holdout=[batch], train_eval=[batch])
    method = cls(parsed, model, ctx)
    method.on_epoch_start(10)  # past every warm-up, so the timed steps run the method's full rule
    return method


def make_batch(preset: dict, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    b = preset["batch"]
    inputs = {m: torch.randn(b, *s.shape, generator=g).to(device) for m, s in preset["specs"].items()}
    labels = torch.randint(0, preset["classes"], (b,), generator=g).to(device)
    return Batch(inputs, labels, torch.arange(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default=None, help="default: cremad-gpu on CUDA, else avdigits-cpu")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--methods", default=",".join(VARIANTS), help="comma-separated rows to measure")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: elapsed time; cpu: this process's CPU time (time.process_time), steadier on a "
                    "machine shared with other jobs, meaningful with one thread (OMP_NUM_THREADS=1) and on the CPU")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        keep_freed_host_memory()  # as `bogc train` on the CPU
    preset_name = args.preset or ("cremad-gpu" if device.type == "cuda" else "avdigits-cpu")
    preset = PRESETS[preset_name]
    rows = [r for r in args.methods.split(",") if r]
    unknown = [r for r in rows if r not in VARIANTS]
    if unknown:
        print(f"unknown rows {unknown}; valid: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    rows = [r for r in rows if VARIANTS[r][0] in METHODS]  # skip methods not implemented yet
    batch = make_batch(preset, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    methods, times, memory = {}, {r: [] for r in rows}, {}
    for r in rows:
        name, options = VARIANTS[r]
        methods[r] = make_method(name, options, preset, device, args.precision, batch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            methods[r].step(batch)
        sync()
        memory[r] = peak_memory_mb(device)
    for _ in range(args.rounds):
        for r in rows:
            for _ in range(args.steps):
                sync()
                t0 = clock()
                methods[r].step(batch)
                sync()
                times[r].append((clock() - t0) * 1000)
    base = statistics.median(times["joint"]) if "joint" in times else None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# step time ({args.clock} clock), preset {preset_name}, batch {preset['batch']}, {where}, "
          f"torch {torch.__version__}, {args.rounds}x{args.steps} steps per method")
    width = max(18, *(len(r) + 2 for r in rows))
    print(f"{'method':<{width}}{'median ms':>11}{'vs joint':>10}{'peak MB':>10}")
    for r in rows:
        med = statistics.median(times[r])
        ratio = f"{med / base:.2f}x" if base else "-"
        mem = f"{memory[r]:.0f}" if device.type == "cuda" else "-"
        print(f"{r:<{width}}{med:>11.1f}{ratio:>10}{mem:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
