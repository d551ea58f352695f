"""Numerical faults: a step whose loss or gradient is NaN/inf is skipped and counted; too many in a row stop
the run with a message, keeping the checkpoint from before the fault."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bogc_cli.fusion.base import Method
from cli_helpers import run_cli


def _arrays(root: Path, seed: int = 0) -> Path:
    """A clean two-modality arrays folder (vector + image, so BatchNorm is in the model)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 256), ("test", 64)):
        labels = rng.integers(0, 3, n)
        vec = rng.normal(size=(n, 8)).astype(np.float32) + labels[:, None]
        img = rng.normal(size=(n, 1, 8, 8)).astype(np.float32) + labels[:, None, None, None]
        (root / split).mkdir(parents=True)
        np.save(root / split / "vec.npy", vec)
        np.save(root / split / "img.npy", img)
        np.save(root / split / "labels.npy", labels)
    return root


def _poison_batches(monkeypatch, bad, reliability) -> None:
    """Train batches number ``bad(i)`` (counting from 0 over the run) arrive with a NaN input value,
    as from a corrupt sample (the arrays reader itself refuses NaN files)."""
    from bogc_cli.engine import trainer

    real = trainer.to_device
    count = [0]

    def to_device(raw, device):
        batch = real(raw, device)
        if bad(count[0]):
            batch.inputs["img"][0, 0, 0, 0] = float("nan")  # into the BatchNorm CNN
            reliability("non-finite batches injected into training")
        count[0] += 1
        return batch

    monkeypatch.setattr(trainer, "to_device", to_device)


def _train(capsys, data: Path, out: Path, *extra: str):
    return run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out, "--set", "dataset.name=arrays",
                   "--set", f"dataset.root={data}", "--set", "train.batch_size=32",
                   "--set", "train.epochs=3", *extra)


def test_nan_batches_are_skipped_counted_and_do_not_poison_the_model(capsys, tmp_path, monkeypatch, reliability):
    data = _arrays(tmp_path / "data")
    _poison_batches(monkeypatch, lambda i: i % 8 in (2, 5), reliability)  # 8 train batches an epoch: 2 bad each
    code, out, err = _train(capsys, data, tmp_path / "r")
    assert code == 0, out + err
    run = next((tmp_path / "r").rglob("eval.json")).parent
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_steps"] for r in records] == [2, 2, 2]
    assert all(r["steps"] == 8 for r in records)
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert "update skipped" in out
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())  # BN stats included
    result = json.loads((run / "eval.json").read_text())
    assert result["accuracy"] > 0.5  # still learnt from the clean batches


def test_many_bad_steps_in_a_row_stop_the_run_keeping_the_last_good_checkpoint(capsys, tmp_path, monkeypatch,
                                                                              reliability):
    data = _arrays(tmp_path / "data")
    reliability("runs whose weights were turned NaN mid-training (stopped, last good checkpoint kept)")
    original = Method.on_epoch_start

    def poison_at_epoch_2(self, epoch):
        original(self, epoch)
        if epoch == 2:  # a weight turns NaN: every later step fails
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Method, "on_epoch_start", poison_at_epoch_2)
    code, out, err = _train(capsys, data, tmp_path / "r", "--max-bad-steps", "4")
    assert code == 2 and "Traceback" not in err
    assert "diverged: 4 steps in a row" in err and "epoch 2, step 4" in err and "holds epoch 1" in err
    run = next((tmp_path / "r").rglob("last.pt")).parent
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert not (run / "eval.json").exists()


def test_a_fault_in_the_first_epoch_says_no_checkpoint_exists(capsys, tmp_path, monkeypatch, reliability):
    data = _arrays(tmp_path / "data")
    _poison_batches(monkeypatch, lambda i: i >= 3, reliability)
    code, _, err = _train(capsys, data, tmp_path / "r", "--max-bad-steps", "2")
    assert code == 2 and "no checkpoint was written" in err


# methods whose epoch start acts, set to act within the run: a NaN batch then meets a re-sampled epoch (smv), a
# rectification after a boosting epoch (reconboost) and a re-initialisation (relearning, at the start of epoch 3)
ACTING_EARLY = {"smv": ["--set", "method.warmup_epochs=1"],
                "reconboost": ["--set", "method.epochs_per_stage=1", "--set", "method.correct_epoch=1"],
                "relearning": ["--set", "method.reinit_epoch=1", "--set", "train.epochs=3"]}


def test_every_method_survives_nan_batches(capsys, tmp_path, monkeypatch, reliability):
    """The skip must also keep each method's own state (EMA moments, prototypes, running means) finite."""
    from bogc_cli.fusion import METHOD_MODULES

    data = _arrays(tmp_path / "data")
    _poison_batches(monkeypatch, lambda i: i % 8 == 3, reliability)
    failed = {}
    for name in METHOD_MODULES:
        extra = ["--set", f"method.name={name}", "--set", "train.epochs=2", "--set", "experiment=" + name]
        if name == "unimodal":
            extra += ["--set", "method.modality=img"]
        extra += ACTING_EARLY.get(name, [])
        if name == "umt":  # its teacher: a unimodal run of img on the same data, trained with the same poisoned batches
            teacher = ["--set", "method.name=unimodal", "--set", "method.modality=img", "--set", "train.epochs=1"]
            assert _train(capsys, data, tmp_path / "teacher", *teacher)[0] == 0
            extra += ["--set", f"method.teachers.img={next((tmp_path / 'teacher').rglob('eval.json')).parent}"]
        code, out, err = _train(capsys, data, tmp_path / "r", *extra)
        if code != 0:
            failed[name] = (out + err)[-300:]
            continue
        result = json.loads(next((tmp_path / "r" / name).rglob("eval.json")).read_text())
        if not np.isfinite(result["accuracy"]) or result["accuracy"] < 0.4:
            failed[name] = f"accuracy {result['accuracy']}"
    assert not failed, failed
