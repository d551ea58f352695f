"""Atomic writes: all or nothing, and ordinary file permissions."""

import os

import pytest

from bogc_cli.atomic import atomic_path, write_json, write_text


def test_write_replaces_whole_file_with_umask_mode(tmp_path):
    path = tmp_path / "sub" / "eval.json"
    write_json(path, {"a": 1})
    write_text(path, "second\n")
    assert path.read_text() == "second\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left


def test_failed_write_keeps_the_previous_version(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
