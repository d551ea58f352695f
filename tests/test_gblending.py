"""G-Blending: weights from given losses, and the held-out part of train it measures on."""

import json

import pytest

from bogc_cli.fusion.gblending import blend_weights
from cli_helpers import run_cli


def test_weights_from_given_losses_by_hand():
    w, gain, growth = blend_weights({"a": 2.0, "b": 2.0}, {"a": 2.1, "b": 2.2},
                                    {"a": 1.0, "b": 1.5}, {"a": 1.5, "b": 2.0})
    assert gain == pytest.approx({"a": 0.6, "b": 0.2})
    assert growth == pytest.approx({"a": 0.4, "b": 0.3})
    ra, rb = 0.6 / 0.4 ** 2, 0.2 / 0.3 ** 2
    assert w == pytest.approx({"a": ra / (ra + rb), "b": rb / (ra + rb)})


def test_a_head_that_got_worse_gets_no_weight_and_no_gain_keeps_the_old_weights():
    w, _, _ = blend_weights({"a": 2.0, "b": 2.0}, {"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 1.0}, {"a": 1.5, "b": 2.5})
    assert w == {"a": 1.0, "b": 0.0}
    w, gain, _ = blend_weights({"a": 1.0}, {"a": 1.0}, {"a": 0.5}, {"a": 1.2})
    assert w is None and gain["a"] < 0


def test_no_overfitting_is_floored_not_infinite():
    w, _, growth = blend_weights({"a": 2.0, "b": 2.0}, {"a": 2.0, "b": 2.0}, {"a": 1.0, "b": 1.0},
                                 {"a": 1.0, "b": 1.5}, eps=1e-6)
    assert growth["a"] == 0.0 and w["a"] == pytest.approx(1.0, abs=1e-4)


def test_cli_holds_out_part_of_train_and_reestimates(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=gblending",
                             "--set", "method.super_epoch=1", "--set", "method.holdout_fraction=0.25",
                             "--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
                             "--set", "train.epochs=3", "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "gblending" / "seed0"
    result = json.loads((run / "eval.json").read_text())
    assert (result["train_rows"], result["holdout_rows"]) == (180, 60)  # from train only: val and test untouched
    assert result["n"] == 60
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = [records[0][f"method.gblend.w.{k}"] for k in ("fused", "audio", "image", "vector")]
    assert first == pytest.approx([0.25] * 4)
    later = [records[-1][f"method.gblend.w.{k}"] for k in ("fused", "audio", "image", "vector")]
    assert sum(later) == pytest.approx(1.0) and later != pytest.approx(first)
    assert "method.gblend.gain.fused" in records[1]
