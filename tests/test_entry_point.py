"""The real ``bogc`` entry point in a new process, where ``import click`` fails as on a fresh install
(typer 0.29 vendors click and no longer installs it): usage errors, unexpected exceptions, help text,
Ctrl-C in each command, ``--device``, ``list``, and what logs show (issue 17, kinds 1 and 10)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from cli_helpers import ROOT, bogc_command, fresh_install_env, run_bogc

# Each command with its arguments missing, and the named cases: every one a usage error, shown as typer
# shows it (the usage line, a hint and the message; typer gives no usage line for an option left without
# its value, so there the option is named).
USAGE_ERRORS = [
    ([], "Usage: bogc [OPTIONS] COMMAND"),
    (["train"], "Missing argument 'recipe'"),
    (["eval"], "Missing argument 'target'"),
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["train", "recipes/quickstart.yaml", "--bogus"], "No such option: --bogus"),
    (["prepare"], "Missing argument 'dataset'"),
    (["prepare", "mfeat"], "Missing option '--raw'"),
    (["missing-modality"], "Missing argument 'run_dir'"),
    (["report"], "Missing argument 'results_dir'"),
    (["reproduce"], "Missing argument 'sweep'"),
    (["list", "extra"], "unexpected extra argument"),
    (["eval", "somewhere", "--device"], "Option '--device' requires an argument"),
    (["train", "recipes/quickstart.yaml", "--max-bad-steps", "0"], "--max-bad-steps"),
    (["train", "recipes/quickstart.yaml", "--resume=yes"], "does not take a value"),
    (["reproduce", "x.yaml", "--jobs", "many"], "Invalid value for '--jobs'"),
]


@pytest.mark.parametrize("args, said", USAGE_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_usage_errors_print_typers_usage_and_exit_2_without_click(args, said, reliability):
    proc = run_bogc(*args)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 2, shown
    assert said in " ".join(shown.replace("│", " ").split()), shown
    command = " ".join(["bogc", *args[:1]])
    assert "Usage: bogc" in shown or f"Try '{command} --help' for help." in shown
    assert "No module named 'click'" not in shown and "Traceback" not in shown
    reliability("usage errors shown with typer's usage message, exit 2, with no click installed")


def test_an_unexpected_exception_is_not_masked(tmp_path):
    (tmp_path / "results").mkdir()
    bug = "import bogc_cli.report as r\ndef run_report(*a, **k):\n    raise RuntimeError('a bug in bogc')\nr.run_report = run_report"
    proc = run_bogc("report", tmp_path / "results", before=bug)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: a bug in bogc" in proc.stderr
    assert "No module named 'click'" not in proc.stderr  # its own traceback, not one about a missing module


@pytest.mark.parametrize("command", [[], ["prepare"], ["train"], ["eval"], ["missing-modality"], ["report"],
                                     ["reproduce"], ["list"]], ids=lambda c: " ".join(c) or "bogc")
def test_help_shows_no_value_after_flags(command):
    proc = run_bogc(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout and "--help" in proc.stdout
    if command == ["train"]:
        assert "--resume" in proc.stdout and "--overwrite" in proc.stdout
        assert "<path>" in proc.stdout  # options that take a value still say what


def _fake_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"stands for a checkpoint: the fault comes before it is read")
    return run


def _ctrl_c_in(target: str) -> str:
    """Python lines that make ``target`` (module.attribute) send this process a real SIGINT when called."""
    module, name = target.rsplit(".", 1)
    # Python's own Ctrl-C handler, as in a terminal: a test run started in the background (`pytest &`) passes
    # its children SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all
    return (f"import os, signal, time\nimport {module} as m\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"def interrupted(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(30)\n"
            f"m.{name} = interrupted")


@pytest.mark.parametrize("command, target, said", [
    ("eval", "bogc_cli.engine.inference.load_run", "nothing was written"),
    ("missing-modality", "bogc_cli.engine.inference.load_run", "the CSV and the plot are written only when"),
    ("report", "bogc_cli.report.run_report", "each table and plot already written is complete"),
    ("reproduce", "bogc_cli.sweep.plan.make_plan", "finished cells are kept"),
    ("prepare", "data_prep.PREPARERS", "the files decoded so far are kept"),
    ("train", "bogc_cli.engine.trainer.train_run", "with --resume"),
])
def test_ctrl_c_says_what_that_command_kept(tmp_path, reliability, command, target, said):
    run = _fake_run(tmp_path)
    args = {"eval": [run], "missing-modality": [run], "report": [tmp_path], "reproduce": [tmp_path / "s.yaml"],
            "prepare": ["mfeat", "--raw", tmp_path, "--out", tmp_path / "cache"],
            "train": ["recipes/quickstart.yaml", "--out", tmp_path / "results"]}[command]
    before = _ctrl_c_in(target)
    if command == "prepare":  # PREPARERS is a mapping: interrupt its mfeat entry
        before = _ctrl_c_in("data_prep.x").replace("m.x = interrupted", "m.PREPARERS['mfeat'] = interrupted")
    proc = run_bogc(command, *args, before=before)
    assert proc.returncode == 130, proc.stderr
    message = " ".join(proc.stderr.split())
    assert said in message and f"bogc {command}" in message
    if command != "train":
        assert "--resume" not in message  # a training's advice is wrong after eval, report, ...
    reliability("Ctrl-C delivered to a real bogc process in each command (its message checked)")


@pytest.mark.parametrize("command", ["eval", "missing-modality"])
def test_device_cuda_without_a_gpu_names_the_option(tmp_path, command):
    proc = run_bogc(command, _fake_run(tmp_path), "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert message.startswith("error: --device cuda: no CUDA GPU") and "train.device" not in message


def test_list_shows_the_options_of_arrays():
    proc = run_bogc("list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("│ arrays"))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("└"))
    cells = [line.split("│") for line in lines[start:end]]  # a wrapped row: each column's text, line by line
    row = " ".join(" ".join(line[c].strip() for line in cells if c < len(line)) for c in range(len(cells[0])))
    for option in ("root=<your folder>", "kinds", "val_fraction", "split_seed"):
        assert option in row, (option, row)


def _results_tree(root, methods, datasets, seeds=(0, 1, 2)):
    for d in datasets:
        for m in methods:
            for s in seeds:
                run = root / "wide" / d / m / f"seed{s}"
                run.mkdir(parents=True)
                (run / "eval.json").write_text(json.dumps({
                    "experiment": "wide", "dataset": d, "method": m, "seed": s, "accuracy": 0.8 + 0.01 * s,
                    "macro_f1": 0.7, "val_accuracy": 0.81, "unimodal_accuracy": {"audio": 0.5, "image": 0.6}}))


def test_numbers_never_wrap_across_lines_in_logs(tmp_path):
    # stdout is a pipe (a log): a table wider than 120 columns is printed at its own width
    _results_tree(tmp_path, ["joint", "uniform", "bogc"], [f"dataset{i}" for i in range(9)])
    proc = run_bogc("report", tmp_path)
    assert proc.returncode == 0, proc.stderr
    plus_minus = [line for line in proc.stdout.splitlines() if "±" in line]
    assert plus_minus and max(map(len, proc.stdout.splitlines())) > 120  # the case that used to wrap
    for line in plus_minus:
        assert not re.search(r"±(?! \d)", line.split("(mean ± std")[0]), line  # every ± has its std beside it
    assert "over 3 seeds" in proc.stdout


def test_report_says_n_and_marks_significance_only_from_3_seeds(tmp_path):
    _results_tree(tmp_path / "two", ["uniform", "bogc"], ["d"], seeds=(0, 1))
    proc = run_bogc("report", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr
    markdown = (tmp_path / "two" / "tables" / "accuracy.md").read_text()
    assert "over 2 seeds" in markdown and "†" not in markdown.split("\n\n")[1]  # no mark in the table
    assert "needs at least 3 seeds" in markdown and "n=2" in markdown
    # the same differences over 3 seeds are tested and marked
    _results_tree(tmp_path / "three", ["uniform"], ["d"])
    for s in range(3):
        run = tmp_path / "three" / "wide" / "d" / "bogc" / f"seed{s}"
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({"experiment": "wide", "dataset": "d", "method": "bogc", "seed": s,
                                                   "accuracy": 0.9 + 0.011 * s + 0.0001 * s * s}))
    assert run_bogc("report", tmp_path / "three").returncode == 0
    markdown = (tmp_path / "three" / "tables" / "accuracy.md").read_text()
    assert "over 3 seeds" in markdown and "†" in markdown.split("\n\n")[1]


def test_dry_run_never_estimates_about_0_min(tmp_path):
    sweep = {"experiment": "est", "out": str(tmp_path / "results"), "seeds": [0, 1],
             "datasets": {"synthetic": {"base": str(ROOT / "recipes/quickstart.yaml")}},
             "methods": ["joint", "uniform"], "missing": None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    proc = run_bogc("reproduce", path, "--dry-run")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stderr
    assert "4 of 4 cells to run; no time estimate yet" in text and "about 0 min" not in text
    # one finished cell of 2 min: the other cells of its dataset are estimated from it
    run = tmp_path / "results" / "est" / "synthetic" / "joint" / "seed0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"train_seconds": 120.0}))
    proc = run_bogc("reproduce", path, "--dry-run")
    text = " ".join(proc.stdout.split())
    assert "3 of 4 cells to run; about 6 min" in text, text


def test_the_progress_bar_never_shows_loss_nan(tmp_path):
    """On a terminal (a pseudo-terminal here) the live bar is drawn from before the first step."""
    import os
    import pty
    import subprocess
    import threading

    tiny = ["--set", "dataset.n_train=200", "--set", "dataset.n_val=100", "--set", "dataset.n_test=100",
            "--set", "train.epochs=1", "--set", "model.cnn_channels=[8,16]"]
    main, terminal = pty.openpty()
    proc = subprocess.Popen(bogc_command("train", "recipes/quickstart.yaml", "--out", tmp_path, *tiny), cwd=ROOT,
                            env=fresh_install_env({"COLUMNS": "200", "TERM": "xterm"}), stdin=terminal,
                            stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # the process ended and closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    assert proc.wait(timeout=600) == 0
    reader.join(timeout=30)
    os.close(main)
    shown = b"".join(chunks).decode(errors="replace")
    assert "loss -" in shown and re.search(r"loss \d\.\d{4}", shown), shown[-2000:]  # before, then after a step
    assert "nan" not in shown.lower()


def test_the_quickstart_time_is_the_same_in_the_readme_and_the_recipe():
    readme = (ROOT / "README.md").read_text()
    recipe = (ROOT / "recipes" / "quickstart.yaml").read_text()
    said = re.search(r"about (\d+) seconds on two idle CPU cores", readme)
    assert said and re.search(rf"About {said.group(1)} seconds on two idle CPU cores", recipe), (said, recipe[:300])
