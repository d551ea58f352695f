"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader never sees a half-written file, and an interrupted write leaves the previous
version intact.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bogc_cli.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """The device (or the user's quota) ran out of space while a file was written; the file's
    previous version is untouched, since it is only ever replaced by a complete new one."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        # mkstemp makes the file private (0600); results are shared, so give it the usual umask mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as exc:
        if not _out_of_space(exc):
            raise
        kept = f"the earlier {path.name} is intact" if path.exists() else "nothing was replaced"
        raise DiskFull(f"no space left on the device writing {path} ({kept}). Free some space, or write "
                       "elsewhere (--out), then run the same command again") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it arose from is ENOSPC/EDQUOT (torch.save re-raises the
    OSError of a full disk as a RuntimeError while closing its archive)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_numpy(path: str | os.PathLike, array) -> None:
    """Save one array as .npy atomically (so it can be memory-mapped later)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)  # through a Python file, so a full disk's OSError(ENOSPC) reaches atomic_path
