"""Git LFS pointer files: what a dataset cloned without git-lfs holds instead of its media.

A repository that keeps large files in Git LFS (CREMA-D's does) stores, in place of each file, a
small text pointer (the Git LFS specification, https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md)::

    version https://git-lfs.github.com/spec/v1
    oid sha256:4d7a2146...
    size 414429

A clone made without git-lfs, or GitHub's "Download ZIP", gives these pointers (~130 bytes each).
Every reader of media, arrays, pickles and tables in bogc checks for them first, so the user is
told to fetch the files rather than that each one is corrupt.
"""

from __future__ import annotations

from pathlib import Path

#: The spec: a pointer file starts with this line and is smaller than 1024 bytes.
POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
MAX_POINTER_BYTES = 1024
FIX = ("run `git lfs pull` in the dataset's clone (install git-lfs first), or download the files themselves "
       "rather than the repository's ZIP")


def is_lfs_pointer(path: str | Path) -> bool:
    """True when ``path`` is a regular file holding a Git LFS pointer instead of its content."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size >= MAX_POINTER_BYTES:
            return False
        with open(path, "rb") as fh:
            return fh.read(len(POINTER_PREFIX)) == POINTER_PREFIX
    except OSError:
        return False


#: Why a pointer file is skipped: the same text for every file, so reports can group it.
POINTER_REASON = f"Git LFS pointer file, not the file's content: {FIX}"


def refuse_pointer(path: str | Path) -> None:
    """Raise ``UserError`` naming ``path`` when it is a Git LFS pointer (for readers of one essential file)."""
    if is_lfs_pointer(path):
        from bogc_cli.errors import UserError

        raise UserError(f"{path} is a {POINTER_REASON}")
