"""MIMO: the smooth maximum of the unimodal losses and the step it drives."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bogc_cli.fusion.mimo import smooth_max
from cli_helpers import run_cli

losses_st = st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6).map(lambda v: torch.tensor(v, dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(losses_st, st.floats(0.01, 5.0))
def test_smooth_max_is_bounded_by_max_and_max_plus_t_log_m(losses, t):
    value = smooth_max(losses, t).item()
    top = losses.max().item()
    assert top - 1e-9 <= value <= top + t * math.log(len(losses)) + 1e-9


def test_smooth_max_tends_to_the_max_as_temperature_goes_to_zero():
    losses = torch.tensor([0.3, 1.7, 1.2], dtype=torch.float64)
    gaps = [smooth_max(losses, t).item() - 1.7 for t in (1.0, 0.1, 0.01, 0.001)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6
    assert smooth_max(losses, 1.0).item() == pytest.approx(math.log(sum(math.exp(x) for x in (0.3, 1.7, 1.2))))


def test_gradient_weights_each_loss_by_its_softmax_share():
    losses = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    smooth_max(losses, 0.5).backward()
    w = torch.softmax(losses.detach() / 0.5, 0)
    torch.testing.assert_close(losses.grad, w)
    assert losses.grad[1] > 0.9  # the worse-learnt modality gets most of the push


def test_cli_logs_priorities(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=mimo",
                             "--set", "method.temperature=0.5", "--set", "dataset.n_train=240",
                             "--set", "dataset.n_val=60", "--set", "dataset.n_test=60", "--set", "train.epochs=2",
                             "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "mimo" / "seed0"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    shares = [record[f"method.mimo.priority.{m}"] for m in ("audio", "image", "vector")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert max(shares) == record["method.mimo.priority.vector"]  # the weakest modality has the largest loss
