"""G-Blending: weights from given losses, from single-head estimation runs, and the held-out part of
train it measures on."""

import json

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import ModalitySpec, SplitArrays
from bogc_cli.data.loader import make_loader
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.gblending import GBlending, GBlendingOptions, blend_weights, head_inputs
from bogc_cli.models.build import build_model
from bogc_cli.models.multimodal import FUSED
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli


def test_weights_from_given_losses_by_hand():
    # G = V_end - V_start, O = (V_end - T_end) - (V_start - T_start), w ~ |G| / O^2
    w, g, o = blend_weights({"a": 2.0, "b": 2.0}, {"a": 2.1, "b": 2.2}, {"a": 1.0, "b": 1.5}, {"a": 1.5, "b": 2.0})
    assert g == pytest.approx({"a": -0.6, "b": -0.2})
    assert o == pytest.approx({"a": 0.4, "b": 0.3})
    ra, rb = 0.6 / 0.4 ** 2, 0.2 / 0.3 ** 2
    assert w == pytest.approx({"a": ra / (ra + rb), "b": rb / (ra + rb)})


def test_a_head_whose_held_out_loss_rose_keeps_a_positive_weight():
    # head b's held-out loss rose by 0.5: the reference's abs(G) gives it 0.5 / O^2, not 0
    w, g, o = blend_weights({"a": 2.0, "b": 2.0}, {"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 1.0}, {"a": 1.5, "b": 2.5})
    assert g == pytest.approx({"a": -0.5, "b": 0.5}) and o == pytest.approx({"a": 0.5, "b": 1.5})
    ra, rb = 0.5 / 0.5 ** 2, 0.5 / 1.5 ** 2
    assert w == pytest.approx({"a": ra / (ra + rb), "b": rb / (ra + rb)}) and w["b"] > 0
    w, g, _ = blend_weights({"a": 1.0}, {"a": 1.0}, {"a": 0.5}, {"a": 1.0})  # no change at all: keep the old weights
    assert w is None and g["a"] == 0


def test_no_overfitting_change_is_floored_not_infinite():
    w, _, o = blend_weights({"a": 2.0, "b": 2.0}, {"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 1.0},
                            {"a": 1.0, "b": 1.5}, eps=1e-6)
    assert o["a"] == 0.0 and w["a"] == pytest.approx(1.0, abs=1e-4)


def test_single_head_estimation_needs_two_epochs_per_super_epoch(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=gblending",
                             "--set", "method.super_epoch=1", "--out", tmp_path)
    assert code == 2 and "method.super_epoch must be at least 2" in out + err
    assert not any(tmp_path.iterdir())
    assert GBlending.check_config(GBlendingOptions(super_epoch=1, estimate="joint"), None) is None


# ------------------------------------------------------------------ single-head estimation runs
SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def split(n: int, seed: int, b_scale: float = 1.0) -> SplitArrays:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    a = rng.normal(size=(n, 6)).astype(np.float32) + labels[:, None].astype(np.float32)
    b = (rng.normal(size=(n, 5)) * b_scale).astype(np.float32)
    return SplitArrays({"a": a, "b": b}, labels)


def make_method(train: SplitArrays, holdout: SplitArrays, **options) -> GBlending:
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3)
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      holdout=make_loader(holdout, 64, shuffle=False), train_eval=make_loader(train, 64, shuffle=False),
                      batch_size=16)
    return GBlending(GBlendingOptions(**options), model, ctx)


def test_head_inputs_zero_every_other_modality():
    x = {"a": torch.ones(2, 3), "b": torch.full((2, 4), 2.0)}
    assert head_inputs(x, FUSED) is x
    only_a = head_inputs(x, "a")
    assert torch.equal(only_a["a"], x["a"]) and torch.equal(only_a["b"], torch.zeros(2, 4))


def test_weights_come_from_each_heads_estimation_run_first_and_last_epoch(monkeypatch):
    method = make_method(split(64, 0), split(32, 1), super_epoch=3)
    # (L^T after each of the 3 epochs, L^V after each): start = epoch 1, end = epoch 3
    runs = {FUSED: ([1.0, 0.6, 0.5], [1.1, 0.9, 0.8]),   # G = -0.3, O = 0.3 - 0.1 = 0.2
            "a": ([1.2, 1.0, 0.7], [1.3, 1.2, 1.0]),     # G = -0.3, O = 0.3 - 0.1 = 0.2
            "b": ([1.1, 1.0, 0.9], [1.0, 1.1, 1.2])}     # G = +0.2 (rose), O = 0.3 - (-0.1) = 0.4
    calls = []

    def fake_run(head, epoch):
        calls.append((head, epoch))
        return runs[head]

    monkeypatch.setattr(method, "estimation_run", fake_run)
    method.on_epoch_start(1)  # the first super-epoch is estimated too
    raw = {FUSED: 0.3 / 0.2 ** 2, "a": 0.3 / 0.2 ** 2, "b": 0.2 / 0.4 ** 2}
    z = sum(raw.values())
    assert method.weights == pytest.approx({k: v / z for k, v in raw.items()})
    logs = method.on_epoch_end(1)
    assert logs["method.gblend.G.b"] == pytest.approx(0.2) and logs["method.gblend.O.b"] == pytest.approx(0.4)
    assert calls == [(FUSED, 1), ("a", 1), ("b", 1)]
    method.on_epoch_start(2)
    method.on_epoch_start(3)
    assert len(calls) == 3  # super-epochs start at epochs 1, 4, 7 (the reference's 0, 3, 6)
    method.on_epoch_start(4)
    assert len(calls) == 6


def test_an_estimation_run_trains_a_copy_on_its_head_alone():
    train, holdout = split(96, 0), split(48, 1)
    method = make_method(train, holdout, super_epoch=3)
    before = {n: p.detach().clone() for n, p in method.model.named_parameters()}
    t, v = method.estimation_run("a", epoch=1)
    assert len(t) == len(v) == 3 and t[-1] < t[0]  # three epochs of training on head a's loss
    assert all(torch.equal(p, before[n]) for n, p in method.model.named_parameters())  # the run's model untouched
    # head a's run never sees modality b: rescaling b's inputs changes nothing
    other = make_method(SplitArrays({"a": train.inputs["a"], "b": train.inputs["b"] * 7}, train.labels),
                        SplitArrays({"a": holdout.inputs["a"], "b": holdout.inputs["b"] * 7}, holdout.labels),
                        super_epoch=3)
    assert other.estimation_run("a", epoch=1) == (t, v)
    assert other.estimation_run(FUSED, epoch=1) != method.estimation_run(FUSED, epoch=1)
    rng = torch.get_rng_state()
    method.on_epoch_start(1)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's own random stream is left as it was
    assert sum(method.weights.values()) == pytest.approx(1.0) and len(set(method.weights.values())) == 3


def test_cli_holds_out_part_of_train_and_estimates_from_the_first_super_epoch(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=gblending",
                             "--set", "method.super_epoch=2", "--set", "method.holdout_fraction=0.25",
                             "--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
                             "--set", "train.epochs=3", "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "gblending" / "seed0"
    result = json.loads((run / "eval.json").read_text())
    assert (result["train_rows"], result["holdout_rows"]) == (180, 60)  # from train only: val and test untouched
    assert result["n"] == 60
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    heads = ("fused", "audio", "image", "vector")
    first = [records[0][f"method.gblend.w.{k}"] for k in heads]
    assert sum(first) == pytest.approx(1.0) and first != pytest.approx([0.25] * 4)  # estimated before epoch 1
    assert [records[1][f"method.gblend.w.{k}"] for k in heads] == first  # kept through the super-epoch
    assert {"method.gblend.G.fused", "method.gblend.O.vector", "method.gblend.estimate_time_s"} <= set(records[0])
    assert "method.gblend.G.fused" in records[2] and "method.gblend.G.fused" not in records[1]
    assert METHODS["gblending"].Options().estimate == "single-head"
