"""A checkpoint written inside an epoch (a stop between two steps), and continuing from one.

The checkpoint holds the epochs before as usual (``epoch`` = the one in progress - 1) plus
``resume.partial`` = {``epoch``, ``loader``: the batch-order generator as the epoch began, ``tally``: the
epoch's sums so far, ``processes``}. Data-parallel, ``tally`` is the sum over every process and
``processes`` lists each process's own tally, RNG state and floating-point buffers (BatchNorm
statistics): a resume with as many processes continues each exactly where it was; one with another
count starts from the totals (process 0 holds the sums, the others start theirs at zero) and the
averaged buffers.
"""

from __future__ import annotations

import torch

from bogc_cli.engine.distributed import Distributed
from bogc_cli.engine.run_state import RunState
from bogc_cli.engine.runtime import rng_state, set_rng_state
from bogc_cli.engine.saving import RunWriter
from bogc_cli.engine.tally import EpochTally


def save_mid_epoch(state: RunState, writer: RunWriter, epoch: int, epoch_order: torch.Tensor, tally: EpochTally,
                   distributed: Distributed | None) -> None:
    """Write last.pt for a stop after step ``tally.steps`` of ``epoch``; every process takes part (the
    per-process state is gathered on process 0, which writes). ``epoch_order``: the batch-order
    generator's state as the epoch began."""
    processes = None
    if distributed is not None:
        # each process's own sums, RNG and BatchNorm statistics, so that a resume with as many
        # processes continues each exactly; and their totals, for a resume with another count
        processes = distributed.gather_to_main(
            {"tally": tally.state(), "rng": rng_state(), "buffers": float_buffers(state.model)})
        tally.add_up(distributed)
        distributed.average_buffers(state.model)
    state.partial = {"epoch": epoch, "loader": epoch_order, "tally": tally.state(), "processes": processes}
    writer.last(state)


def resume_mid_epoch(state: RunState, loader, device: torch.device, distributed: Distributed | None,
                     main: bool) -> EpochTally:
    """Continue the epoch ``state.partial`` stopped in: its tally (this process's own when the job has as
    many processes, with its RNG and buffers), and ``loader`` set to yield the batches after the last
    one taken. Clears ``state.partial``."""
    partial = state.partial
    tally = EpochTally.from_state(partial["tally"], device, sums=main)
    if (mine := own_part(partial, distributed)) is not None:  # exactly where this process was
        tally = EpochTally.from_state(mine["tally"], device)
        set_rng_state(mine["rng"])
        set_float_buffers(state.model, mine["buffers"])
    state.order.set_state(partial["loader"])
    loader.batch_sampler.start_next_epoch_at(tally.steps)
    state.partial = None
    return tally


def own_part(partial: dict, distributed: Distributed | None) -> dict | None:
    """This process's part of a data-parallel mid-epoch checkpoint, when the job has as many processes."""
    processes = partial.get("processes")
    if distributed is None or not processes or len(processes) != distributed.world:
        return None
    return processes[distributed.rank]


def float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.detach().cpu().clone() for b in model.buffers() if b.is_floating_point()]


def set_float_buffers(model: torch.nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, value in zip((b for b in model.buffers() if b.is_floating_point()), saved, strict=True):
            b.copy_(value)
