"""Experiment trackers (output.trackers): what a short real run writes to TensorBoard, MLflow and W&B, read
back with each tool's own reader; a resumed run continues the same tracker run without repeating a step;
a tracker that is not installed, or a store that cannot be opened, is one message and exit 2 before
anything is written; a run without trackers never imports their packages."""

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
from rich.console import Console

from bogc_cli.engine.callbacks import Callback
from bogc_cli.engine.run_lock import claim_run_dir
from bogc_cli.engine.trainer import train_run
from bogc_cli.recipe import load_recipe
from cli_helpers import run_cli

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["dataset.n_train=192", "dataset.n_val=64", "dataset.n_test=64", "train.batch_size=32", "method.name=bogc"]
STEPS = 6  # 192 rows / 32


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """W&B never reaches the network here; MLflow's store is the run's own unless a test says otherwise."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _overrides(out: Path, epochs: int, trackers: str, every: int = 2) -> list[str]:
    return [f"output.dir={out}", *FAST, f"train.epochs={epochs}", f"output.trackers=[{trackers}]",
            f"output.log_every_n_steps={every}"]


def _recipe(out: Path, epochs: int, trackers: str, every: int = 2):
    return load_recipe(ROOT / "recipes/quickstart.yaml", _overrides(out, epochs, trackers, every)).for_seed(0)


def _run_dir(out: Path) -> Path:
    return out / "quickstart" / "synthetic" / "bogc" / "seed0"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _mlflow(out: Path, run: Path):
    client = MlflowClient(f"sqlite:///{out / 'quickstart' / 'mlflow.db'}")
    return client, json.loads((run / "mlflow.json").read_text())["run_id"]


# ------------------------------------------------------------------ what each tracker writes


def test_tensorboard_has_every_epoch_figure_the_step_values_the_test_figures_and_the_figures(tmp_path):
    result = train_run(_recipe(tmp_path, 1, "tensorboard"), Console(quiet=True))
    run = result.run_dir
    acc = _events(run)
    (record,) = _records(run)
    scalars = set(acc.Tags()["scalars"])
    # each epoch's metrics.jsonl figures, the method's coefficients among them, at the epoch's last step
    for key, value in record.items():
        (event,) = acc.Scalars(f"epoch/{key}")
        assert event.step == STEPS and event.value == pytest.approx(value, rel=1e-6), key
    assert any(t.startswith("epoch/method.bogc.weight_mean.") for t in scalars)
    # every 2nd step: the loss and the method's per-step values
    assert [e.step for e in acc.Scalars("step/train_loss")] == [2, 4, 6]
    assert [e.step for e in acc.Scalars("step/method.bogc.weight_mean.audio")] == [2, 4, 6]
    steps_mean = sum(e.value for e in acc.Scalars("step/train_loss")) / 3
    assert abs(steps_mean - record["train_loss"]) < 0.5 * record["train_loss"]  # the same loss, sampled
    # eval.json's test figures, and the figure the run wrote (BOGC's diagnostics)
    test = json.loads((run / "eval.json").read_text())
    assert acc.Scalars("test/accuracy")[0].value == pytest.approx(test["accuracy"])
    assert acc.Scalars("test/unimodal_accuracy.audio")[0].value == pytest.approx(test["unimodal_accuracy"]["audio"])
    (image,) = acc.Images("figures/bogc_diagnostics")
    assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"


def test_mlflow_has_the_recipe_as_parameters_the_epochs_and_the_artifacts_in_a_local_store(tmp_path):
    result = train_run(_recipe(tmp_path, 2, "mlflow"), Console(quiet=True))
    run = result.run_dir
    assert (tmp_path / "quickstart" / "mlflow.db").is_file()  # the local SQLite store of the experiment
    client, run_id = _mlflow(tmp_path, run)
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "synthetic/bogc/seed0"
    assert client.get_experiment(found.info.experiment_id).name == "quickstart"
    params = found.data.params
    assert params["optim.lr"] == "0.002" and params["method.name"] == "bogc" and params["train.epochs"] == "2"
    assert params["output.trackers"] == '["mlflow"]' and params["model.cnn_channels"] == "[16, 32, 64]"
    records = _records(run)
    for key in ("train_loss", "val_accuracy", "lr", "method.bogc.weight_mean.audio"):
        history = client.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r[key])) for r in records], key
    test = json.loads((run / "eval.json").read_text())
    assert found.data.metrics["test.accuracy"] == pytest.approx(test["accuracy"])
    assert {a.path for a in client.list_artifacts(run_id)} >= {"eval.json", "recipe.yaml", "metrics.jsonl", "figures"}
    # every figure of the run directory: BOGC's diagnostics and the reliability diagram of the test predictions
    assert sorted(a.path for a in client.list_artifacts(run_id, "figures")) == \
        ["figures/bogc_diagnostics.png", "figures/reliability.png"]
    local = Path(client.download_artifacts(run_id, "eval.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == test


def test_mlflow_tracking_uri_from_the_environment_is_used_as_the_default_store_is(monkeypatch, tmp_path):
    store = tmp_path / "elsewhere" / "shared.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path / "elsewhere")  # nothing may land in the folder bogc runs from
    run = train_run(_recipe(tmp_path / "out", 1, "mlflow", every=0), Console(quiet=True)).run_dir
    assert not (tmp_path / "out" / "quickstart" / "mlflow.db").exists()
    saved = json.loads((run / "mlflow.json").read_text())
    assert saved["tracking_uri"] == f"sqlite:///{store}"
    found = MlflowClient(f"sqlite:///{store}").get_run(saved["run_id"])
    assert found.info.status == "FINISHED" and found.data.metrics["val_accuracy"] == _records(run)[0]["val_accuracy"]
    assert found.info.artifact_uri.startswith((tmp_path / "elsewhere" / "mlartifacts").as_uri())
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["mlartifacts", "shared.db"]


def test_wandb_writes_an_offline_run_in_the_run_directory(tmp_path):
    run = train_run(_recipe(tmp_path, 1, "wandb"), Console(quiet=True)).run_dir
    saved = json.loads((run / "wandb.json").read_text())
    assert saved["mode"] == "offline" and saved["project"] == "bogc"
    (folder,) = (run / "wandb").glob("offline-run-*")
    assert folder.name.endswith(saved["run_id"])
    log = folder / f"run-{saved['run_id']}.wandb"
    assert log.is_file() and log.stat().st_size > 1000
    assert list((folder / "files" / "media" / "images" / "figures").glob("bogc_diagnostics*.png"))


# ------------------------------------------------------------------ a resumed run repeats no step


class _CrashAt(Callback):
    """Fails the run after step ``step`` of epoch ``epoch`` has been logged by the trackers before it, as a
    crash would: last.pt then holds the epoch before, and the steps logged after it are redone on resume."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)

    def on_step(self, epoch, step, loss, logs):
        if (epoch, step) == self.at:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_continues_the_same_tracker_runs_without_repeating_a_step(tmp_path):
    straight = train_run(_recipe(tmp_path / "straight", 3, "tensorboard,mlflow,wandb", every=1), Console(quiet=True))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(_recipe(tmp_path / "cut", 3, "tensorboard,mlflow,wandb", every=1), Console(quiet=True),
                  callbacks=[_CrashAt(epoch=2, step=3)])
    run = _run_dir(tmp_path / "cut")
    first_ids = {name: json.loads((run / name).read_text())["run_id"] for name in ("mlflow.json", "wandb.json")}
    client, run_id = _mlflow(tmp_path / "cut", run)
    assert client.get_run(run_id).info.status == "FAILED"
    # the crashed session wrote steps 7..9 of epoch 2, which last.pt (epoch 1) does not hold
    (first_file,) = (run / "tensorboard").iterdir()
    written = [e.step for e in EventFileLoader(str(first_file)).Load()
               if e.HasField("summary") and e.summary.value[0].tag == "step/train_loss"]
    assert written == list(range(1, 10))

    train_run(_recipe(tmp_path / "cut", 3, "tensorboard,mlflow,wandb", every=1), Console(quiet=True), resume=True)
    # the same tracker runs continue
    assert {name: json.loads((run / name).read_text())["run_id"] for name in first_ids} == first_ids
    assert len(list((run / "tensorboard").iterdir())) == 2  # one event file per session, in one folder
    # TensorBoard: every step once, with the value of an uninterrupted run (training resumes bitwise)
    got, expected = _events(run), _events(straight.run_dir)
    assert set(got.Tags()["scalars"]) == set(expected.Tags()["scalars"])
    for tag in ("step/train_loss", "step/method.bogc.weight_mean.image", "epoch/val_accuracy", "epoch/train_loss"):
        steps = [e.step for e in got.Scalars(tag)]
        assert steps == sorted(set(steps)), tag
        assert [(e.step, e.value) for e in got.Scalars(tag)] == [(e.step, e.value) for e in expected.Scalars(tag)], tag
    assert [e.step for e in got.Scalars("step/train_loss")] == list(range(1, 3 * STEPS + 1))
    # MLflow: one run, each epoch once
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3]
    assert len(client.search_runs([found.info.experiment_id])) == 1
    # W&B: the same run id, a second offline session of it
    assert len(list((run / "wandb").glob(f"offline-run-*-{first_ids['wandb.json']}"))) == 2


def test_a_tracker_added_on_resume_gets_the_epochs_before_it(tmp_path):
    class StopAfterOne(Callback):
        def on_epoch_end(self, epoch, record):
            return "enough" if epoch == 1 else None

    from bogc_cli.engine.callbacks import RunStopped

    with pytest.raises(RunStopped):
        train_run(_recipe(tmp_path, 2, "", every=0), Console(quiet=True), callbacks=[StopAfterOne()])
    run = train_run(_recipe(tmp_path, 2, "tensorboard,mlflow", every=0), Console(quiet=True), resume=True).run_dir
    records = _records(run)
    assert [(e.step, e.value) for e in _events(run).Scalars("epoch/val_accuracy")] == \
        [(STEPS, pytest.approx(records[0]["val_accuracy"])), (2 * STEPS, pytest.approx(records[1]["val_accuracy"]))]
    client, run_id = _mlflow(tmp_path, run)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]


def test_overwrite_removes_the_tracker_files_with_the_results(tmp_path):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    (run / "mlflow.json").write_text("{}")
    (run / "wandb.json").write_text("{}")
    with claim_run_dir(run, overwrite=True):
        assert sorted(p.name for p in run.iterdir()) == [".lock"]


# ------------------------------------------------------------------ refusals, through the CLI


def _train_args(out: Path, trackers: str) -> list[str]:
    args = ["train", str(ROOT / "recipes/quickstart.yaml"), "--out", str(out)]
    for o in [*FAST, "train.epochs=1", f"output.trackers=[{trackers}]"]:
        args += ["--set", o]
    return args


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    code, out, err = run_cli(capsys, *_train_args(tmp_path / "out", "tensorboard,mlflow"))
    assert code == 2
    message = " ".join(err.split())
    assert "output.trackers: mlflow is not installed" in message and 'pip install -e ".[track]"' in message
    assert not (tmp_path / "out").exists()


def test_a_missing_tracker_through_the_entry_point_in_a_subprocess(tmp_path):
    program = ("import sys; sys.modules['wandb'] = None; from bogc_cli.cli import main; "
               f"sys.argv = ['bogc', *{_train_args(tmp_path / 'out', 'wandb')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "wandb is not installed" in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_mlflow_store_that_cannot_be_opened_is_refused_before_anything_is_written(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"  # its folder would be inside a file
    code, out, err = run_cli(capsys, *_train_args(tmp_path / "out", "mlflow"), "--set", f"output.mlflow_uri={uri}")
    assert code == 2
    assert f"MLflow tracking URI {uri} cannot be used" in " ".join(err.split()).replace(" /", "/")
    assert not _run_dir(tmp_path / "out").exists()


def test_train_without_trackers_never_imports_their_packages(tmp_path):
    """`bogc train` starts as fast as before: tensorboard, mlflow, wandb and optuna stay unloaded."""
    heavy = ("tensorboard", "mlflow", "wandb", "optuna", "torch.utils.tensorboard")
    program = ("import atexit, sys; from bogc_cli.cli import main; "
               f"atexit.register(lambda: print('LOADED', [m for m in {heavy!r} if m in sys.modules])); "
               f"sys.argv = ['bogc', *{_train_args(tmp_path / 'out', '')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert (_run_dir(tmp_path / "out") / "eval.json").is_file()


# ------------------------------------------------------------------ a real kill, through the entry point


def test_sigkill_mid_run_then_resume_through_the_entry_point_repeats_no_tracker_step(tmp_path):
    """`bogc train` with TensorBoard and MLflow killed (SIGKILL) after its first epoch, then `bogc train
    --resume`: every epoch once in both, the steps after the checkpoint each once (the killed session's
    unflushed step events may be lost, never doubled)."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bogc_cli", *_train_args(out, "tensorboard,mlflow"), "--set", "output.log_every_n_steps=1"]
    args[args.index("train.epochs=1")] = "train.epochs=4"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = _run_dir(out)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "eval.json").exists()
    done = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed_after = int(re.search(r"after epoch (\d+)", " ".join(done.stdout.split())).group(1))
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    acc = _events(run)
    assert [(e.step, e.value) for e in acc.Scalars("epoch/val_accuracy")] == \
        [(r["epoch"] * STEPS, pytest.approx(r["val_accuracy"])) for r in records]
    steps = [e.step for e in acc.Scalars("step/train_loss")]
    assert steps == sorted(set(steps)) and steps[-(4 - resumed_after) * STEPS:] == \
        list(range(resumed_after * STEPS + 1, 4 * STEPS + 1))
    client, run_id = _mlflow(out, run)
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_wandb_session_never_reuses_the_folder_of_a_session_begun_in_the_same_second(tmp_path):
    """wandb names offline session folders by the second; a resume in that second would overwrite the log."""
    from datetime import datetime

    from bogc_cli.tracking.wandb_tracker import _wait_for_a_new_session_folder

    for _ in range(3):
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        (tmp_path / f"offline-run-{stamp}-abc").mkdir()
        _wait_for_a_new_session_folder(tmp_path, "abc")
        assert datetime.now().strftime("%Y%m%d_%H%M%S") != stamp
        _wait_for_a_new_session_folder(tmp_path, "other")  # another run's folder does not hold it up
