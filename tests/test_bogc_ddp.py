"""BOGC under DDP (docs/BOGC_METHOD.md, "Distributed"): two gloo processes on CPU, each with half of a
fixed global batch, end with the same parameters as each other and as one process on the whole batch.

microbatch: chunks=4 counts the chunks of the global batch, so each rank splits its half into 2 and
the two ranks together hold the same 4 chunk gradients (tensor_split order) as one process; the per-source sums of g and g^2
and the chunk counts are all-reduced, so every rank calibrates with the same moments.
ema: each rank's gradient is averaged across ranks (= the whole batch's gradient), over 2 steps.
laplace: every rank draws the same last-layer samples; curvature and per-sample gradients are all-reduced.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import StepContext
from bogc_cli.fusion.bogc import BOGC, BOGCOptions
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

WORLD = 2
B = 32
SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
# name -> (options under DDP (per process), options of the single-process reference, steps)
CASES = {
    "microbatch": ({"chunks": 4}, {"chunks": 4}, 2),
    "ema": ({"moments": "ema"}, {"moments": "ema"}, 2),
    # every process draws the same posterior samples; the per-sample gradients (not only their sums) and the
    # curvature are summed by share, so the moments are the global batch's
    "laplace": ({"moments": "laplace", "frame": "modality", "evidence": "precision"},
                {"moments": "laplace", "frame": "modality", "evidence": "precision"}, 2),
}


def setup(options: dict):
    torch.manual_seed(0)  # every process starts from the same weights
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return BOGC(BOGCOptions.model_validate(options), model, StepContext(torch.device("cpu"), opt)), model


def global_batch(step: int) -> Batch:
    g = torch.Generator().manual_seed(100 + step)
    return Batch({m: torch.randn(B, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (B,), generator=g), torch.arange(B))


def shard(batch: Batch, rank: int) -> Batch:
    rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    return Batch({m: x[rows] for m, x in batch.inputs.items()}, batch.labels[rows], batch.index[rows])


def train(options: dict, steps: int, rank: int | None = None) -> dict[str, torch.Tensor]:
    method, model = setup(options)
    for t in range(steps):
        batch = global_batch(t)
        method.step(batch if rank is None else shard(batch, rank))
    # parameters only: buffers such as the running feature means (fill="mean-feature") follow each rank's own
    # data, as BatchNorm statistics do; syncing them is the job of a DDP wrapper, not of the method
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        for name, (options, _, steps) in CASES.items():
            torch.save(train(options, steps, rank), f"{out}/{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_each_other_and_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    assert not (dist.is_available() and dist.is_initialized())  # the reference below runs undistributed
    for name, (_, options, steps) in CASES.items():
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(WORLD)]
        reference = train(options, steps)
        start = dict(setup(options)[1].named_parameters())
        assert ranks[0].keys() == reference.keys()
        for key, ref in reference.items():
            # every rank computes the same calibrated update: bit for bit the same parameters
            assert torch.equal(ranks[0][key], ranks[1][key]), f"{name}: {key} differs between ranks"
            torch.testing.assert_close(ranks[0][key], ref, rtol=0, atol=1e-9, msg=f"{name}: {key} vs one process")
        assert any(not torch.equal(reference[k], start[k]) for k in reference), f"{name}: nothing was trained"
