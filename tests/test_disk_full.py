"""A full disk: the write that fails is reported (exit 2, the file named, what to do), every earlier
result stays intact and verifiable, no temporary file is left behind, and once space is freed
`--resume` ends exactly where an uninterrupted run does. Simulated (ENOSPC from the kernel call that
flushes a file) everywhere; on a real, small tmpfs where this machine lets the test mount one."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from bogc_cli.engine.checkpoint import verified
from cli_helpers import run_cli, run_results

FAST = ["--set", "train.epochs=4", "--set", "dataset.n_train=192", "--set", "dataset.n_val=64",
        "--set", "dataset.n_test=64", "--set", "train.batch_size=32"]


def _train(capsys, out: Path, *extra: str):
    code, stdout, stderr = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out,
                                   "--set", "method.name=bogc", *FAST, *extra)
    return code, " ".join(stdout.split()), " ".join(stderr.split())


def _run_dir(out: Path) -> Path:
    return out / "quickstart" / "synthetic" / "bogc" / "seed0"


def _assert_intact_after_disk_full(run: Path, code: int, out: str, err: str, epochs_done: int) -> None:
    assert code == 2, out + err
    assert "no space left on the device writing" in err and "--resume" in err and "Traceback" not in out + err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    assert verified(run / "last.pt") is None and verified(run / "best.pt") is None
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == epochs_done
    assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs_done


class _NoCapture:
    """run_cli's capsys for a module fixture (which cannot take the function-scoped capsys)."""

    @staticmethod
    def readouterr():
        return "", ""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    code, out_text, err = _train(_NoCapture(), out)
    assert code == 0, out_text + err
    return run_results(_run_dir(out))


def test_disk_full_while_checkpointing_keeps_every_earlier_result(capsys, tmp_path, monkeypatch, uninterrupted,
                                                                  reliability):
    """The kernel refuses to flush epoch 3's checkpoint: epoch 2's stays, and the run resumes from it."""
    import bogc_cli.atomic as atomic

    real_fsync = os.fsync
    flushed = {"last.next.pt": 0}

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(".last.next.pt.") and ".sha256." not in name:  # the checkpoint, not its checksum
            flushed["last.next.pt"] += 1
            if flushed["last.next.pt"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(atomic.os, "fsync", fsync)
        code, out, err = _train(capsys, tmp_path)
    run = _run_dir(tmp_path)
    _assert_intact_after_disk_full(run, code, out, err, epochs_done=2)
    reliability("disk-full writes injected")

    code, out, err = _train(capsys, tmp_path, "--resume")
    assert code == 0, out + err
    records, ev, model = run_results(run)
    assert (records, ev) == uninterrupted[:2] and all(torch.equal(model[k], uninterrupted[2][k]) for k in model)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_disk_full_while_writing_a_report_keeps_the_earlier_tables(capsys, tmp_path, monkeypatch, reliability):
    assert _train(capsys, tmp_path / "r", "--set", "train.epochs=1")[0] == 0
    results = tmp_path / "r" / "quickstart"
    code, _, err = run_cli(capsys, "report", results)
    assert code == 0, err
    before = {p: p.read_bytes() for p in (results / "tables").rglob("*") if p.is_file()}
    assert before

    import bogc_cli.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    code, out, err = run_cli(capsys, "report", results)
    assert code == 2 and "no space left on the device" in err and "Traceback" not in out + err
    after = {p: p.read_bytes() for p in (results / "tables").rglob("*") if p.is_file()}
    assert after == before  # same files, same bytes, no temporary leftovers
    reliability("disk-full writes injected")


# ---------------------------------------------------------------------------- a real tmpfs


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 7.5 MB tmpfs: room for this run's epoch-2 checkpoints, not for epoch 3's (measured: best.pt
    0.85 MB, last.pt 2.55 MB; epoch 3 needs best, last.prev, last and the staged last.next)."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7680k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root and a system that allows it; the simulated tests above still run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_tmpfs_stops_training_cleanly_and_resume_finishes_it(capsys, small_tmpfs, uninterrupted,
                                                                         reliability):
    code, out, err = _train(capsys, small_tmpfs)
    run = _run_dir(small_tmpfs)
    assert code == 2, out + err
    epochs_done = torch.load(run / "last.pt", weights_only=False)["epoch"]
    assert 1 <= epochs_done < 4
    _assert_intact_after_disk_full(run, code, out, err, epochs_done)
    reliability("disk-full writes injected")

    code, out, err = _train(capsys, small_tmpfs, "--resume")  # still full: stops again at the same point
    _assert_intact_after_disk_full(run, code, out, err, epochs_done)
    reliability("disk-full writes injected")

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)  # space freed
    code, out, err = _train(capsys, small_tmpfs, "--resume")
    assert code == 0, out + err
    records, ev, model = run_results(run)
    assert (records, ev) == uninterrupted[:2] and all(torch.equal(model[k], uninterrupted[2][k]) for k in model)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_prepare_refuses_up_front_when_the_arrays_cannot_fit(capsys, tmp_path, shared_data, monkeypatch, reliability):
    """Memory-mapped writes to a full disk kill the process (SIGBUS), so prepare checks the space first."""
    import shutil

    import data_prep.clipstore as clipstore

    real = shutil.disk_usage
    monkeypatch.setattr(clipstore.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=2 * 1024 ** 2))  # 2 MiB free
    code, out, err = run_cli(capsys, "prepare", "cremad", "--raw", shared_data / "crema_d_mini",
                             "--out", tmp_path / "cache")
    err = " ".join(err.split())
    assert code == 2 and "not enough disk space" in err and "GiB is free" in err and "Traceback" not in out + err
    assert not (tmp_path / "cache" / "train").exists()
    reliability("disk-full writes injected")
