"""The running sums of an epoch in progress, and the same sums added up over data-parallel processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bogc_cli.engine.distributed import Distributed


@dataclass
class EpochTally:
    """Running sums of the epoch in progress: the loss and correct counts (device scalars), the
    per-source logs (device scalars, summed over rows), rows seen, steps taken (bad ones included),
    step times and the seconds spent. Saved in a mid-epoch checkpoint so the epoch can be finished."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    log_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0
    steps: int = 0
    bad: int = 0
    in_a_row: int = 0
    step_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def begin(cls, device: torch.device) -> "EpochTally":
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(),
                "log_sums": {k: v.cpu() for k, v in self.log_sums.items()}, "seen": self.seen,
                "steps": self.steps, "bad": self.bad, "in_a_row": self.in_a_row, "step_ms": list(self.step_ms),
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device, sums: bool = True) -> "EpochTally":
        """The tally a checkpoint saved; ``sums=False`` keeps its step counts but starts its sums at zero
        (data-parallel, the saved sums are already every process's, and process 0 alone takes them)."""
        tensors = {k: state[k].to(device) for k in ("loss_sum", "correct")}
        logs = {k: v.to(device) for k, v in state["log_sums"].items()}
        rest = {k: state[k] for k in ("seen", "steps", "bad", "in_a_row", "seconds")}
        if not sums:
            tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
            logs = {k: torch.zeros_like(v) for k, v in logs.items()}
            rest["seen"] = 0
        return cls(**tensors, log_sums=logs, step_ms=list(state["step_ms"]), **rest)

    def add_up(self, distributed: Distributed) -> None:
        """Replace the sums by their totals over every process (one collective)."""
        keys = sorted(self.log_sums)
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device)
        loss_sum, correct, seen, *logs = distributed.sum([self.loss_sum, self.correct, seen,
                                                          *(self.log_sums[k] for k in keys)])
        self.loss_sum, self.correct, self.seen = loss_sum, correct, int(seen)
        self.log_sums = dict(zip(keys, logs))
