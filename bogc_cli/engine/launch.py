"""``bogc train --gpus N``: start the same command under torchrun, one process per GPU of this machine."""

from __future__ import annotations

import signal
import subprocess
import sys

import torch

from bogc_cli.engine.distributed import launched_by_torchrun
from bogc_cli.errors import UserError


def torchrun_command(gpus: int, train_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m bogc_cli train ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", "bogc_cli", "train", *train_args]


def check_gpus(gpus: int) -> None:
    if launched_by_torchrun():
        raise UserError("--gpus starts torchrun itself; under torchrun, leave --gpus out")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > visible:
        raise UserError(f"--gpus {gpus}: this machine has {visible} visible CUDA GPU(s); ask for at most {visible} "
                        "(CUDA_VISIBLE_DEVICES chooses which)")


def run_torchrun(gpus: int, train_args: list[str]) -> int:
    """Run the processes and return their exit code (130 when stopped by a signal).

    torchrun runs in a session of its own, so a Ctrl-C at the terminal reaches this process alone,
    which passes one SIGTERM on: every training process then stops at the same step boundary and
    process 0 checkpoints (two signals would stop them at once)."""
    proc = subprocess.Popen(torchrun_command(gpus, train_args), start_new_session=True)
    forwarded = False

    def forward(signum, _frame):
        nonlocal forwarded
        if not forwarded:
            forwarded = True
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 130 if forwarded else code
