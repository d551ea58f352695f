"""CML's rule on hand-computable inputs (GeWu-Lab/BalanceBenchmark CML_trainer.py), one step inside a model, and
its per-epoch removal order."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.cml import CML, CMLOptions, cml_loss, confidence, removal_logits
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32"),
         "c": ModalitySpec("vector", [4], "float32")}


def small_model(names=("a", "b"), seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=16),
                       {m: SPECS[m] for m in names}, 3).double()


def make_batch(seed: int, names=("a", "b"), n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *SPECS[m].shape, generator=g, dtype=torch.float64) for m in names},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def make_method(model, lr=0.1, **options) -> CML:
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=lr))
    return CML(CMLOptions(**options), model, ctx)


def test_confidence_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]))
    torch.testing.assert_close(confidence(logits), torch.tensor([0.7, 0.4]))


def test_removal_is_the_references_slice_subtraction_for_a_linear_concat_head():
    model = small_model(("a", "b", "c"))
    feats = model.encode(make_batch(0, ("a", "b", "c")).inputs)
    ordered = [feats[m] for m in model.modalities]
    fused = model.fusion_head(ordered)
    slices = dict(zip(model.modalities, model.fusion_head.slice_logits(ordered)))
    bias = model.fusion_head.net.bias
    first, second = removal_logits(model, feats, ["c", "a"])
    # BalanceBenchmark: out_p = out_s - unimodal_result[removed] + bias / M, cumulatively
    torch.testing.assert_close(first, fused - slices["c"] + bias / 3)
    torch.testing.assert_close(second, first - slices["a"] + bias / 3)
    torch.testing.assert_close(second, slices["b"] + 2 * bias / 3)  # only b's features left, the full bias


def test_loss_by_hand_with_the_batch_level_hinge():
    y = torch.tensor([0, 0])
    full = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05]]))
    less = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2]]))  # row 0 gains 0.2 confidence, row 1 loses 0.3
    ce, penalty, total = cml_loss([full, less], y, lam=0.1)
    assert ce.item() == pytest.approx((F.cross_entropy(full, y) + F.cross_entropy(less, y)).item() / 2)
    assert penalty.item() == 0.0  # max(0, 0.2 - 0.3): the batch sum, not per sample (that would be 0.2)
    more = torch.log(torch.tensor([[0.95, 0.03, 0.02], [0.85, 0.1, 0.05]]))  # +0.35, -0.05
    _, penalty, total = cml_loss([full, more], y, lam=0.1)
    assert penalty.item() == pytest.approx(0.30)
    assert total.item() == pytest.approx((F.cross_entropy(full, y) + F.cross_entropy(more, y)).item() / 2 + 0.03)
    # three links of a chain: each compared with the one before it
    _, penalty, _ = cml_loss([full, more, less], y, lam=1.0)
    assert penalty.item() == pytest.approx(0.30 + max(0.0, (0.8 - 0.95) + (0.6 - 0.85)))


def test_penalty_gradient_lowers_the_confidence_of_the_reduced_prediction():
    full = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    less = torch.log(torch.tensor([[0.9, 0.05, 0.05]])).requires_grad_()
    _, penalty, _ = cml_loss([full, less], torch.tensor([0]), lam=1.0)
    penalty.backward()
    assert less.grad[0, 0] > 0 and math.isclose(less.grad.sum().item(), 0.0, abs_tol=1e-6)  # ascent raises p_max


def test_one_step_is_sgd_on_the_cml_loss_in_the_drawn_order():
    model = small_model(("a", "b", "c"))
    twin = copy.deepcopy(model)
    method = make_method(model, lam=0.5)
    method.on_epoch_start(1)
    assert len(method.order) == 2 and len(set(method.order)) == 2  # M - 1 removals
    batch = make_batch(3, ("a", "b", "c"))
    logs = method.step(batch).logs
    out = twin(batch.inputs)
    chain = [out.fused_logits] + removal_logits(twin, out.features, method.order)
    _, penalty, total = cml_loss(chain, batch.labels, 0.5)
    probes = sum(F.cross_entropy(twin.unimodal_heads[m](z.detach()), batch.labels) for m, z in out.features.items())
    (total + probes).backward()
    assert logs["cml.penalty"].item() == pytest.approx(penalty.item())
    assert logs[f"cml.removed_first.{method.order[0]}"].item() == 1.0
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, msg=name)


def test_outside_the_window_the_loss_is_the_fused_ce_alone():
    model = small_model()
    twin = copy.deepcopy(model)
    method = make_method(model, start_epoch=0, end_epoch=0)
    method.on_epoch_start(2)  # the reference's epoch 1: outside 0-0
    batch = make_batch(4)
    method.step(batch)
    joint = METHODS["joint"](METHODS["joint"].Options(), twin,
                             StepContext(torch.device("cpu"), torch.optim.SGD(twin.parameters(), lr=0.1)))
    joint.step(batch)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_order_is_drawn_once_per_epoch_from_the_methods_generator_and_restored():
    torch.manual_seed(0)
    method = make_method(small_model())
    orders = []
    for epoch in range(1, 41):
        method.on_epoch_start(epoch)
        orders.append(method.order[0])
    assert set(orders) == {"a", "b"}  # either modality removed, at random
    state = method.state_dict()
    clone = make_method(small_model())
    clone.load_state_dict(state)
    assert clone.order == method.order
    method.on_epoch_start(41)
    clone.on_epoch_start(41)
    assert clone.order == method.order  # the generator continues the same stream
    method.on_epoch_resume(41)
    assert clone.order == method.order  # a resumed epoch keeps the order its start drew


def test_defaults_and_registration():
    o = CMLOptions()
    assert (o.lam, o.start_epoch, o.end_epoch) == (0.1, 0, 80)
    assert METHODS["cml"] is CML and CML.epoch_base == 0
