"""MBSD's rule on hand-computable inputs (GeWu-Lab/BalanceBenchmark MBSD_trainer.py) and one step inside a model."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.mbsd import MBSD, MBSDOptions, mbsd_terms, pair_terms
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}

# row 0: a right (0.75 on class 0), b wrong (0.4); row 1: both wrong; labels 0, 0
LA = torch.log(torch.tensor([[0.75, 0.25], [0.3, 0.7]]))
LB = torch.log(torch.tensor([[0.4, 0.6], [0.45, 0.55]]))
Y = torch.tensor([0, 0])


def test_pair_terms_by_hand():
    w, kl, rs = pair_terms(LA, LB, Y, rs_on_logits=True)
    assert w.tolist() == pytest.approx([0.35, 0.0])  # |0.75 - 0.4| where one is right, else 0
    # F.kl_div(ps, pw): pw * (log pw - ps), a probability in kl_div's log-probability slot
    assert kl.tolist() == pytest.approx([0.4 * (math.log(0.4) - 0.75), 0.3 * (math.log(0.3) - 0.45)])
    gap = (LA - LB)
    assert rs.tolist() == pytest.approx((gap ** 2).mean(1).tolist())
    _, _, rs_p = pair_terms(LA, LB, Y, rs_on_logits=False)
    assert rs_p.tolist() == pytest.approx([((0.75 - 0.4) ** 2 + (0.25 - 0.6) ** 2) / 2,
                                           ((0.3 - 0.45) ** 2 + (0.7 - 0.55) ** 2) / 2])


def test_two_modality_terms_are_weighted_means_on_logits():
    kl, rs = mbsd_terms([LA, LB], Y)
    w, kl_i, rs_i = pair_terms(LA, LB, Y, rs_on_logits=True)
    assert kl.item() == pytest.approx((0.35 * kl_i[0]).item() / 2)  # sum_i w_i KL_i / B
    assert rs.item() == pytest.approx((0.35 * rs_i[0]).item() / 2)


def test_three_modalities_average_pairs_on_probabilities():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 4, generator=g) for _ in range(3)]
    y = torch.randint(0, 4, (5,), generator=g)
    kl, rs = mbsd_terms(logits, y)
    pairs = [(0, 1), (0, 2), (1, 2)]
    terms = [pair_terms(logits[i], logits[j], y, rs_on_logits=False) for i, j in pairs]
    assert kl.item() == pytest.approx(sum((w * k).mean().item() for w, k, _ in terms) / 3)
    assert rs.item() == pytest.approx(sum((w * r).mean().item() for w, _, r in terms) / 3)


def test_gradient_flows_through_the_weights_as_in_the_reference():
    la = LA.clone().requires_grad_()
    kl, rs = mbsd_terms([la, LB], Y)
    (kl + rs).backward()
    with_w = la.grad.clone()
    la.grad = None
    w, kl_i, rs_i = pair_terms(la, LB, Y, rs_on_logits=True)
    ((w.detach() * (kl_i + rs_i)).mean()).backward()
    assert not torch.allclose(with_w, la.grad)  # the weights' own gradient is part of the reference's
    assert torch.isfinite(with_w).all()


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=16), SPECS, 3).double()


def make_batch(seed: int, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def sgd(model, lr=0.1):
    return StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=lr))


def test_one_step_is_sgd_on_fused_unimodal_and_distillation_losses():
    model = small_model()
    twin = copy.deepcopy(model)
    method = MBSD(MBSDOptions(), model, sgd(model))
    method.on_epoch_start(1)
    batch = make_batch(1)
    logs = method.step(batch).logs
    out = twin(batch.inputs)
    kl, rs = mbsd_terms([out.unimodal_logits["a"], out.unimodal_logits["b"]], batch.labels)
    total = (F.cross_entropy(out.fused_logits, batch.labels) + kl + rs
             + sum(F.cross_entropy(out.unimodal_logits[m], batch.labels) for m in SPECS))
    total.backward()
    assert logs["mbsd.kl"].item() == pytest.approx(kl.item()) and logs["mbsd.rs"].item() == pytest.approx(rs.item())
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, msg=name)


def test_outside_the_window_it_is_joint():
    model = small_model()
    twin = copy.deepcopy(model)
    method = MBSD(MBSDOptions(end_epoch=3), model, sgd(model))
    method.on_epoch_start(5)  # the reference's epoch 4
    batch = make_batch(2)
    method.step(batch)
    METHODS["joint"](METHODS["joint"].Options(), twin, sgd(twin)).step(batch)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_defaults_and_registration():
    o = MBSDOptions()
    assert (o.start_epoch, o.end_epoch) == (0, 80)
    assert METHODS["mbsd"] is MBSD and MBSD.epoch_base == 0
