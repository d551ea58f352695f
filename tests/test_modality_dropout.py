"""`train.modality_dropout`: samples lose a modality's input at the asked rate (never all of them), a
model trained so is more robust when that modality is missing, and a stopped run resumes bitwise."""

from __future__ import annotations

import json

import pandas as pd
import torch

from bogc_cli.data.loader import Batch
from bogc_cli.engine.modality_dropout import ModalityDropout
from cli_helpers import run_cli, stopped_and_resumed


def test_inputs_are_zeroed_at_the_asked_rates_and_never_all_at_once():
    dropout = ModalityDropout({"a": 0.3, "b": 0.9}, ["a", "b", "c"], seed=0)
    n = 20_000
    batch = Batch({"a": torch.ones(n, 2), "b": torch.ones(n, 1, 3, 3), "c": torch.ones(n, 4)},
                  torch.zeros(n, dtype=torch.long), torch.arange(n))
    out = dropout(batch)
    lost = {m: (x.flatten(1) == 0).all(1) for m, x in out.inputs.items()}
    assert abs(lost["a"].float().mean() - 0.3) < 0.02 and abs(lost["b"].float().mean() - 0.9) < 0.02
    assert not lost["c"].any()
    assert torch.equal(batch.inputs["a"], torch.ones(n, 2))  # the loader's tensors are left alone
    both = ModalityDropout({"a": 0.9, "b": 0.9}, ["a", "b"], seed=1)(
        Batch({"a": torch.ones(n, 1), "b": torch.ones(n, 1)}, torch.zeros(n, dtype=torch.long), torch.arange(n)))
    assert ((both.inputs["a"] + both.inputs["b"]) > 0).all()


FAST = ["--set", "train.epochs=4", "--set", "dataset.n_train=800", "--set", "dataset.n_val=200",
        "--set", "dataset.n_test=400", "--set", "model.fill=zero-input"]


def test_training_with_audio_dropout_makes_the_model_robust_to_missing_audio(capsys, tmp_path):
    accuracy = {}
    for name, extra in (("plain", []), ("dropout", ["--set", "train.modality_dropout={audio: 0.5}"])):
        code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path / name, *FAST, *extra)
        assert code == 0, out + err
        run = next((tmp_path / name).rglob("eval.json")).parent
        assert run_cli(capsys, "missing-modality", run, "--modalities", "audio", "--rates", "0,1")[0] == 0
        df = pd.read_csv(run / "missing_modality.csv")
        accuracy[name] = {r: float(df[(df.missing == "audio") & (df.rate == r)].accuracy.iloc[0]) for r in (0, 1)}
        recipe = (run / "recipe.yaml").read_text()
        assert ("audio: 0.5" in recipe) == (name == "dropout")
    # audio is the strongest synthetic modality: without it the plain model collapses, the other copes
    assert accuracy["dropout"][1] > accuracy["plain"][1] + 0.08, accuracy  # measured: 0.47 -> 0.63
    assert accuracy["dropout"][0] > 0.8, accuracy


def test_a_run_with_modality_dropout_stopped_mid_epoch_resumes_bitwise(capsys, tmp_path, monkeypatch, reliability):
    args = ["train", "recipes/quickstart.yaml", "--set", "train.epochs=3", "--set", "dataset.n_train=160",
            "--set", "dataset.n_val=48", "--set", "dataset.n_test=48", "--set", "train.batch_size=32",
            "--set", "train.modality_dropout={audio: 0.4, image: 0.2}"]
    stopped_and_resumed(capsys, monkeypatch, tmp_path, args, step=2)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")
    assert json.loads(next((tmp_path / "cut").rglob("eval.json")).read_text())["accuracy"] > 0
