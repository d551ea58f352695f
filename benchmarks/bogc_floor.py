"""What bounds a BOGC step from below: the step cut down part by part, as ratios to joint in one run.

    OMP_NUM_THREADS=1 python benchmarks/bogc_floor.py --preset mfeat-cpu --clock cpu --rounds 5

Rows (same model, batch and interleaved rounds as ``step_time.py``):

- ``joint``: one forward, one backward, the optimiser step.
- ``two backward passes``: bogc's forward, its per-pass gradients (fusion loss; all modality losses) and the
  optimiser step on their plain sum, i.e. what any per-loss-gradient method pays before estimating anything.
- ``+ microbatch moments``: the same with bogc's chunk moments (``moments: microbatch``; for linear layers the
  chunk squares of ``chunk_grads.py``), the plain sum applied.
- ``+ calibration (bogc)``: bogc's full step (evidence, fusion, weights, diagnostics).

The difference between rows is what each part costs; the second row is the floor of a rule that needs each
loss's gradient, the third the floor of any rule that also needs their variance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bogc_cli.engine.runtime import keep_freed_host_memory
from bogc_cli.fusion.base import StepResult
from step_time import PRESETS, make_batch, make_method


def _apply_plain_sum(method, mu: dict[str, torch.Tensor]) -> None:
    for block in method.sources.blocks:
        method.sources.assign(block, sum(mu[s][block.slices[s]] for s in block.sources))


def two_backward_step(method, batch) -> StepResult:
    method.ctx.optimizer.zero_grad(set_to_none=True)
    out, losses = method._forward(batch.inputs, batch.labels)
    _apply_plain_sum(method, method.sources.gradients(losses))
    method.clip_and_step()
    return StepResult(sum(v.detach() for v in losses.values()), out.fused_logits.detach(), {})


def moments_step(method, batch) -> StepResult:
    method.ctx.optimizer.zero_grad(set_to_none=True)
    mu, _, logits, loss, _ = method._microbatch_moments(batch)
    _apply_plain_sum(method, mu)
    method.clip_and_step()
    return StepResult(torch.as_tensor(loss), logits, {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=[p for p in PRESETS if p.endswith("-cpu")], default="mfeat-cpu")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--clock", default="cpu", choices=["wall", "cpu"], help="as step_time.py")
    args = ap.parse_args(argv)
    keep_freed_host_memory()  # as `bogc train` on the CPU
    preset, device = PRESETS[args.preset], torch.device("cpu")
    batch = make_batch(preset, device)
    joint, bogc = (make_method(name, {}, preset, device, "fp32", batch) for name in ("joint", "bogc"))
    rows = {"joint": joint.step,
            "two backward passes": lambda b: two_backward_step(bogc, b),
            "+ microbatch moments": lambda b: moments_step(bogc, b),
            "+ calibration (bogc)": bogc.step}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {r: [] for r in rows}
    for step in rows.values():
        for _ in range(args.warmup):
            step(batch)
    for _ in range(args.rounds):
        for r, step in rows.items():
            for _ in range(args.steps):
                t0 = clock()
                step(batch)
                times[r].append((clock() - t0) * 1000)
    base = statistics.median(times["joint"])
    print(f"# bogc step floor ({args.clock} clock), preset {args.preset}, batch {preset['batch']}, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.rounds}x{args.steps} steps per row")
    print(f"{'row':<24}{'median ms':>11}{'vs joint':>10}")
    for r in rows:
        med = statistics.median(times[r])
        print(f"{r:<24}{med:>11.2f}{med / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
