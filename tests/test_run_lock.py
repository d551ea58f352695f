"""One writer per run directory: earlier results are refused unless --overwrite; a live run's lock is respected."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import run_cli

FAST = ["--set", "train.epochs=1", "--set", "dataset.n_train=128", "--set", "dataset.n_val=64",
        "--set", "dataset.n_test=64"]


def _train(capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out, *FAST, *extra)


def test_a_second_run_into_finished_results_is_refused_and_overwrite_replaces_them(capsys, tmp_path):
    code, out, err = _train(capsys, tmp_path)
    assert code == 0, out + err
    run_dir = tmp_path / "quickstart" / "synthetic" / "joint" / "seed0"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}

    code, out, err = _train(capsys, tmp_path)
    assert code == 2 and "Traceback" not in err
    assert str(run_dir) in err and "finished run" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"} == before

    (run_dir / "missing_modality.csv").write_text("old\n")
    code, out, err = _train(capsys, tmp_path, "--overwrite")
    assert code == 0, out + err
    assert (run_dir / "eval.json").is_file() and not (run_dir / "missing_modality.csv").exists()


def test_all_seeds_are_checked_before_the_first_one_trains(capsys, tmp_path):
    assert _train(capsys, tmp_path, "--seeds", "1")[0] == 0
    code, _, err = _train(capsys, tmp_path, "--seeds", "0,1")
    assert code == 2 and "seed1" in err
    assert not (tmp_path / "quickstart" / "synthetic" / "joint" / "seed0").exists()


def test_a_run_in_progress_keeps_its_directory_even_with_overwrite(capsys, tmp_path):
    run_dir = tmp_path / "quickstart" / "synthetic" / "joint" / "seed0"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time, os\n"
        f"f = open({str(run_dir / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / "metrics.jsonl").write_text("{}\n")  # the other run's progress
        code, _, err = _train(capsys, tmp_path, "--overwrite")
        assert code == 2 and f"pid {holder.pid}" in err and "in progress" in err
        assert (run_dir / "metrics.jsonl").read_text() == "{}\n"
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    # the holder is gone (killed, not cleanly exited): its lock went with it, no stale lock remains
    code, out, err = _train(capsys, tmp_path, "--overwrite")
    assert code == 0, out + err
