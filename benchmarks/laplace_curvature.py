"""Per-step cost of the diagonal GGN of a linear softmax head: our closed form against the maintained libraries.

    python benchmarks/laplace_curvature.py                 # d = 64 and 192 inputs, 10 classes, batch 64
    pip install laplace-torch curvlinops-for-pytorch backpack-for-pytorch   # to measure them too

BOGC's ``moments: laplace`` needs, every step, the diagonal GGN of each loss's last layer (a
linear layer under cross-entropy) at the current weights. Each option computes it for one layer
(``weight [C, d]``, ``bias [C]``) from the layer's inputs ``a [B, d]`` and labels:

- ``ours``: ``bogc_cli.fusion.laplace.linear_softmax_diag_ggn`` from the forward's logits (the
  step already has them; the timed call includes computing them);
- ``backpack``: BackPACK's ``DiagGGNExact`` extension: a forward and a backward of the extended layer;
- ``laplace-torch (backpack|curvlinops)``: ``laplace.curvature.{BackPackGGN,CurvlinopsGGN}.diag``
  on the layer as the whole model, the call ``Laplace(..., hessian_structure="diag").fit`` makes
  per batch (for a last layer, laplace-torch's ``last_layer_jacobians`` path builds the per-sample
  Jacobians ``[B, C, C (d + 1)]`` instead);
- ``curvlinops (exact)``: ``GGNLinearOperator @ I`` (all ``C (d + 1)`` columns), its diagonal.

Prints one row per option: median ms per call and the largest difference from ``ours`` (a
library that is not installed prints ``not installed``). Measured in one process, options
interleaved over rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

from bogc_cli.fusion.laplace import linear_softmax_diag_ggn


def ours(layer: nn.Linear, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        gw, gb = linear_softmax_diag_ggn(a, layer(a))
    return torch.cat([gw.reshape(-1), gb])


def backpack_exact() -> Callable | None:
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact
    except ImportError:
        return None
    cache: dict = {}

    def run(layer, a, y):
        if "layer" not in cache or cache["src"] is not layer:
            cache.update(src=layer, layer=extend(nn.Linear(layer.in_features, layer.out_features).to(a.dtype)),
                         loss=extend(nn.CrossEntropyLoss(reduction="sum")))
            cache["layer"].load_state_dict(layer.state_dict())
        lay = cache["layer"]
        loss = cache["loss"](lay(a), y)
        with backpack(DiagGGNExact()):
            loss.backward()
        return torch.cat([lay.weight.diag_ggn_exact.reshape(-1), lay.bias.diag_ggn_exact])
    return run


def laplace_backend(name: str) -> Callable | None:
    try:
        from laplace import curvature
    except ImportError:
        return None
    backend = getattr(curvature, name)

    def run(layer, a, y):
        model = nn.Sequential(layer)
        # reduction "sum": laplace-torch's factor for classification is 1
        _, h = backend(model, "classification").diag(a, y)
        return h
    return run


def curvlinops_exact() -> Callable | None:
    try:
        from curvlinops import GGNLinearOperator
    except ImportError:
        return None

    def run(layer, a, y):
        params = [layer.weight, layer.bias]
        op = GGNLinearOperator(layer, nn.CrossEntropyLoss(reduction="sum"), params, [(a, y)],
                               check_deterministic=False, progressbar=False)
        n = sum(p.numel() for p in params)
        return (op @ torch.eye(n, dtype=a.dtype)).diagonal()
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,192", help="input sizes d of the layer (comma-separated)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=20, help="timed calls per option per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    options = {"ours": ours, "backpack DiagGGNExact": backpack_exact(),
               "laplace-torch BackPackGGN": laplace_backend("BackPackGGN"),
               "laplace-torch CurvlinopsGGN": laplace_backend("CurvlinopsGGN"),
               "curvlinops GGN @ I": curvlinops_exact()}
    print(f"# diagonal GGN of a linear softmax head, batch {args.batch}, {args.classes} classes, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.rounds}x{args.calls} calls")
    print(f"{'option':<30}{'d':>5}{'median ms':>11}{'vs ours':>9}{'max |diff|':>12}")
    for d in (int(x) for x in args.dims.split(",")):
        torch.manual_seed(0)
        layer = nn.Linear(d, args.classes)
        a = torch.randn(args.batch, d)
        y = torch.randint(0, args.classes, (args.batch,))
        reference = ours(layer, a, y)
        times: dict[str, list[float]] = {k: [] for k, f in options.items() if f is not None}
        # each option its own copy: BackPACK's extend() hooks a module, which functorch (curvlinops) then refuses
        layers = {k: copy.deepcopy(layer) for k in times}
        diffs = {k: float((options[k](layers[k], a, y) - reference).abs().max()) for k in times}
        for _ in range(args.rounds):
            for k in times:
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    options[k](layers[k], a, y)
                    times[k].append((time.perf_counter() - t0) * 1000)
        base = statistics.median(times["ours"])
        for k, f in options.items():
            if f is None:
                print(f"{k:<30}{d:>5}{'not installed':>32}")
                continue
            med = statistics.median(times[k])
            print(f"{k:<30}{d:>5}{med:>11.3f}{med / base:>8.1f}x{diffs[k]:>12.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
