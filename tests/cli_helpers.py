"""Run the ``bogc`` CLI in-process, as a user would type it, capturing exit code and output."""

from __future__ import annotations

import sys
from pathlib import Path

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


__all__ = ["run_bogc", "run_cli", "run_results", "signal_during_step", "stopped_and_resumed", "pytest"]


# ------------------------------------------------------------------ the real entry point, in a new process
ROOT = Path(__file__).resolve().parents[1]
FRESH_INSTALL = Path(__file__).resolve().parent / "fresh_install"  # a click.py that fails to import


def entry_point() -> tuple[str, str]:
    """(module, function) of the ``bogc`` console script, as pyproject.toml declares it."""
    import tomllib

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["bogc"]
    module, function = target.split(":")
    return module, function


def bogc_command(*args, before: str = "") -> list[str]:
    """The command line that runs the console script's entry point with ARGS (``before``: Python lines first)."""
    module, function = entry_point()
    code = f"import sys\n{before}\nsys.argv[0] = 'bogc'\nfrom {module} import {function}\nsys.exit({function}())\n"
    return [sys.executable, "-c", code, *map(str, args)]


def fresh_install_env(env: dict | None = None) -> dict:
    """This process's environment with this checkout and the click-less ``fresh_install`` first on PYTHONPATH."""
    import os

    path = os.pathsep.join([str(FRESH_INSTALL), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}


def run_bogc(*args, before: str = "", env: dict | None = None, cwd: Path = ROOT, timeout: float = 600):
    """``bogc ARGS`` in a new Python process, exactly as the installed console script runs it (its entry point
    from pyproject.toml), where ``import click`` fails as on a fresh install. ``before``: Python lines run
    first (to put a fault in place); ``env``: variables added to this process's environment. Returns the
    ``subprocess.CompletedProcess`` (text); an exit 2 is checked to print no traceback."""
    import subprocess

    environment = fresh_install_env(env)
    proc = subprocess.run(bogc_command(*args, before=before), cwd=cwd, env=environment, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode == 2:
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        from conftest import RELIABILITY

        key = "user mistakes refused by the real bogc entry point (a new process) with exit 2"
        RELIABILITY[key] = RELIABILITY.get(key, 0) + 1
    return proc


# ------------------------------------------------------------------ comparing runs, interrupting them
# Wall-clock and memory figures differ between two runs of the same seed; everything else must not.
TIMING = {"epoch_time_s", "step_time_ms_median", "step_time_s", "peak_memory_mb", "method.gblend.estimate_time_s"}
EVAL_TIMING = {"train_seconds", "step_time_ms_median", "epoch_time_s_mean", "peak_memory_mb"}


def run_results(where: Path) -> tuple[list[dict], dict, dict]:
    """A run's outcome without its timings: the ``metrics.jsonl`` records, ``eval.json`` and the
    ``best.pt`` weights. ``where``: the run directory, or a results folder holding one run."""
    import json

    import torch

    run = where if (where / "eval.json").is_file() else next(Path(where).rglob("eval.json")).parent
    records = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    ev = {k: v for k, v in json.loads((run / "eval.json").read_text()).items() if k not in EVAL_TIMING}
    return records, ev, torch.load(run / "best.pt", map_location="cpu", weights_only=False)["model"]


def signal_during_step(monkeypatch, sig: int, epoch: int, step: int, times: int = 1) -> None:
    """Send ``sig`` to this process (``times`` times) while batch ``step`` of ``epoch`` is being
    fetched, as a user's Ctrl-C or a scheduler's SIGTERM lands at some moment of a step."""
    import os

    from bogc_cli.engine import trainer

    real = trainer._train_epoch

    def signalled_epoch(method, model, loader, device, current, *args, **kwargs):
        if current != epoch:
            return real(method, model, loader, device, current, *args, **kwargs)

        def batches():
            for i, batch in enumerate(loader, start=kwargs["tally"].steps + 1):
                if i == step:
                    for _ in range(times):
                        os.kill(os.getpid(), sig)
                yield batch

        return real(method, model, batches(), device, current, *args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", signalled_epoch)


def stopped_and_resumed(capsys, monkeypatch, tmp_path: Path, args: list[str], step: int) -> tuple:
    """``bogc train ARGS`` straight, and Ctrl-C'd at ``step`` of epoch 2 then resumed: asserts the two end
    bitwise equal and returns the straight run's ``run_results``."""
    import signal

    import torch

    assert run_cli(capsys, *args, "--out", tmp_path / "straight")[0] == 0
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGINT, epoch=2, step=step)
        assert run_cli(capsys, *args, "--out", tmp_path / "cut")[0] == 130
    code, out, err = run_cli(capsys, *args, "--out", tmp_path / "cut", "--resume")
    assert code == 0, out + err
    expected, got = run_results(tmp_path / "straight"), run_results(tmp_path / "cut")
    assert got[:2] == expected[:2] and all(torch.equal(got[2][k], expected[2][k]) for k in got[2])
    return expected


def write_unimodal_run(root: Path, modality: str, model, classes: list[str]) -> Path:
    """A finished `unimodal` run directory of ``modality`` under ``root`` (best.pt of ``model`` + eval.json), as
    warm starts and teachers read it; returns the run directory."""
    from bogc_cli.engine.checkpoint import save_checkpoint

    run = root / f"uni-{modality}" / "seed0"
    run.mkdir(parents=True)
    save_checkpoint(run / "best.pt", model=model, recipe={"method": {"name": "unimodal", "modality": modality}},
                    epoch=1, val={}, data={"classes": classes})
    (run / "eval.json").write_text("{}")
    return run
