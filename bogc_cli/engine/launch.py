"""``bogc train --gpus N``: start the same command under torchrun, one process per GPU of this machine."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from typing import IO

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
    which passes one SIGTERM on; torchrun passes it to every training process, which then stop at
    the same step boundary while process 0 checkpoints (two signals would stop them at once)."""
    proc = subprocess.Popen(torchrun_command(gpus, train_args), start_new_session=True,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    forwarded = threading.Event()

    def forward(signum, _frame):
        if not forwarded.is_set():
            forwarded.set()
            proc.send_signal(signal.SIGTERM)

    copier = threading.Thread(target=copy_stderr, args=(proc.stderr, sys.stderr, forwarded.is_set), daemon=True)
    copier.start()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        copier.join(timeout=5)
    return 130 if forwarded.is_set() else code


_LAUNCHER_LOG = re.compile(r"^[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ .*torch/distributed/")


def copy_stderr(source: IO[str], sink: IO[str], stopping) -> None:
    """Copy the processes' stderr, leaving out torchrun's own report of the stop we asked for (its log
    lines and the traceback of the signal it re-raises) once ``stopping()``: the user stopped the run
    and gets the training processes' message alone. Everything else passes, tracebacks included."""
    held: list[str] = []  # a traceback being read, printed unless it ends in torchrun's SignalException
    for line in source:
        if held:
            held.append(line)
            if line[:1] not in (" ", "\t") and not line.startswith(("Traceback", "During handling", "The above")) \
                    and line.strip():
                if not (stopping() and "SignalException" in line):
                    sink.writelines(held)
                held = []
            continue
        if line.startswith("Traceback (most recent call last):"):
            held = [line]
        elif not (stopping() and _LAUNCHER_LOG.match(line)):
            sink.write(line)
        sink.flush()
    sink.writelines(held)
    sink.flush()
