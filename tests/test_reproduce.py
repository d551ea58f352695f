"""`bogc reproduce`: a sweep file becomes ordinary run directories; finished cells are skipped, so a
killed sweep finishes on rerun without redoing them; failures are listed with their logs; the sweep
ends with the report (tables with significance marks and AUC, comparison figures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, methods: list, seeds=(0, 1, 2), name: str = "sweep.yaml") -> Path:
    sweep = {
        "experiment": "tiny", "out": str(tmp_path / "results"), "seeds": list(seeds),
        "set": {"train.epochs": 2, "model.fill": "zero-input", "train.batch_size": 50},
        "datasets": {"synthetic": {"base": str(ROOT / "recipes/quickstart.yaml"),
                                   "set": {"dataset.n_train": 200, "dataset.n_val": 100, "dataset.n_test": 200}}},
        "methods": methods,
        "missing": {"rates": [0, 0.5, 1.0], "seed": 0},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_dry_run_of_the_paper_sweeps_lists_every_cell_and_needs_no_data(capsys, tmp_path):
    code, out, err = run_cli(capsys, "reproduce", "recipes/paper/main.yaml", "--dry-run", "--out", tmp_path)
    out = " ".join(out.split())
    assert code == 0, err
    sweep = yaml.safe_load(Path("recipes/paper/main.yaml").read_text())
    per_seed = sum(len(m.get("datasets") or sweep["datasets"]) if isinstance(m, dict) else len(sweep["datasets"])
                   for m in sweep["methods"])  # each method entry on its datasets (default: all)
    cells = per_seed * len(sweep["seeds"])
    assert cells >= 5 * (2 * 24 + 26) and f"{cells} of {cells} cells to run" in out
    for name in ("cremad", "kinetics_sounds", "brats_grade", "bogc", "mmpareto", "0,1,2,3,4"):
        assert name in out
    assert not any(tmp_path.iterdir())  # nothing written
    code, out, _ = run_cli(capsys, "reproduce", "recipes/paper/robustness.yaml", "--dry-run", "--out", tmp_path)
    assert code == 0 and "105 of 105" in " ".join(out.split())


def test_a_sweep_runs_end_to_end_lists_failures_and_a_rerun_redoes_nothing(capsys, tmp_path):
    methods = ["uniform", "joint", {"recipe": "joint", "tag": "moddrop", "set": {"train.modality_dropout": 0.3}},
               {"recipe": "joint", "tag": "broken", "set": {"train.modality_dropout": {"depth": 0.3}}}]
    sweep = _sweep(tmp_path, methods, seeds=(0, 1))  # two seeds: the fewest a paired t-test takes
    code, out, err = run_cli(capsys, "reproduce", sweep, "--jobs", "2")
    out = " ".join(out.split())
    assert code == 1, out + err
    assert "2 cell(s) failed" in out and "synthetic/joint-broken/seed0: exit 2, log" in out
    root = tmp_path / "results" / "tiny"
    assert "lacks" in (root / "logs" / "synthetic_joint-broken_seed0.log").read_text() or \
        "does not use" in (root / "logs" / "synthetic_joint-broken_seed0.log").read_text()
    done = sorted(root.glob("synthetic/*/seed*/eval.json"))
    assert len(done) == 6 and all((p.parent / "missing_modality.csv").is_file() for p in done)

    accuracy = pd.read_csv(root / "tables" / "accuracy.csv")
    assert {"p", "mark"} <= set(accuracy.columns)
    assert accuracy.loc[accuracy.method == "uniform", "p"].isna().all()  # the reference itself
    markdown = (root / "tables" / "accuracy.md").read_text()
    assert "**" in markdown and "paired t-test" in markdown
    robustness = (root / "tables" / "robustness_synthetic.md").read_text()
    assert "AUC" in robustness
    for figure in ("compare_missing_synthetic", "compare_unimodal_synthetic"):
        assert (root / "plots" / f"{figure}.png").is_file() and (root / "plots" / f"{figure}.pdf").is_file()

    stamps = {p: p.stat().st_mtime_ns for p in done}
    code, out, _ = run_cli(capsys, "reproduce", sweep, "--dry-run")
    assert code == 0 and "2 of 8 cells to run" in " ".join(out.split())
    fixed = _sweep(tmp_path, methods[:3], seeds=(0, 1), name="fixed.yaml")
    code, out, err = run_cli(capsys, "reproduce", fixed)
    assert code == 0 and "nothing to do" in " ".join(out.split()), out + err
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # no finished cell was run again

    code, out, _ = run_cli(capsys, "reproduce", sweep, "--launcher", "slurm")
    script = root / "sweep.sbatch"
    assert code == 0 and script.is_file()
    assert "#SBATCH --array=0-1" in script.read_text()
    tasks = (root / "sweep_tasks.sh").read_text().splitlines()
    assert len(tasks) == 2 and all("bogc train" in t and "--resume" in t and "joint-broken" not in t or
                                   "method.tag=broken" in t for t in tasks)


# 47 s; -m slow for CI's 15 minutes: a rerun that skips finished cells is checked by the end-to-end sweep test above,
# and a killed cell's resume by tests/test_kill_resume.py
@pytest.mark.slow
def test_a_killed_sweep_finishes_on_rerun_without_redoing_finished_cells(capsys, tmp_path):
    sweep = _sweep(tmp_path, ["uniform", "joint"], seeds=(0, 1))
    root = tmp_path / "results" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "bogc_cli", "reproduce", str(sweep)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(root.glob("synthetic/*/seed*/missing_modality.csv"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not finish two cells"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # the sweep process only: its running cell must not become an orphan
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in root.glob("synthetic/*/seed*/eval.json")
                if (p.parent / "missing_modality.csv").is_file()}
    assert 2 <= len(finished) < 4
    time.sleep(3)  # the orphaned cell got SIGTERM: it checkpoints and exits, releasing its run directory

    code, out, err = run_cli(capsys, "reproduce", sweep)
    assert code == 0, out + err
    assert len(list(root.glob("synthetic/*/seed*/missing_modality.csv"))) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())


def test_mistakes_in_a_sweep_file_are_refused_before_anything_runs(capsys, tmp_path):
    base = {"experiment": "x", "out": str(tmp_path / "r"), "seeds": [0],
            "datasets": {"avdigits": str(ROOT / "recipes/avdigits")}, "methods": ["joint"]}
    cases = [({"seed": [0]}, "unknown key 'seed' (did you mean seeds?)"),
             ({"methods": ["joint", "bogcc"]}, "method 'bogcc' has no recipe"),
             ({"set": {"train.epochs": -1}}, "cell avdigits/joint"),
             ({"datasets": {"avdigits": {"base": "nowhere.yaml"}}}, "nowhere.yaml not found"),
             ({"methods": ["joint", {"recipe": "joint"}]}, "same run directory")]
    for change, message in cases:
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        code, out, err = run_cli(capsys, "reproduce", path)
        assert code == 2 and message in " ".join(err.split()), (change, err)
    assert not (tmp_path / "r").exists()
