"""Sweep cells that need other cells (I2M2's warm start from the joint and unimodal runs of its seed):
they train after them and start from their best.pt, a failed dependency skips its dependants with a
message, ``--jobs N`` never starts a dependant early, and the Slurm scripts chain exactly those tasks."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import torch
import yaml

from bogc_cli.sweep.plan import Cell, make_plan, run_order
from bogc_cli.sweep.schedule import DependencyQueue
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _cell(name: str, *needs: Cell) -> Cell:
    return Cell("d", name, 0, Path("r.yaml"), [], Path(name), needs=list(needs))


# ------------------------------------------------------------------ order and the queue
def test_run_order_puts_every_cell_after_the_cells_it_needs_and_keeps_the_rest_in_place():
    a, b = _cell("a"), _cell("b")
    c = _cell("c", a, b)
    d = _cell("d", c)
    e = _cell("e")
    assert [x.method for x in run_order([d, c, e, a, b])] == ["a", "b", "c", "d", "e"]
    assert [x.method for x in run_order([d, e])] == ["d", "e"]  # c was done before: not in the list


def test_the_queue_holds_a_dependant_until_its_dependencies_finished_well():
    joint, audio = _cell("joint"), _cell("audio")
    i2m2 = _cell("i2m2", joint, audio)
    queue = DependencyQueue(run_order([i2m2, joint, audio]))
    assert queue.take() is joint and queue.take() is audio
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(queue.take()))
    waiter.start()
    queue.finish(joint, 0)
    waiter.join(0.3)
    assert waiter.is_alive() and not got  # audio still running: i2m2 may not start
    queue.finish(audio, 0)
    waiter.join(5)
    assert got == [i2m2]
    queue.finish(i2m2, 0)
    assert queue.take() is None  # nothing left


def test_a_failed_dependency_skips_its_dependants_and_theirs_but_not_the_others():
    joint, other = _cell("joint"), _cell("other")
    i2m2 = _cell("i2m2", joint)
    after = _cell("after", i2m2)
    skipped: list[tuple[str, str]] = []
    queue = DependencyQueue(run_order([joint, i2m2, after, other]), on_skip=lambda c, d: skipped.append(
        (c.method, d.method)))
    assert queue.take() is joint
    assert queue.take() is other  # i2m2 waits; other does not
    queue.finish(joint, 1)
    assert queue.take() is None
    assert skipped == [("i2m2", "joint"), ("after", "i2m2")]


def test_a_dependency_done_before_the_sweep_started_counts_as_finished():
    joint = _cell("joint")
    i2m2 = _cell("i2m2", joint)
    queue = DependencyQueue([i2m2])  # joint is not to run: it was done
    assert queue.take() is i2m2


def test_closing_the_queue_releases_waiting_workers():
    joint = _cell("joint")
    queue = DependencyQueue([joint, _cell("i2m2", joint)])
    assert queue.take() is joint
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(queue.take()))
    waiter.start()
    queue.close()  # Ctrl-C
    waiter.join(5)
    assert got == [None]


# ------------------------------------------------------------------ a tiny real sweep
TINY = {"dataset.n_train": 160, "dataset.n_val": 60, "dataset.n_test": 60}


def _sweep(tmp_path: Path, methods: list, name: str = "sweep.yaml") -> Path:
    sweep = {"experiment": "deps", "out": str(tmp_path / "results"), "seeds": [0], "protocol": "common",
             "set": {"train.epochs": 1, "train.batch_size": 40},
             "datasets": {"synthetic": {"base": str(ROOT / "recipes/quickstart.yaml"), "set": TINY}},
             "methods": methods, "missing": None}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


I2M2 = {"recipe": "i2m2", "set": {"optim.lr": 1.0e-12, "optim.weight_decay": 0.0},  # weights stay where they start
        "needs": {"method.warm_start.joint": "joint", "method.warm_start.audio": "unimodal-audio"}}
AUDIO = {"recipe": "unimodal", "set": {"method.modality": "audio"}}
BROKEN = {"recipe": "joint", "tag": "broken", "set": {"train.modality_dropout": {"depth": 0.3}}}
ORPHAN = {"recipe": "i2m2", "tag": "orphan", "needs": {"method.warm_start.joint": "joint-broken"}}


def _parameters(path: Path, prefix: str, rename: str = "") -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {rename + k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and "running_" not in k and "num_batches" not in k}


def test_a_dependant_trains_after_its_dependencies_from_their_best_checkpoints(capsys, tmp_path):
    # i2m2 is listed first and two cells run at once: only the dependency order can hold it back
    sweep = _sweep(tmp_path, [I2M2, "joint", AUDIO, BROKEN, ORPHAN])
    code, out, err = run_cli(capsys, "reproduce", sweep, "--dry-run")
    out = " ".join(out.split())
    assert code == 0 and out.index("unimodal-audio") < out.index("i2m2")  # the plan lists the run order

    code, out, err = run_cli(capsys, "reproduce", sweep, "--jobs", "2")
    out = " ".join(out.split())
    assert code == 1, out + err
    assert "1 cell(s) failed" in out and "synthetic/joint-broken/seed0: exit 2" in out
    assert "1 cell(s) skipped" in out and "synthetic/i2m2-orphan/seed0: needs synthetic/joint-broken/seed0" in out
    assert "SKIPPED, it needs synthetic/joint-broken/seed0" in out

    runs = tmp_path / "results" / "deps" / "synthetic"
    assert not (runs / "i2m2-orphan").exists()  # never started
    joint, audio, i2m2 = runs / "joint" / "seed0", runs / "unimodal-audio" / "seed0", runs / "i2m2" / "seed0"
    started = (i2m2 / "recipe.yaml").stat().st_mtime_ns  # written when the run starts
    assert started >= max((d / "eval.json").stat().st_mtime_ns for d in (joint, audio))
    saved = yaml.safe_load((i2m2 / "recipe.yaml").read_text())
    assert saved["method"]["warm_start"] == {"joint": str(joint), "audio": str(audio)}

    # its weights are the dependencies' best.pt (a learning rate of 1e-12 leaves them there)
    for mine, theirs in ((_parameters(i2m2 / "best.pt", "encoders."), _parameters(joint / "best.pt", "encoders.")),
                         (_parameters(i2m2 / "best.pt", "expert_encoders.audio."),
                          _parameters(audio / "best.pt", "encoders.audio."))):
        assert mine.keys() == theirs.keys() and mine
        assert all(torch.allclose(mine[k], theirs[k], atol=1e-7) for k in mine)
    fresh = _parameters(i2m2 / "best.pt", "expert_encoders.image.")  # no warm start named: not the joint's
    assert not all(torch.allclose(v, _parameters(joint / "best.pt", "encoders.image.")[k]) for k, v in fresh.items())

    assert json.loads((i2m2 / "eval.json").read_text())["protocol"] == saved["protocol"] == "common"
    tables = (tmp_path / "results" / "deps" / "tables" / "accuracy.md").read_text()
    assert "protocol: common" in tables.splitlines()[0]  # the report names the runs' protocol


# ------------------------------------------------------------------ Slurm
FAKE_SBATCH = """#!/bin/bash
# records its arguments; prints a job id as `sbatch --parsable` does (with a cluster name)
n=$(( $(wc -l < "$SBATCH_LOG" 2>/dev/null || echo 0) + 100 ))
echo "$*" >> "$SBATCH_LOG"
echo "$n;cluster"
"""


def test_slurm_submits_dependants_after_exactly_the_tasks_they_need(capsys, tmp_path):
    sweep = _sweep(tmp_path, [I2M2, "joint", AUDIO, "uniform"])
    code, out, err = run_cli(capsys, "reproduce", sweep, "--launcher", "slurm")
    root = tmp_path / "results" / "deps"
    assert code == 0 and "bash" in out and "sweep_submit.sh" in " ".join(out.split()), out + err
    tasks = (root / "sweep_tasks.sh").read_text().splitlines()
    order = [line.split("method.name=")[1].split()[0] for line in tasks]
    assert order == ["joint", "unimodal", "i2m2", "uniform"]  # run order: the dependant after what it needs
    assert "#SBATCH --array=0-1,3" in (root / "sweep.sbatch").read_text()  # the cells that need nothing

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    done = subprocess.run(["bash", str(root / "sweep_submit.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"--parsable {(root / 'sweep.sbatch').resolve()}"  # the array of tasks 0, 1, 3
    assert calls[1] == ("--parsable --array=2 --dependency=afterok:100_0:100_1 --kill-on-invalid-dep=yes "
                        f"{(root / 'sweep.sbatch').resolve()}")  # i2m2: after joint's and unimodal-audio's tasks
    assert "submitted 4 cells: job array 100 and 1 dependent task(s)" in done.stdout


def test_without_dependants_slurm_writes_one_array_and_no_submit_script(capsys, tmp_path):
    sweep = _sweep(tmp_path, ["joint", AUDIO])
    root = tmp_path / "results" / "deps"
    root.mkdir(parents=True)
    (root / "sweep_submit.sh").write_text("stale")  # from an earlier plan
    code, out, _ = run_cli(capsys, "reproduce", sweep, "--launcher", "slurm")
    assert code == 0 and f"sbatch {root / 'sweep.sbatch'}" in " ".join(out.split())
    assert "#SBATCH --array=0-1" in (root / "sweep.sbatch").read_text()
    assert not (root / "sweep_submit.sh").exists()


def test_needs_fill_each_seed_with_its_own_seeds_run(tmp_path):
    path = _sweep(tmp_path, ["joint", AUDIO, I2M2])
    data = yaml.safe_load(path.read_text())
    data["seeds"] = [3, 4]
    path.write_text(yaml.safe_dump(data))
    plan = make_plan(path)
    for cell in (c for c in plan.cells if c.method == "i2m2"):
        assert [d.seed for d in cell.needs] == [cell.seed, cell.seed]
        assert f"method.warm_start.joint={plan.root / 'synthetic' / 'joint' / f'seed{cell.seed}'}" in cell.overrides


@pytest.mark.parametrize("ranges", [([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([4], "4"), ([0, 2, 4], "0,2,4")])
def test_array_ranges(ranges):
    from bogc_cli.sweep.runner import _ranges

    assert _ranges(ranges[0]) == ranges[1]


def test_slurm_chains_a_dependant_of_a_dependant_on_its_own_task(capsys, tmp_path):
    second = {"recipe": "i2m2", "tag": "second", "needs": {"method.warm_start.joint": "i2m2"}}
    first = {"recipe": "i2m2", "needs": {"method.warm_start.joint": "joint"}}
    sweep = _sweep(tmp_path, [second, first, "joint"])
    code, out, err = run_cli(capsys, "reproduce", sweep, "--launcher", "slurm")
    assert code == 0, out + err
    root = tmp_path / "results" / "deps"
    submit = (root / "sweep_submit.sh").read_text()
    assert "job_1=$(submit --array=1 --dependency=afterok:${first}_0 " in submit
    assert "job_2=$(submit --array=2 --dependency=afterok:${job_1}_1 " in submit  # after the first i2m2's task
    assert "#SBATCH --array=0\n" in (root / "sweep.sbatch").read_text()


def _finish(cell: Cell) -> None:
    """Make ``cell``'s run directory look finished with the cell's recipe as it is now."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    (cell.run_dir / "recipe.yaml").write_text(cell.resolved().to_yaml())
    (cell.run_dir / "eval.json").write_text(json.dumps({"train_seconds": 1.0}))


def test_a_finished_dependant_whose_dependency_trains_again_is_changed_not_done(capsys, tmp_path):
    path = _sweep(tmp_path, ["joint", AUDIO, I2M2])
    for cell in make_plan(path).cells:
        _finish(cell)
    assert {c.method: c.status for c in make_plan(path).cells} == {"joint": "done", "unimodal-audio": "done",
                                                                  "i2m2": "done"}
    joint = next(c for c in make_plan(path).cells if c.method == "joint")
    saved = yaml.safe_load((joint.run_dir / "recipe.yaml").read_text())
    saved["optim"]["lr"] = 0.5  # joint was made with another recipe: --overwrite would train it again
    (joint.run_dir / "recipe.yaml").write_text(yaml.safe_dump(saved))
    plan = make_plan(path)
    i2m2 = next(c for c in plan.cells if c.method == "i2m2")
    assert i2m2.status == "changed" and list(i2m2.changed) == ["method.warm_start.joint"]  # audio is unchanged
    code, _, err = run_cli(capsys, "reproduce", path)
    err = " ".join(err.split())
    assert code == 2 and "2 cell(s) hold a run made with another recipe" in err
    assert "synthetic/i2m2/seed0: method.warm_start.joint (was 'synthetic/joint/seed0 as it was'" in err
    assert not (tmp_path / "results" / "deps" / "logs").exists()  # the refusal ran nothing

    _finish(joint)  # joint as the sweep has it again, but the audio run never finished its training
    next(c for c in plan.cells if c.method == "unimodal-audio").run_dir.joinpath("eval.json").unlink()
    i2m2 = next(c for c in make_plan(path).cells if c.method == "i2m2")
    assert i2m2.status == "changed" and list(i2m2.changed) == ["method.warm_start.audio"]
