"""`bogc train --resume`: an interrupted run continues from its last checkpoint and ends bitwise equal to an
uninterrupted one (CPU); a damaged checkpoint is detected by its checksum and the one before it used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli, run_results

FAST = ["--set", "train.epochs=4", "--set", "dataset.n_train=192", "--set", "dataset.n_val=64",
        "--set", "dataset.n_test=64", "--set", "train.batch_size=32"]


def _train(capsys, out: Path, method: str, *extra: str):
    """Run `bogc train`; output with rich's line wrapping undone."""
    code, stdout, stderr = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", out,
                                   "--set", f"method.name={method}", *FAST, *extra)
    return code, " ".join(stdout.split()), " ".join(stderr.split())


def _run_dir(out: Path, method: str) -> Path:
    return out / "quickstart" / "synthetic" / method / "seed0"


def _interrupt_in_epoch(monkeypatch, epoch: int, step: int) -> None:
    """Stop training the way a kill would: at batch ``step`` of ``epoch``, nothing more written."""
    from bogc_cli.engine import trainer

    real = trainer._train_epoch

    def dying_epoch(method, model, loader, device, current, *args, **kwargs):
        if current != epoch:
            return real(method, model, loader, device, current, *args, **kwargs)

        def batches():
            for i, batch in enumerate(loader, start=1):
                if i == step:
                    raise KeyboardInterrupt
                yield batch

        return real(method, model, batches(), device, current, *args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", dying_epoch)


RULE_ON = {"opm": ["--set", "method.warmup_epochs=1"]}  # its masks are drawn in the interrupted epoch too
METHODS = ["joint", "bogc", "opm", "pmr", "agm"]


@pytest.mark.parametrize("method, workers", [pytest.param(m, 0, id=m) for m in METHODS] + [
    pytest.param(m, 2, id=f"{m}-workers", marks=() if m == "pmr" else pytest.mark.slow) for m in METHODS])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(capsys, tmp_path, monkeypatch, method, workers,
                                                            reliability):
    """With workers, the interrupted and resumed runs use 2 DataLoader workers, the uninterrupted one none."""
    assert _train(capsys, tmp_path / "straight", method, *RULE_ON.get(method, []))[0] == 0
    expected = run_results(_run_dir(tmp_path / "straight", method))

    with_workers = ("--set", f"train.num_workers={workers}")
    with monkeypatch.context() as patch:
        _interrupt_in_epoch(patch, epoch=3, step=2)
        code, out, err = _train(capsys, tmp_path / "cut", method, *RULE_ON.get(method, []), *with_workers)
    assert code == 130, out + err
    run = _run_dir(tmp_path / "cut", method)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 2 and not (run / "eval.json").exists()

    # without --resume: refused, nothing lost
    code, out, err = _train(capsys, tmp_path / "cut", method, *RULE_ON.get(method, []), *with_workers)
    assert code == 2 and "--resume" in err
    code, out, err = _train(capsys, tmp_path / "cut", method, *RULE_ON.get(method, []), "--resume", *with_workers)
    assert code == 0, out + err
    assert "resuming" in out and "after epoch 2" in out
    records, ev, model = run_results(run)
    assert records == expected[0]
    assert ev == expected[1]
    assert model.keys() == expected[2].keys()
    assert all(torch.equal(model[k], expected[2][k]) for k in model)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(capsys, tmp_path, monkeypatch, reliability):
    assert _train(capsys, tmp_path / "straight", "joint")[0] == 0
    expected = run_results(_run_dir(tmp_path / "straight", "joint"))
    with monkeypatch.context() as patch:
        _interrupt_in_epoch(patch, epoch=4, step=1)
        assert _train(capsys, tmp_path / "cut", "joint")[0] == 130
    run = _run_dir(tmp_path / "cut", "joint")
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a disk that filled up mid-write
    code, out, err = _train(capsys, tmp_path / "cut", "joint", "--resume")
    assert code == 0, out + err
    assert "checksum mismatch" in out and "after epoch 2" in out
    records, ev, _ = run_results(run)
    assert records == expected[0] and ev == expected[1]
    reliability("damaged checkpoints detected by checksum (the previous one used)")
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")


def test_resume_refuses_another_recipe_and_keeps_a_finished_run(capsys, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _interrupt_in_epoch(patch, epoch=2, step=1)
        assert _train(capsys, tmp_path, "joint")[0] == 130
    code, _, err = _train(capsys, tmp_path, "joint", "--resume", "--set", "optim.lr=0.01")
    assert code == 2 and "optim.lr" in err and "--overwrite" in err
    assert _train(capsys, tmp_path, "joint", "--resume")[0] == 0
    eval_json = (_run_dir(tmp_path, "joint") / "eval.json").read_bytes()
    code, out, _ = _train(capsys, tmp_path, "joint", "--resume")
    assert code == 0 and "already finished" in out
    assert (_run_dir(tmp_path, "joint") / "eval.json").read_bytes() == eval_json
    code, _, err = _train(capsys, tmp_path, "joint", "--resume", "--overwrite")
    assert code == 2 and "choose one" in err
