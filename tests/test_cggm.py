"""CGGM's rule on hand-computable inputs, one step inside a model, and the CLI."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.cggm import (CGGMOptions, batch_accuracy, cggm_coefficients, direction_loss,
                                  gradient_cosine, linear_head_gradient)
from bogc_cli.models.build import build_model
from bogc_cli.models.fusion_heads import ConcatHead
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli


def test_coefficients_hand_values():
    coeff, guarded = cggm_coefficients(torch.tensor([0.1, 0.3], dtype=torch.float64))
    assert not guarded
    torch.testing.assert_close(coeff, torch.tensor([0.75, 0.25], dtype=torch.float64))  # faster learner: smaller
    coeff, _ = cggm_coefficients(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    torch.testing.assert_close(coeff, torch.tensor([5 / 6, 4 / 6, 3 / 6], dtype=torch.float64))
    coeff, _ = cggm_coefficients(torch.tensor([0.2, -0.1], dtype=torch.float64))  # not clipped: can be negative
    torch.testing.assert_close(coeff, torch.tensor([-1.0, 2.0], dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-8, 8), min_size=2, max_size=6))
def test_coefficients_sum_to_m_minus_one(counts):
    deltas = torch.tensor(counts, dtype=torch.float64) / 64  # accuracy changes come in steps of 1/B
    coeff, guarded = cggm_coefficients(deltas)
    if sum(counts) == 0:
        assert guarded and torch.equal(coeff, torch.ones_like(deltas))
    else:
        assert not guarded and coeff.sum().item() == pytest.approx(len(counts) - 1)


def test_near_zero_denominator_falls_back_to_one():
    for deltas in ([1 / 64, -1 / 64], [0.0, 0.0], [1e-9, 0.0], [0.25, -0.25 + 1e-8, 0.0]):
        coeff, guarded = cggm_coefficients(torch.tensor(deltas), eps=1e-6)
        assert bool(guarded) and torch.equal(coeff, torch.ones(len(deltas))), deltas
    coeff, guarded = cggm_coefficients(torch.tensor([1e-5, 0.0]), eps=1e-6)  # above eps: the rule itself
    assert not guarded and coeff.tolist() == pytest.approx([0.0, 1.0])


def test_closed_form_head_gradient_equals_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    head = torch.nn.Linear(5, 4).double()
    logits = head(z)
    F.cross_entropy(logits, y).backward()
    torch.testing.assert_close(linear_head_gradient(logits.detach(), y, z), head.weight.grad)

    # a modality's block of a concat head's weight
    z2 = torch.randn(7, 3, generator=g, dtype=torch.float64)
    concat = ConcatHead([5, 3], 4).double()
    fused = concat([z, z2])
    F.cross_entropy(fused, y).backward()
    torch.testing.assert_close(linear_head_gradient(fused.detach(), y, z), concat.net.weight.grad[:, :5])
    torch.testing.assert_close(linear_head_gradient(fused.detach(), y, z2), concat.net.weight.grad[:, 5:])


def test_closed_form_is_differentiable_in_the_features():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    target = torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: gradient_cosine(target, linear_head_gradient(z @ w.T, y, z)), (z,))


def test_direction_loss_for_hand_made_gradients():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert gradient_cosine(e1, 3 * e1).item() == pytest.approx(1.0)
    assert gradient_cosine(e1, e2).item() == pytest.approx(0.0)
    assert gradient_cosine(e1, -e1).item() == pytest.approx(-1.0)
    coeff = torch.tensor([0.75, 0.25])
    cos = torch.stack([gradient_cosine(e1, 3 * e1), gradient_cosine(e1, e2)])  # [1, 0]
    assert direction_loss(coeff, cos, 0.1).item() == pytest.approx(0.1 * (1.0 - 0.75) / 2)
    cos = torch.stack([gradient_cosine(e1, e1), gradient_cosine(e1, -e1)])      # [1, -1]
    assert direction_loss(coeff, cos, 0.1).item() == pytest.approx(0.1 * (1.0 - 0.5) / 2)
    assert direction_loss(torch.tensor([2.0, -1.0]), torch.tensor([1.0, -1.0]), 1.0).item() == 0.0  # aligned: 0


SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def one_step(name: str, model, batch, **options):
    cls = METHODS[name]
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.5))
    method = cls(cls.Options(**options), model, ctx)
    return method.step(batch)


def test_step_modulates_encoders_and_trains_heads_as_their_own_classifiers():
    torch.manual_seed(1)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()
    g = torch.Generator().manual_seed(1)
    batch = Batch({m: torch.randn(32, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                  torch.randint(0, 3, (32,), generator=g), torch.arange(32))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        feats0 = model.encode(batch.inputs)
    plain, no_dir, with_dir = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    one_step("joint", plain, batch)                   # L_0 + detached probes, one SGD step
    logs = one_step("cggm", no_dir, batch, lam=0.0).logs
    assert not logs["cggm.guarded"] and {"cggm.coeff.a", "cggm.delta.b", "cggm.cos.a"} <= set(logs)
    coeff = {m: logs[f"cggm.coeff.{m}"].item() for m in SPECS}
    assert coeff == pytest.approx({"a": 0.75, "b": 0.25})  # the step this seed gives: unequal, not guarded

    # Delta = the updated head's accuracy on the same (pre-step) features minus the old head's
    for m in SPECS:
        before = batch_accuracy(model.unimodal_heads[m](feats0[m]), batch.labels)
        after = batch_accuracy(no_dir.unimodal_heads[m](feats0[m]), batch.labels)
        assert logs[f"cggm.delta.{m}"].item() == pytest.approx((after - before).item())

    named = dict(plain.named_parameters())
    for n, p in no_dir.named_parameters():
        moved, plain_moved = p.detach() - start[n], named[n].detach() - start[n]
        if n.startswith("encoders."):  # SGD: the update is the gradient, scaled by rho * coeff_m
            torch.testing.assert_close(moved, 1.3 * coeff[n.split(".")[1]] * plain_moved, msg=n)
        else:                           # heads (own update on detached features) and fusion head: as joint
            torch.testing.assert_close(moved, plain_moved, msg=n)

    logs = one_step("cggm", with_dir, batch, lam=0.1).logs
    cos = torch.stack([logs["cggm.cos.a"], logs["cggm.cos.b"]])
    expected = direction_loss(torch.tensor([0.75, 0.25], dtype=torch.float64), cos, 0.1)
    assert logs["loss.direction"].item() == pytest.approx(expected.item())
    changed = {n.split(".")[0] for (n, p), q in zip(with_dir.named_parameters(), no_dir.parameters())
               if not torch.allclose(p, q, rtol=0, atol=1e-12)}
    assert changed == {"encoders", "fusion_head"}  # the direction loss trains encoders and fusion, not heads


def test_refuses_heads_it_cannot_use(tmp_path, capsys):
    for key, fix in (("model.fusion=sum", "model.fusion: concat"), ("model.fusion_hidden=32", "model.fusion_hidden: 0"),
                     ("model.unimodal_logits=fusion-slices", "model.unimodal_logits: heads")):
        code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=cggm",
                                 "--set", key, "--out", tmp_path)
        assert code != 0 and fix in out + err, key
    assert not (tmp_path / "quickstart").exists()
    assert METHODS["cggm"].check_modalities(CGGMOptions(), ["audio"])


def test_cli_logs_coefficients(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=cggm",
                             "--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
                             "--set", "train.epochs=2", "--set", "optim.grad_clip=0.8", "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "cggm" / "seed0"
    assert (run / "eval.json").exists()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for m in ("audio", "image", "vector"):
        assert {f"method.cggm.{k}.{m}" for k in ("coeff", "delta", "cos")} <= set(record)
        assert -1.0 <= record[f"method.cggm.cos.{m}"] <= 1.0
    assert 0.0 <= record["method.cggm.guarded"] <= 1.0
    assert record["method.loss.direction"] >= 0.0
