"""Which sweep cell may start next: none before the cells it needs have finished well.

A cell that needs others (``needs:`` in the sweep file, e.g. I2M2's warm start from the joint and
unimodal runs of its seed) waits until each of them finished with exit code 0, or was already done
when the sweep was planned. When one of them failed (or was itself skipped), the cell is skipped and
so, in turn, are the cells that need it. Worker threads call :meth:`DependencyQueue.take` (blocks
while every remaining cell waits on a running one) and :meth:`DependencyQueue.finish`.
"""

from __future__ import annotations

import threading
from typing import Callable

from bogc_cli.sweep.plan import Cell

SkipHook = Callable[[Cell, Cell], None]  # (skipped cell, the dependency that failed or was skipped)


class DependencyQueue:
    """Hands out ``cells`` (in run order) so that every cell starts only after the cells it needs.

    Args:
        cells: the cells to run, in run order (``Plan.todo()``). A needed cell absent from this list
            counts as finished well (it was done when the sweep was planned).
        on_skip: called, under the queue's lock, for each cell skipped because of a failed dependency.
    """

    def __init__(self, cells: list[Cell], on_skip: SkipHook | None = None) -> None:
        self._pending = list(cells)
        self._members = set(map(id, cells))
        self._codes: dict[int, int] = {}  # id(cell) -> exit code (SKIPPED for a skipped cell)
        self._cond = threading.Condition()
        self._closed = False
        self._on_skip = on_skip

    SKIPPED = -1

    def take(self) -> Cell | None:
        """The next cell whose dependencies all finished well; ``None`` when nothing is left (or closed).

        Blocks while the remaining cells all wait on cells still running."""
        with self._cond:
            while not self._closed:
                for cell in list(self._pending):
                    state = self._state(cell)
                    if isinstance(state, Cell):  # a dependency failed: skip this cell, look again
                        self._pending.remove(cell)
                        self._codes[id(cell)] = self.SKIPPED
                        if self._on_skip:
                            self._on_skip(cell, state)
                        self._cond.notify_all()
                        break
                    if state == "ready":
                        self._pending.remove(cell)
                        return cell
                else:
                    if not self._pending:
                        return None
                    self._cond.wait()
            return None

    def finish(self, cell: Cell, code: int) -> None:
        """Record ``cell``'s exit code; wakes the threads waiting for it."""
        with self._cond:
            self._codes[id(cell)] = code
            self._cond.notify_all()

    def close(self) -> None:
        """Hand out nothing more (an interrupted sweep); waiting threads return ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _state(self, cell: Cell) -> str | Cell:
        """``"ready"``, ``"wait"``, or the dependency that failed or was skipped."""
        waiting = False
        for dep in cell.needs:
            if id(dep) not in self._members:
                continue  # done before this sweep started
            code = self._codes.get(id(dep))
            if code is None:
                waiting = True
            elif code != 0:
                return dep
        return "wait" if waiting else "ready"
