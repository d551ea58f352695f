"""Run a sweep's unfinished cells on this machine, or write a Slurm job array for them.

Each cell is a ``bogc train ... --resume`` subprocess followed by ``bogc missing-modality``, with its
output in ``<results>/<experiment>/logs/<dataset>_<method>_seed<N>.log``. ``--resume`` makes a
new cell start and an interrupted one continue exactly, so rerunning a killed sweep finishes it
without redoing completed cells. Local cells run ``jobs`` at a time: one per GPU when GPUs are
given (``CUDA_VISIBLE_DEVICES``), else on the CPU with its cores shared out. A cell that needs
others (``needs:``) starts only after they finished with exit 0 (``schedule.py``); when one failed it
is skipped with a message, and so are the cells that need it. With Slurm, ``sweep_submit.sh`` gives
each such cell a dependency on exactly the array tasks it needs.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bogc_cli.atomic import write_text
from bogc_cli.engine.graceful_stop import signal_on_parent_death
from bogc_cli.sweep.plan import Cell, Plan
from bogc_cli.sweep.schedule import DependencyQueue

Log = Callable[[str], None]
INTERRUPT_GRACE_S = 10.0


@dataclass
class Outcome:
    """One cell's end: its exit code (130: interrupted); ``skipped``: the cell it needed that failed (then the
    cell never ran, and ``code`` is ``DependencyQueue.SKIPPED``)."""

    cell: Cell
    code: int
    log: Path
    seconds: float
    skipped: Cell | None = None


def log_path(plan: Plan, cell: Cell) -> Path:
    return plan.root / "logs" / f"{cell.dataset}_{cell.method}_seed{cell.seed}.log"


def cell_commands(plan: Plan, cell: Cell, bogc: list[str]) -> list[list[str]]:
    """The commands of one cell: train (resuming), then the missing-modality evaluation."""
    commands = [bogc + cell.train_args()]
    m = plan.sweep.missing
    if m is not None:
        args = ["missing-modality", str(cell.run_dir), "--rates", ",".join(f"{r:g}" for r in m.rates),
                "--seed", str(m.seed)]
        if m.fill:
            args += ["--fill", m.fill]
        if cell.data is not None:  # the data where the sweep's recipe says it is now, not where it was at training
            args += ["--data", cell.data]
        commands.append(bogc + args)
    return commands


def _stop_with_parent() -> None:
    """``preexec_fn`` of a cell's process: SIGTERM it if the sweep dies (even of SIGKILL), so it saves a
    checkpoint and releases its run directory instead of training on as an orphan."""
    signal_on_parent_death(signal.SIGTERM)


def run_local(plan: Plan, jobs: int, gpus: list[str] | None, log: Log) -> list[Outcome]:
    """Run every unfinished cell, each after the cells it needs (a cell whose dependency failed is
    skipped); returns one outcome per cell run or skipped (code 130: interrupted)."""
    todo = plan.todo()
    total = len(todo)
    slots: queue.Queue[str | None] = queue.Queue()
    for slot in (gpus if gpus else [None] * jobs):
        slots.put(slot)
    threads = max(1, (os.cpu_count() or 1) // (len(gpus) if gpus else jobs))
    outcomes: list[Outcome] = []
    stop = threading.Event()
    lock = threading.Lock()
    running: set[subprocess.Popen] = set()
    bogc = [sys.executable, "-m", "bogc_cli"]

    def skip(cell: Cell, dep: Cell) -> None:  # called under the queue's lock
        with lock:
            outcomes.append(Outcome(cell, DependencyQueue.SKIPPED, log_path(plan, cell), 0.0, skipped=dep))
            log(f"[{len(outcomes)}/{total}] {cell.name}: SKIPPED, it needs {dep.name}, which did not finish")

    cells = DependencyQueue(todo, on_skip=skip)

    def work(cell: Cell) -> int:
        slot = slots.get()
        try:
            if stop.is_set():
                return 130
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            path = log_path(plan, cell)
            path.parent.mkdir(parents=True, exist_ok=True)
            started, code = time.perf_counter(), 0
            with open(path, "a", encoding="utf-8") as fh:
                for command in cell_commands(plan, cell, bogc):
                    fh.write(f"$ {shlex.join(command)}\n")
                    fh.flush()
                    with lock:
                        if stop.is_set():  # Ctrl-C came between two commands
                            code = 130
                            break
                        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                                preexec_fn=_stop_with_parent)
                        running.add(proc)
                    code = proc.wait()
                    with lock:
                        running.discard(proc)
                    if code != 0:
                        break
            outcome = Outcome(cell, code, path, time.perf_counter() - started)
            with lock:
                outcomes.append(outcome)
                status = {0: "done", 130: "interrupted"}.get(code, f"FAILED (exit {code})")
                where = f" on GPU {slot}" if slot is not None else ""
                log(f"[{len(outcomes)}/{total}] {cell.name}{where}: {status} in {outcome.seconds:.0f} s")
            if code == 130:
                stop.set()
                cells.close()
            return code
        finally:
            slots.put(slot)

    def drain() -> None:
        while (cell := cells.take()) is not None:
            cells.finish(cell, work(cell))

    pool = [threading.Thread(target=drain, daemon=True) for _ in range(len(gpus) if gpus else jobs)]
    for t in pool:
        t.start()
    try:
        for t in pool:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        # A Ctrl-C in the terminal reached the running cells too: they finish their step, checkpoint and
        # exit. A cell still running after a grace period never got it (the signal was sent to this
        # process alone, or the cell started just after it): pass it on.
        with lock:
            stop.set()
        cells.close()
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in list(running)):
            time.sleep(0.1)
        with lock:
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
        for t in pool:
            t.join()
        raise
    return outcomes


SBATCH = """#!/bin/bash
# Slurm job array for sweep {source}: one task per unfinished cell ({count} of {total}).
# Submit with:  {submit_line}
# Edit the resources below for your cluster. Each task resumes its run, so resubmitting after a
# preemption or a failure continues where it stopped; `bogc reproduce {source}` afterwards skips the
# finished cells and writes the report.
#SBATCH --job-name={name}
#SBATCH --array={array}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output={logs}/slurm_%A_%a.log
#SBATCH --signal=TERM@120
set -euo pipefail
cd {cwd}
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {tasks})
eval "$line"
"""

SUBMIT = """#!/bin/bash
# Submits sweep {source} in dependency order. The cells that need no unfinished cell run as the job
# array of {script} (tasks {array}); every cell that needs others (e.g. I2M2 after the joint and
# unimodal runs of its seed) is a one-task array of the same script that starts only after exactly
# those tasks finished with exit 0 (--dependency=afterok:JOB_TASK). When one of them fails, Slurm
# cancels the cells that need it (--kill-on-invalid-dep=yes); rerun `bogc reproduce {source}
# --launcher slurm` after fixing it to submit what is left.
set -euo pipefail
cd {cwd}
submit() {{ local id; id=$(sbatch --parsable "$@" {script}); echo "${{id%%;*}}"; }}
{lines}
echo "submitted {count} cells: job array $first and {dependants} dependent task(s)"
"""


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"`` (Slurm's --array syntax)."""
    parts: list[str] = []
    for i in indices:
        if parts and i == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


def write_slurm(plan: Plan) -> tuple[Path, Path | None]:
    """``<results>/<experiment>/sweep.sbatch`` and ``sweep_tasks.sh`` (one line of commands per unfinished cell,
    in run order), plus ``sweep_submit.sh`` when a cell needs another unfinished one: it submits the cells that
    need nothing as one job array and each dependant as a one-task array of the same script with
    ``--dependency=afterok:<job>_<task>`` on exactly the tasks it needs (Slurm's job-array task
    dependencies). Returns (sbatch script, submit script or None)."""
    todo = plan.todo()
    plan.root.mkdir(parents=True, exist_ok=True)
    (plan.root / "logs").mkdir(exist_ok=True)
    tasks = plan.root / "sweep_tasks.sh"
    lines = [" && ".join(shlex.join(c) for c in cell_commands(plan, cell, ["bogc"])) for cell in todo]
    write_text(tasks, "".join(line + "\n" for line in lines))
    index = {id(cell): i for i, cell in enumerate(todo)}
    waits = {i: [index[id(d)] for d in cell.needs if id(d) in index] for i, cell in enumerate(todo)}
    free = [i for i, deps in waits.items() if not deps]
    script = plan.root / "sweep.sbatch"
    submit = plan.root / "sweep_submit.sh"
    dependants = [i for i in range(len(todo)) if waits[i]]
    write_text(script, SBATCH.format(
        source=plan.source, count=len(todo), total=len(plan.cells),
        submit_line=f"bash {submit}  (cells need others: it submits them in order)" if dependants else
        f"sbatch {script}", name=plan.sweep.experiment, array=_ranges(free) or "0",
        logs=(plan.root / "logs").resolve(), cwd=Path.cwd().resolve(), tasks=tasks.resolve()))
    if not dependants:
        submit.unlink(missing_ok=True)  # an earlier plan's: it would submit cells in a stale order
        return script, None
    job = {i: "${first}" for i in free}
    body = ["first=$(submit)"]
    for i in dependants:  # run order: a dependant's dependencies were submitted before it
        after = ":".join(f"{job[d]}_{d}" for d in waits[i])
        body.append(f"job_{i}=$(submit --array={i} --dependency=afterok:{after} --kill-on-invalid-dep=yes)"
                    f"  # {todo[i].name}")
        job[i] = f"${{job_{i}}}"
    write_text(submit, SUBMIT.format(source=plan.source, script=script.resolve(), array=_ranges(free),
                                     cwd=Path.cwd().resolve(), lines="\n".join(body), count=len(todo),
                                     dependants=len(dependants)))
    return script, submit
