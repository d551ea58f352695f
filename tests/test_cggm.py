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


def small_model(seed: int = 1):
    torch.manual_seed(seed)
    return build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()


def make_batch(seed: int, n: int = 32) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def make_method(name: str, model, lr: float = 0.5, grad_clip: float | None = None, **options):
    cls = METHODS[name]
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=lr), grad_clip=grad_clip)
    return cls(cls.Options(**options), model, ctx)


def head_accuracy(model, batch) -> dict[str, float]:
    with torch.no_grad():
        feats = model.encode(batch.inputs)
        return {m: batch_accuracy(model.unimodal_heads[m](feats[m]), batch.labels).item() for m in SPECS}


def test_defaults_follow_the_reference_code():
    o = CGGMOptions()
    assert (o.delta, o.direction, o.classifier_optim) == ("consecutive", "weights", "own")
    assert (o.rho, o.classifier_lr, o.classifier_weight_decay) == (1.3, 5e-4, 3e-3)


def test_consecutive_batch_change_by_hand():
    """Delta_m = head m's accuracy on this batch before its update minus its accuracy on the previous batch
    (0 before the first), as zrguo/CGGM's acc2 - acc1."""
    model = small_model()
    method = make_method("cggm", model, classifier_lr=0.3)
    b1, b2, b3 = make_batch(1), make_batch(2), make_batch(3)
    acc1 = head_accuracy(model, b1)
    logs1 = method.step(b1).logs
    assert {m: logs1[f"cggm.delta.{m}"].item() for m in SPECS} == pytest.approx(acc1)
    acc2 = head_accuracy(model, b2)  # the heads after step 1's update, on the next batch
    logs2 = method.step(b2).logs
    assert {m: logs2[f"cggm.delta.{m}"].item() for m in SPECS} == pytest.approx({m: acc2[m] - acc1[m] for m in SPECS})
    d = torch.tensor([acc2[m] - acc1[m] for m in SPECS], dtype=torch.float64)
    assert d.tolist() == pytest.approx([-5 / 32, -1 / 32])  # this seed's batches: both heads score lower on b2
    assert [logs2[f"cggm.coeff.{m}"].item() for m in SPECS] == pytest.approx([1 / 6, 5 / 6])  # (S - d) / S
    acc3 = head_accuracy(model, b3)
    logs3 = method.step(b3).logs
    assert logs3["cggm.delta.a"].item() == pytest.approx(acc3["a"] - acc2["a"])
    assert method.state_dict()["previous_accuracy"].tolist() == pytest.approx([acc3[m] for m in SPECS])


def test_zero_sum_guard_gives_unmodulated_encoders_where_the_reference_blows_up():
    # the same batch twice after a negligible first step: accuracies do not change, Delta = (0, 0)
    model = small_model()
    method = make_method("cggm", model, lr=1e-12, classifier_lr=1e-12, lam=0.0)
    batch = make_batch(1)
    method.step(batch)
    for group in method.ctx.optimizer.param_groups:
        group["lr"] = 0.5
    plain = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    logs = method.step(batch).logs
    assert logs["cggm.guarded"].item() == 1.0
    assert [logs[f"cggm.delta.{m}"].item() for m in SPECS] == [0.0, 0.0]
    assert [logs[f"cggm.coeff.{m}"].item() for m in SPECS] == [1.0, 1.0]
    make_method("joint", plain).step(batch)  # plain SGD step: fusion loss, detached probes
    moved = dict(plain.named_parameters())
    for n, p in model.named_parameters():
        if n.startswith("encoders."):  # SGD: the update is the gradient, times rho * 1
            torch.testing.assert_close(p.detach() - start[n], 1.3 * (moved[n].detach() - start[n]), msg=n)
    # the reference's (S + 1e-8 - Delta_m) / (S + 1e-8) where the changes cancel: ~1e6 and beyond
    for deltas in ([1 / 64, -1 / 64], [0.25, -0.25]):
        s = sum(deltas) + 1e-8
        assert max(abs((s - x) / s) for x in deltas) > 1e6
        coeff, guarded = cggm_coefficients(torch.tensor(deltas))
        assert bool(guarded) and coeff.tolist() == [1.0, 1.0]


def test_classifiers_take_their_own_unclipped_step():
    """The reference's cls_optimizer: the model optimiser's kind, lr 5e-4, weight decay 3e-3, never clipped
    (only the model's parameters are clipped)."""
    model = small_model()
    start = copy.deepcopy(model)
    method = make_method("cggm", model, grad_clip=1e-9)  # the model's step all but vanishes under this clip
    batch = make_batch(1)
    method.step(batch)
    feats = {m: z.detach() for m, z in start.encode(batch.inputs).items()}
    for m in SPECS:
        head = start.unimodal_heads[m]
        F.cross_entropy(head(feats[m]), batch.labels).backward()
        for name in ("weight", "bias"):
            p0 = getattr(head, name)
            expected = p0.detach() - 5e-4 * (p0.grad + 3e-3 * p0.detach())  # SGD with weight decay
            torch.testing.assert_close(getattr(model.unimodal_heads[m], name).detach(), expected, msg=f"{m}.{name}")
    moved = max((p - q).abs().max().item() for p, q in zip(model.encoders.parameters(), start.encoders.parameters()))
    assert moved < 1e-8  # clipped to a norm of 1e-9
    assert method.state_dict()["classifier_optimizer"]["param_groups"][0]["lr"] == 5e-4


def test_previous_step_direction_loss_trains_only_the_fusion_weight():
    """The reference adds lam * l_gm formed at the last step, from the output layers' weights (cosine of
    the classifier's and the fusion head's block), to this step's loss: only the fusion weight moves."""
    base = small_model()
    with_dir, without = copy.deepcopy(base), copy.deepcopy(base)
    a = make_method("cggm", with_dir, lam=0.1)
    b = make_method("cggm", without, lam=0.0)
    b1, b2 = make_batch(1), make_batch(2)
    logs = a.step(b1).logs
    b.step(b1)
    assert logs["loss.direction"].item() == 0.0  # nothing formed before the first step
    for p, q in zip(with_dir.parameters(), without.parameters()):
        torch.testing.assert_close(p, q)
    c1 = torch.stack([logs[f"cggm.coeff.{m}"] for m in SPECS])
    w_fus = base.fusion_head.net.weight.detach()
    blocks = [w_fus[:, :8].clone().requires_grad_(), w_fus[:, 8:].clone().requires_grad_()]
    cos = torch.stack([gradient_cosine(base.unimodal_heads[m].weight.detach(), blk) for m, blk in zip(SPECS, blocks)])
    loss = direction_loss(c1, cos, 0.1)
    grads = torch.autograd.grad(loss, blocks)
    logs2 = a.step(b2).logs
    b.step(b2)
    assert logs2["loss.direction"].item() == pytest.approx(loss.item())
    expected = without.fusion_head.net.weight.detach() - 0.5 * torch.cat(grads, dim=1)  # SGD lr 0.5
    torch.testing.assert_close(with_dir.fusion_head.net.weight.detach(), expected)
    for (n, p), q in zip(with_dir.named_parameters(), without.parameters()):
        if n != "fusion_head.net.weight":
            torch.testing.assert_close(p, q, msg=n)


def test_paper_options_same_batch_change_and_gradient_direction():
    torch.manual_seed(1)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()
    batch = make_batch(1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        feats0 = model.encode(batch.inputs)
    paper = dict(delta="same-batch", direction="gradients", classifier_optim="model")
    plain, no_dir, with_dir = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    make_method("joint", plain).step(batch)                   # L_0 + detached probes, one SGD step
    logs = make_method("cggm", no_dir, lam=0.0, **paper).step(batch).logs
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

    logs = make_method("cggm", with_dir, lam=0.1, **paper).step(batch).logs
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
