"""`bogc tune`: trials are ordinary run directories whose validation accuracy is the objective; the study in
the experiment folder's SQLite file survives a kill (finished trials kept, the cut trial resumed from its
checkpoint); two processes share one study without losing or doubling a trial; a sweep gives every
method the same trials; bad space files and storages are one message and exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bogc_cli.fusion import METHODS
from bogc_cli.recipe import load_recipe
from bogc_cli.tune.space import load_space
from cli_helpers import run_cli, signal_during_step

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["dataset.n_train=128", "dataset.n_val=64", "dataset.n_test=64", "train.batch_size=32"]


def _args(out: Path, trials: int, epochs: int = 1, *extra: str) -> list[str]:
    args = ["tune", str(ROOT / "recipes/quickstart-bogc.yaml"), "--space", str(ROOT / "recipes/tune/bogc.yaml"),
            "--trials", str(trials), "--out", str(out), *extra]
    for o in [*FAST, f"train.epochs={epochs}"]:
        args += ["--set", o]
    return args


def _study(out: Path, name: str = "synthetic/bogc") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'quickstart-tune' / 'optuna.db'}")


def _counted(study) -> list:
    return [t for t in study.get_trials() if not t.user_attrs.get("bogc.excess")]


# ------------------------------------------------------------------ a tune end to end


def test_four_trials_on_the_quickstart_write_run_directories_and_the_best_recipe(capsys, tmp_path):
    code, out, err = run_cli(capsys, *_args(tmp_path, 4))
    assert code == 0, out + err
    study = _study(tmp_path)
    trials = _counted(study)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:  # each an ordinary run directory named after its trial
        run = Path(t.user_attrs["bogc.run_dir"])
        assert run == tmp_path / "quickstart-tune" / "synthetic" / f"bogc-trial{t.number}" / "seed0"
        assert (run / "metrics.jsonl").is_file() and (run / "last.pt").is_file()
        if t.state == TrialState.COMPLETE:  # the objective: the best validation accuracy, never test
            done = json.loads((run / "eval.json").read_text())
            assert t.value == done["val_accuracy"] == max(json.loads(line)["val_accuracy"] for line in
                                                          (run / "metrics.jsonl").read_text().splitlines())
            recipe = load_recipe(run / "recipe.yaml")
            assert recipe.optim.lr == pytest.approx(t.params["optim.lr"])
            assert recipe.method_options()["evidence"] == t.params["method.evidence"]
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    path = tmp_path / "quickstart-tune" / "best" / "synthetic" / "bogc.yaml"
    tuned = load_recipe(path)  # a recipe bogc train takes: the original with the best parameters
    assert tuned.experiment == "quickstart" and tuned.method.name == "bogc" and tuned.method.tag is None
    assert tuned.optim.lr == pytest.approx(best.params["optim.lr"])
    assert tuned.method_options()["w_max"] == pytest.approx(best.params["method.w_max"])
    assert tuned.dataset.model_extra["n_train"] == 128 and tuned.train.epochs == 1
    assert f"validation score {best.value:.4f}" in path.read_text()
    text = " ".join(out.split())
    assert f"best of synthetic/bogc: trial {best.number}, validation score {best.value:.4f}" in text
    assert (path.with_suffix(".trials.csv")).read_text().count("\n") == 5
    # the trials are runs `bogc report` tabulates
    code, out, err = run_cli(capsys, "report", tmp_path / "quickstart-tune")
    assert code == 0, err
    assert f"bogc-trial{best.number}" in out


def test_a_rerun_with_more_trials_adds_only_the_missing_ones(capsys, tmp_path):
    assert run_cli(capsys, *_args(tmp_path, 2, 1, "--pruner", "none"))[0] == 0
    first = {t.number: (t.value, t.datetime_complete) for t in _counted(_study(tmp_path))}
    code, out, err = run_cli(capsys, *_args(tmp_path, 3, 1, "--pruner", "none"))
    assert code == 0, err
    trials = _counted(_study(tmp_path))
    assert len(trials) == 3 and {t.number: (t.value, t.datetime_complete) for t in trials[:2]} == first
    assert run_cli(capsys, *_args(tmp_path, 3, 1, "--pruner", "none"))[0] == 0  # nothing left to run
    assert len(_study(tmp_path).trials) == 3


def test_ctrl_c_mid_trial_then_the_same_command_resumes_that_trial(capsys, monkeypatch, tmp_path):
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGINT, epoch=2, step=2)
        code, out, err = run_cli(capsys, *_args(tmp_path, 2, 2, "--pruner", "none"))
    assert code == 130
    assert "interrupted" in err and "Traceback" not in err
    (cut,) = _study(tmp_path).trials
    assert cut.state == TrialState.FAIL and cut.user_attrs["bogc.interrupted"]
    run = Path(cut.user_attrs["bogc.run_dir"])
    assert not (run / "eval.json").exists()

    code, out, err = run_cli(capsys, *_args(tmp_path, 2, 2, "--pruner", "none"))
    assert code == 0, err
    assert "at epoch 2, step 3" in " ".join(out.split())  # the cut trial's run continues from its checkpoint
    trials = _counted(_study(tmp_path))
    retry = next(t for t in trials if t.user_attrs.get("bogc.retry_of") == 0)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["bogc.slot"] == 0
    assert retry.params == cut.params and Path(retry.user_attrs["bogc.run_dir"]) == run
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert len({t.user_attrs.get("bogc.slot", t.number) for t in trials}) == 2  # still two trials in all


# ------------------------------------------------------------------ through the entry point, in processes


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_trial_then_the_same_command_keeps_the_finished_trials(tmp_path):
    command = [sys.executable, "-m", "bogc_cli", *_args(tmp_path, 3, 3, "--pruner", "none")]
    second = tmp_path / "quickstart-tune" / "synthetic" / "bogc-trial1" / "seed0" / "metrics.jsonl"
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if second.is_file() and second.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)  # in trial 1, after its first epoch
    proc.wait()
    before = {t.number: t for t in _study(tmp_path).trials}
    assert before[0].state == TrialState.COMPLETE and before[1].state == TrialState.RUNNING

    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trial slot 1 was cut short: retrying it" in " ".join(done.stdout.split())
    trials = {t.number: t for t in _study(tmp_path).trials}
    kept = trials[0]  # the finished trial was kept, not rerun
    assert (kept.state, kept.value, kept.datetime_complete) == \
        (TrialState.COMPLETE, before[0].value, before[0].datetime_complete)
    assert trials[1].state == TrialState.FAIL  # the killed one, retried in its own run directory
    retry = next(t for t in trials.values() if t.user_attrs.get("bogc.retry_of") == 1)
    assert retry.state == TrialState.COMPLETE and retry.params == before[1].params
    assert re.search(r"resuming \S+bogc-trial1/seed0 after epoch [12]", done.stdout.replace("\n", ""))
    slots = sorted(t.user_attrs.get("bogc.slot", t.number) for t in trials.values()
                   if t.state == TrialState.COMPLETE)
    assert len(slots) == 3 and slots[:2] == [0, 1]  # three trials: the kept one, the resumed one, a new one
    assert [json.loads(line)["epoch"] for line in second.read_text().splitlines()] == [1, 2, 3]


def test_two_tune_processes_share_one_sqlite_study_without_losing_a_trial(tmp_path):
    command = [sys.executable, "-m", "bogc_cli", *_args(tmp_path, 4, 2, "--pruner", "none")]
    procs = [subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = _counted(_study(tmp_path))
    assert sorted(t.user_attrs.get("bogc.slot", t.number) for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    runs = {t.user_attrs["bogc.run_dir"] for t in trials}
    assert len(runs) == 4 and all((Path(r) / "eval.json").is_file() for r in runs)
    # each trial was trained by exactly one of the two processes
    said = [m.group(1) for out in outputs for m in re.finditer(r"^(trial \d+) of synthetic/bogc: ", out, re.M)]
    assert sorted(said) == [f"trial {t.number}" for t in sorted(trials, key=lambda t: t.number)]


def test_a_sweep_gives_every_method_the_same_trials_and_a_tuned_sweep(capsys, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"experiment: fair\nout: {tmp_path / 'res'}\nseeds: [0, 1]\n"
                     f"set: {{train.epochs: 1, dataset.n_train: 128, dataset.n_val: 64, dataset.n_test: 64, "
                     f"train.batch_size: 32}}\n"
                     f"datasets:\n  synthetic: {{base: {ROOT / 'recipes/quickstart.yaml'}}}\n"
                     "methods: [joint, bogc]\nmissing: null\n")
    code, out, err = run_cli(capsys, "tune", sweep, "--space", ROOT / "recipes/tune", "--trials", "2",
                             "--pruner", "none")
    assert code == 0, out + err
    storage = f"sqlite:///{tmp_path / 'res' / 'fair-tune' / 'optuna.db'}"
    for name in ("synthetic/joint", "synthetic/bogc"):
        study = optuna.load_study(study_name=name, storage=storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, name
    assert set(optuna.load_study(study_name="synthetic/joint", storage=storage).trials[0].params) == \
        {"optim.lr", "optim.weight_decay"}
    tuned = tmp_path / "res" / "fair-tune" / "best" / "sweep.yaml"
    from bogc_cli.sweep.plan import make_plan

    plan = make_plan(tuned)  # bogc reproduce takes it: the same table over the tuned recipes
    assert plan.sweep.experiment == "fair-tuned" and [c.name for c in plan.cells] == \
        ["synthetic/joint/seed0", "synthetic/joint/seed1", "synthetic/bogc/seed0", "synthetic/bogc/seed1"]
    best_lr = max(optuna.load_study(study_name="synthetic/bogc", storage=storage).trials,
                  key=lambda t: t.value).params["optim.lr"]
    assert load_recipe(plan.cells[2].recipe, plan.cells[2].overrides).optim.lr == pytest.approx(best_lr)


# ------------------------------------------------------------------ the shipped spaces, and refusals


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "tune").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_validates_against_its_method(path):
    method = path.stem
    space = load_space(path, ROOT / "recipes/quickstart.yaml", [f"method.name={method}"], method,
                       METHODS[method].Options.model_fields)
    assert "optim.lr" in space.params


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, says", [
    ("params:\n  method.betta: {type: float, low: 0.1, high: 0.5}\n",
     "params.method.betta: bogc has no option 'betta' (did you mean method.beta?)"),
    ("params:\n  optim.lr: {type: float, low: 0.1, high: 0.01}\n", "params.optim.lr: low 0.1 must be below high 0.01"),
    ("params:\n  optim.lr: {type: float, low: 0.0, high: 0.01, log: true}\n", "log: true needs low > 0"),
    ("params:\n  optim.lr: {type: real, low: 0.001, high: 0.01}\n", "params.optim.lr: give type: float, int or categorical"),
    ("params:\n  optim.lr: {type: float, lo: 0.001, high: 0.01}\n", "unknown key 'lo' for type float (did you mean low?)"),
    ("params:\n  method.chunks: {type: int, low: 1, high: 2.5}\n", "params.method.chunks.high: expected an integer, got 2.5"),
    ("params:\n  method.moments: {type: categorical, choices: []}\n", "params.method.moments.choices: expected a list of values"),
    ("params:\n  method.beta: {type: float, low: 0.5, high: 1.5}\n", "the recipe refuses method.beta=1.5"),
    ("params:\n  dataset.n_train: {type: int, low: 64, high: 128}\n", "params.dataset.n_train: not a hyper-parameter"),
    ("method: pmr\nparams:\n  optim.lr: {type: float, low: 0.001, high: 0.01}\n", "method: 'pmr', but the recipe trains 'bogc'"),
    ("params: {}\n", "params: give at least one recipe key to search"),
    ("- optim.lr\n", "must be a mapping"),
])
def test_a_bad_space_file_is_one_message_naming_the_key_and_nothing_is_written(capsys, tmp_path, text, says):
    args = _args(tmp_path / "out", 2)
    args[args.index("--space") + 1] = str(_space(tmp_path, text))
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert says in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url, says", [
    ("postgresql://tuner@127.0.0.1:1/studies", "--storage postgresql://tuner@127.0.0.1:1/studies cannot be opened"),
    ("postgresql://tuner:secret@127.0.0.1:1/studies", "--storage postgresql://tuner:***@127.0.0.1:1/studies cannot"),
    ("not-a-url", "--storage not-a-url cannot be opened"),
])
def test_an_unreachable_or_wrong_storage_is_refused_naming_it(capsys, tmp_path, url, says):
    code, out, err = run_cli(capsys, *_args(tmp_path / "out", 2), "--storage", url)
    assert code == 2
    message = " ".join(err.split())
    assert says in message and "secret" not in message
    assert not (tmp_path / "out" / "quickstart-tune" / "synthetic").exists()


def test_an_unwritable_storage_file_is_refused_naming_it(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    url = f"sqlite:///{blocker}/optuna.db"
    code, out, err = run_cli(capsys, *_args(tmp_path / "out", 2), "--storage", url)
    assert code == 2 and f"--storage {url} cannot be opened" in " ".join(err.split()).replace(" /", "/")


def test_bad_options_are_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, *_args(tmp_path, 2), "--jobs", "2", "--gpus", "0,1")
    assert code == 2 and "--jobs and --gpus both set" in err
    code, _, err = run_cli(capsys, *_args(tmp_path, 2), "--pruner", "hyperband")
    assert code == 2 and "--pruner 'hyperband': valid are median, none" in err
    code, _, err = run_cli(capsys, *_args(tmp_path, 2)[:2], "--space", tmp_path / "none.yaml")
    assert code == 2 and "not found" in err


def test_bogc_help_lists_tune():
    done = subprocess.run([sys.executable, "-m", "bogc_cli", "--help"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and " tune " in done.stdout
