"""Run the ``bogc`` CLI in-process, as a user would type it, capturing exit code and output."""

from __future__ import annotations

import sys

import pytest

from bogc_cli.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["bogc", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    if code == 2:  # a user's mistake: one message, never a traceback
        assert "Traceback" not in out + err, err
        from conftest import RELIABILITY

        key = "user mistakes refused by the CLI with exit 2 and one message"
        RELIABILITY[key] = RELIABILITY.get(key, 0) + 1
    return code, out, err


__all__ = ["run_cli", "pytest"]
