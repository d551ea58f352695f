"""Ctrl-C and SIGTERM during training: finish the step in progress, checkpoint it, then stop.

A signal that lands in the middle of an optimiser step would leave the model half-updated, so the
handler only records the request; the train loop looks at it between steps. A second signal stops at
once (the user insists), which is as safe as a kill: ``last.pt`` still holds the last checkpoint.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """Raised by the train loop after it has saved a checkpoint for a pending stop request."""


class GracefulStop:
    """Context manager: while active, SIGINT/SIGTERM set ``requested`` (the signal's name) instead of
    interrupting; the previous handlers come back on exit. Outside the main thread (where Python
    cannot install handlers) it does nothing and signals behave as usual."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:  # second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name


def signal_on_parent_death(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (SIGKILL of the parent
    included), so a child never lives on as an orphan. Linux only: returns False where unavailable."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(1, sig) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, and a worker that died of
    it would break the batch the main process still has to finish; the main process decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
