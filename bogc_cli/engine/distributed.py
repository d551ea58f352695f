"""Data-parallel training over processes started by torchrun (``bogc train --gpus N`` starts it).

Every process holds the whole model and the same recipe. Each global batch (``train.batch_size``
rows, drawn in the same order on every process) is cut into contiguous shards, one per process;
after the method has written its gradients, they are averaged across processes in one
all-reduce of a single flat buffer, weighted by shard size, so every process takes the same
update as one process would on the whole batch. Methods that combine per-source gradients
non-linearly (bogc, mmpareto) all-reduce what they need themselves, once per step, and mark the
step's gradients as already in agreement. Process 0 alone validates and writes the run directory.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bogc_cli.errors import ProcessError, UserError


@dataclass
class Distributed:
    """This process's place in the job, and in the current global batch: ``part`` = (start, stop, rows),
    this process's rows start..stop of a global batch of ``rows`` (set by ``place`` before each step)."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    part: tuple[int, int, int] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def share(self) -> float:
        """The fraction of the current global batch this process holds."""
        if self.part is None:
            return 1.0
        start, stop, rows = self.part
        return (stop - start) / rows

    def place(self, rows: int) -> tuple[int, int, int]:
        """Enter a global batch of ``rows`` rows: sets and returns ``part``."""
        self.part = (*self.shard_bounds(rows), rows)
        return self.part

    def shard_bounds(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this process's contiguous part of a global batch of ``n`` rows (as
        ``tensor_split``: sizes differ by <= 1)."""
        base, extra = divmod(n, self.world)  # tensor_split gives the first `extra` shards one row more
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, rows: list[int]) -> list[int]:
        """This process's part of a global batch's rows."""
        start, stop = self.shard_bounds(len(rows))
        return rows[start:stop]

    def average_gradients(self, grads: list[torch.Tensor]) -> None:
        """Replace each process's gradients by the global batch's, in place: one all-reduce of one flat buffer."""
        _sum_in_place(grads, self.share, torch.float32)

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm statistics, running feature means) across processes,
        in one all-reduce. They are running averages of batch statistics, which are linear in them, so the
        average of every process's equals what one process would hold after the same global batches."""
        _sum_in_place([b for b in model.buffers() if b.is_floating_point()], 1 / self.world, torch.float64)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any process (e.g. a stop signal that reached only some of them)."""
        return self.most(1 if flag else 0, device) > 0

    def most(self, value: int, device: torch.device) -> int:
        """The largest of every process's ``value`` (a small int, e.g. the strongest stop request), in one
        all-reduce."""
        t = torch.tensor([float(value)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def sum(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Element-wise sums across processes of scalar or 1-D tensors, in one collective."""
        summed = all_reduce_flat([v.reshape(-1).double() for v in values])
        return [t.view_as(v).to(v.dtype) for t, v in zip(summed, values)]

    def gather_to_main(self, obj):
        """Every process's ``obj`` (picklable), in rank order, on process 0; None on the others."""
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        dist.barrier()


def all_reduce_flat(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum 1-D tensors across processes in one collective; returns them in the same order and sizes."""
    flat = torch.cat(tensors)
    dist.all_reduce(flat)
    return list(flat.split([t.numel() for t in tensors]))


def _sum_in_place(tensors: list[torch.Tensor], weight: float, dtype: torch.dtype) -> None:
    """Replace each tensor by the sum over processes of ``weight`` x its value: one all-reduce of one flat
    ``dtype`` buffer."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors]).mul_(weight)
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_setting: str) -> Distributed | None:
    """Join the job torchrun started (NCCL on CUDA, gloo on the CPU), or None when run as one process.

    On CUDA, each process takes the GPU of its local rank."""
    if not launched_by_torchrun():
        return None
    if dist.is_initialized():
        return _current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if device_setting == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA GPU is visible; use train.device=cpu or auto")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ProcessError(f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} visible; "
                            "start at most that many processes per node")
        torch.cuda.set_device(local_rank)
    # validation and checkpoints run on process 0 alone while the others wait: allow them time
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return _current()


def _current() -> Distributed:
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
