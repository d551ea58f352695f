"""Ctrl-C and SIGTERM during training: finish the step in progress, checkpoint it, then stop.

A signal that lands in the middle of an optimiser step would leave the model half-updated, so the
handler only records the request; the train loop looks at it between steps. A second signal stops at
once (the user insists), which is as safe as a kill: ``last.pt`` still holds the last checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """Raised by the train loop after it has saved a checkpoint for a pending stop request."""


class GracefulStop:
    """Context manager: while active, SIGINT/SIGTERM set ``requested`` (the signal's name) instead of
    interrupting; the previous handlers come back on exit. Outside the main thread (where Python
    cannot install handlers) it does nothing and signals behave as usual."""

    def __init__(self, at_once: bool = False) -> None:
        self.requested: str | None = None
        self.at_once = at_once  # raise StopRequested from the first signal (nothing half-done to protect)
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
        if self.at_once:
            self._restore()
            raise StopRequested(self.requested)


def signal_on_parent_death(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (SIGKILL of the parent
    included), so a child never lives on as an orphan. Linux only: returns False where unavailable."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(1, sig) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def loader_worker_init(parent: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` (bind ``parent``, the pid of the process that starts the workers, with
    ``functools.partial``). The main process alone decides when to stop:

    - Ctrl-C reaches the whole foreground process group, and a scheduler's SIGTERM every process of the
      job (Slurm signals each process of a step): a worker that died of either would break the batch the
      main process still has to finish (torch raises ``DataLoader worker ... is killed by signal``), and
      no checkpoint would be written. Workers ignore SIGINT, and a SIGTERM unless it comes from
      ``parent`` (torch and multiprocessing terminate their workers that way on shutdown).
    - A worker dies with its main process, SIGKILL included, instead of living on until torch's watchdog
      notices (up to 5 s) while holding the run directory's lock (an inherited ``flock``), which would
      refuse an immediate ``--resume``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signal_on_parent_death(signal.SIGKILL) and os.getppid() != parent:
        os._exit(0)  # the main process died before the line above
    if hasattr(signal, "sigwaitinfo"):  # elsewhere (macOS) SIGTERM keeps its default action
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
        threading.Thread(target=_exit_on_sigterm_from, args=(parent,), daemon=True,
                         name="sigterm-from-parent").start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
