"""Check that an output folder can be written before any work starts.

A command that loads data (or trains for an hour) and only then meets a folder it cannot write wastes
the user's time and ends in a ``PermissionError`` traceback; each command that writes calls
``require_writable`` on its output folders first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bogc_cli.errors import UserError


def require_writable(folder: str | os.PathLike, what: str) -> None:
    """Raise UserError unless ``folder`` exists and takes new files, or can be created.

    The test is a real one (a temporary file is created and removed in ``folder``, or in its nearest
    existing parent when it is still to be made), so read-only mounts, ACLs and immutable folders count,
    not only the mode bits. ``what`` names the folder in the message (``--out``, ``the run folder``).

    Raises:
        UserError: a part of the path is a file, or the folder (or the parent it would be made in)
            refuses writes.
    """
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder} cannot be written: {existing} is a file, not a folder; "
                        "choose another folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bogc-write-test.", dir=existing)
    except OSError as exc:
        made = "" if existing == folder else f" (it would be made in {existing})"
        raise UserError(f"{what} {folder} cannot be written{made}: {exc.strerror or exc}; choose a folder you can "
                        "write to, or change its permissions") from None
    os.close(fd)
    os.unlink(probe)


__all__ = ["require_writable"]
