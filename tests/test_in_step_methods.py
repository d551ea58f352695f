"""The in-step methods of issue 20 (lfm, dimml, mmcosine, cml, mbsd, greedy, amco) through the real entry point,
their prediction rule restored at `bogc eval`, and a Ctrl-C resume in the states the shared graceful-stop test does not
reach (DI-MML's chosen dimensions and stage 2, LFM's learned weight, greedy's random curation)."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch

from cli_helpers import run_bogc, run_cli, run_results, signal_during_step

IN_STEP = ["lfm", "dimml", "mmcosine", "cml", "mbsd", "greedy", "amco"]
SMALL = ["--set", "dataset.n_train=192", "--set", "dataset.n_val=48", "--set", "dataset.n_test=48",
         "--set", "train.batch_size=32"]


# in-process for each (the CLI as CliRunner drives it); the installed console script in a new process, where a
# fresh install's `import click` fails, for greedy (the method that changes the model most) and, under -m slow,
# for the others
ENTRY = [pytest.param(m, False, id=m) for m in IN_STEP] + [
    pytest.param(m, True, id=f"{m}-process", marks=() if m == "greedy" else pytest.mark.slow) for m in IN_STEP]


@pytest.mark.parametrize("method, new_process", ENTRY)
def test_cli_trains_one_epoch_and_eval_predicts_with_the_methods_rule(method, new_process, tmp_path, capsys):
    args = ["train", "recipes/quickstart.yaml", "--set", f"method.name={method}", "--set", "train.epochs=1", *SMALL,
            "--out", str(tmp_path)]
    if new_process:
        done = run_bogc(*args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    else:
        code, out, err = run_cli(capsys, *args)
        assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / method / "seed0"
    trained = json.loads((run / "eval.json").read_text())
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["bad_steps"] == 0 and record["steps"] == 6
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, out + err
    again = json.loads((run / "eval.json").read_text())
    assert again["accuracy"] == pytest.approx(trained["accuracy"])  # the same model and prediction rule at eval
    assert set(again["unimodal_accuracy"]) == {"audio", "image", "vector"}


def _train(capsys, out, method, *extra):
    args = ["--set", f"method.name={method}", "--set", "train.epochs=2", "--set", "dataset.n_train=160",
            "--set", "dataset.n_val=48", "--set", "dataset.n_test=48", "--set", "train.batch_size=32", *extra]
    return run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out, *args)


# each run 2 epochs; the stopped one at step 3 of the second
@pytest.mark.parametrize("method, extra", [
    ("dimml", ["--set", "method.contrast_start_epoch=0", "--set", "method.stage1_epochs=1"]),  # in stage 2
    ("greedy", ["--set", "method.epsilon=0", "--set", "method.start_epoch=1"]),  # curating from the start
    pytest.param("dimml", ["--set", "method.contrast_start_epoch=0", "--set", "method.stage1_epochs=2"],
                 marks=pytest.mark.slow),  # contrasting, still in stage 1
    pytest.param("lfm", ["--set", "method.weighting=learned"], marks=pytest.mark.slow),
    pytest.param("greedy", ["--set", "method.selection=random"], marks=pytest.mark.slow),
])
def test_resume_after_ctrl_c_is_bitwise_in_the_methods_later_states(capsys, tmp_path, monkeypatch, method, extra):
    assert _train(capsys, tmp_path / "straight", method, *extra)[0] == 0
    expected = run_results(tmp_path / "straight")
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGINT, epoch=2, step=3)
        code, out, err = _train(capsys, tmp_path / "cut", method, *extra)
    assert code == 130, out + err
    state = torch.load(next((tmp_path / "cut").rglob("last.pt")), weights_only=False)["method"]
    if method == "dimml":
        stage2 = "method.stage1_epochs=1" in extra
        assert state["masks"] is not None and (state["stage2_optimizer"] is not None) == stage2
    code, out, err = _train(capsys, tmp_path / "cut", method, *extra, "--resume")
    assert code == 0, out + err
    records, ev, model = run_results(tmp_path / "cut")
    assert records == expected[0] and ev == expected[1]
    assert all(torch.equal(model[k], expected[2][k]) for k in model)


@pytest.mark.parametrize("method, extra", [
    ("dimml", ["--set", "method.contrast_start_epoch=0", "--set", "method.stage1_epochs=1"]),  # contrast, stage 2
    ("greedy", ["--set", "method.epsilon=0", "--set", "method.start_epoch=1"]),  # curating throughout
    ("lfm", ["--set", "method.weighting=learned"]),
])
def test_nan_batches_are_skipped_in_the_methods_later_states(capsys, tmp_path, monkeypatch, method, extra,
                                                             reliability):
    from test_nonfinite_steps import _arrays, _poison_batches, _train as train_arrays

    data = _arrays(tmp_path / "data")
    _poison_batches(monkeypatch, lambda i: i % 8 in (2, 5), reliability)  # two bad batches of 8 each epoch
    code, out, err = train_arrays(capsys, data, tmp_path / "r", "--set", f"method.name={method}",
                                  "--set", "train.epochs=2", *extra)
    assert code == 0, out + err
    run = next((tmp_path / "r").rglob("eval.json")).parent
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_steps"] for r in records] == [2, 2]
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert _finite(state["method"])  # greedy's accumulated ratios, LFM's weight, DI-MML's stage-2 optimiser
    assert json.loads((run / "eval.json").read_text())["accuracy"] > 0.4


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if torch.is_tensor(value) and value.is_floating_point():
        return bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    return True
