"""LFM's rule on hand-computable inputs (njustkmg/NeurIPS24-LFM Crema_epoch.py / Crema_epoch_learnable.py), one
step inside a model, and its refusals."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.lfm import LFM, LFMOptions, alignment, fitted_weights, lfm_loss, mean_pairwise_alignment
from bogc_cli.models.build import build_model
from bogc_cli.models.late_fusion import UnimodalMean
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()
    LFM.adapt_model(LFMOptions(), model)
    return model


def make_batch(seed: int, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def make_method(model, lr=0.1, train_eval=None, **options) -> LFM:
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=lr), train_eval=train_eval)
    return LFM(LFMOptions(**options), model, ctx)


def test_fitted_schedule_is_the_reference_polynomial():
    a0, b0 = fitted_weights(0)
    assert (a0, b0) == pytest.approx((0.204623704, 0.795376296))
    e = 10  # written out term by term, as getAlpha_Learnable_Fitted sums them
    by_hand = (2.04623704e-01 + 3.35472727e-03 * e + 1.22989557e-04 * e**2 - 2.92947416e-06 * e**3
               + 2.23835486e-08 * e**4 - 5.39717505e-11 * e**5)
    assert fitted_weights(10)[0] == pytest.approx(by_hand)
    assert fitted_weights(10)[0] == pytest.approx(0.2478, abs=1e-4)
    assert fitted_weights(199)[0] == pytest.approx(0.9160, abs=1e-4)
    for epoch in (0, 7, 50, 150, 199):
        assert sum(fitted_weights(epoch)) == pytest.approx(1.0)


def test_alignment_by_hand():
    p = torch.tensor([[0.0, 0.0]])                            # softmax [0.5, 0.5]
    q = torch.log(torch.tensor([[0.8, 0.2]]))                # softmax [0.8, 0.2]
    m = [0.65, 0.35]
    kl_mp = m[0] * math.log(m[0] / 0.5) + m[1] * math.log(m[1] / 0.5)
    kl_mq = m[0] * math.log(m[0] / 0.8) + m[1] * math.log(m[1] / 0.2)
    assert alignment(p, q).item() == pytest.approx(0.5 * (kl_mp + kl_mq), rel=1e-6)
    # KL(m || p), as F.kl_div(p.log(), m) computes it -- not the Jensen-Shannon KL(p || m)
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]) + 0.8 * math.log(0.8 / m[0])
                + 0.2 * math.log(0.2 / m[1]))
    assert alignment(p, q).item() != pytest.approx(js, rel=1e-3)
    same = torch.randn(4, 5)
    assert alignment(same, same).item() == pytest.approx(0.0, abs=1e-7)


def test_alignment_equals_the_reference_formula_and_averages_over_pairs():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(7, 4, generator=g, dtype=torch.float64) for _ in range(3))

    def reference(x, y):  # Crema_epoch.py's Alignment, line by line
        p, q = F.softmax(x, dim=-1), F.softmax(y, dim=-1)
        mid = 0.5 * p + 0.5 * q
        return 0.5 * (F.kl_div(p.log(), mid, reduction="batchmean") + F.kl_div(q.log(), mid, reduction="batchmean"))

    assert alignment(a, b).item() == pytest.approx(reference(a, b).item(), rel=1e-6)
    three = (reference(a, b) + reference(a, c) + reference(b, c)) / 3
    assert mean_pairwise_alignment([a, b, c]).item() == pytest.approx(three.item(), rel=1e-6)


def test_loss_is_twice_the_weighted_sum_on_the_mean_of_unimodal_logits():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ce, align, total = lfm_loss([a, b], y, 0.3, 0.7)
    assert ce.item() == pytest.approx(F.cross_entropy(0.5 * a + 0.5 * b, y).item(), rel=1e-6)
    assert total.item() == pytest.approx(2 * (0.3 * ce.item() + 0.7 * align.item()), rel=1e-6)


def test_adapted_model_predicts_the_mean_of_its_unimodal_heads():
    model = small_model()
    assert isinstance(model.fusion_head, UnimodalMean)
    assert not list(model.fusion_head.parameters())  # the heads stay model.unimodal_heads' parameters
    out = model(make_batch(0).inputs)
    torch.testing.assert_close(out.fused_logits, 0.5 * (out.unimodal_logits["a"] + out.unimodal_logits["b"]))
    clone = copy.deepcopy(model)  # the held heads follow a copy of the model
    assert clone.fusion_head._heads[0] is clone.unimodal_heads


def test_one_step_is_sgd_on_the_weighted_loss_with_the_epochs_weights():
    model = small_model()
    twin = copy.deepcopy(model)
    method = make_method(model)
    method.on_epoch_start(11)  # the reference's epoch 10
    batch = make_batch(2)
    logs = method.step(batch).logs
    a_cls, a_align = fitted_weights(10)
    assert logs["lfm.cls_weight"].item() == pytest.approx(a_cls)
    out = twin(batch.inputs)
    _, _, total = lfm_loss([out.unimodal_logits["a"], out.unimodal_logits["b"]], batch.labels, a_cls, a_align)
    total.backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, msg=name)


def test_learned_weight_steps_against_the_first_parameters_hessian_vector_product():
    model = small_model(3)
    batch = make_batch(4, n=12)
    method = make_method(model, train_eval=[batch], weighting="learned", alpha_rows=8)
    rows = Batch({m: x[:8] for m, x in batch.inputs.items()}, batch.labels[:8], batch.index[:8])
    # independent check: central difference of grad L_t along g_cls, on the first parameter tensor
    params = [p for p in model.parameters()]
    model.eval()

    def losses():
        out = model(rows.inputs)
        logits = [out.unimodal_logits["a"], out.unimodal_logits["b"]]
        ce, align, _ = lfm_loss(logits, rows.labels, 0.05, 0.95)
        return ce, 0.05 * ce + 0.95 * align

    ce, _ = losses()
    g = torch.autograd.grad(ce, params)
    eps = 1e-5

    def grad_first(sign):
        with torch.no_grad():
            for p, d in zip(params, g):
                p.add_(sign * eps * d)
        grad = torch.autograd.grad(losses()[1], params[0])[0]
        with torch.no_grad():
            for p, d in zip(params, g):
                p.sub_(sign * eps * d)
        return grad

    expected = ((grad_first(1) - grad_first(-1)) / (2 * eps)).mean().item()
    model.train()
    assert method.weight_gradient(rows).item() == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert model.training  # left as it was
    method.on_epoch_start(1)  # epoch 0: align 0.95 - 1e-4 * grad, clipped to [0.05, 0.95]
    assert method.align_weight == pytest.approx(min(0.95, max(0.05, 0.95 - 1e-4 * expected)), rel=1e-6)


def test_learned_weight_is_clipped_and_its_step_halves_every_20_epochs(monkeypatch):
    model = small_model()
    method = make_method(model, train_eval=[make_batch(0)], weighting="learned", lr_alpha=0.1)
    monkeypatch.setattr(LFM, "weight_gradient", lambda self, batch: torch.tensor(-1.0))
    method.on_epoch_start(1)
    assert method.align_weight == 0.95 and method.lr_alpha == 0.1  # 0.95 + 0.1, clipped
    monkeypatch.setattr(LFM, "weight_gradient", lambda self, batch: torch.tensor(2.0))
    method.on_epoch_start(2)
    assert method.align_weight == pytest.approx(0.75)
    assert method.weights() == pytest.approx((0.25, 0.75))
    method.on_epoch_start(21)  # the reference's epoch 20: the step halves first, then 0.75 - 0.05 * 2
    assert method.lr_alpha == pytest.approx(0.05) and method.align_weight == pytest.approx(0.65)
    method.on_epoch_start(22)
    assert method.lr_alpha == pytest.approx(0.05)
    state = method.state_dict()
    fresh = make_method(small_model(), weighting="learned")
    fresh.load_state_dict(state)
    assert (fresh.align_weight, fresh.lr_alpha) == (method.align_weight, method.lr_alpha)


def test_defaults_and_registration():
    o = LFMOptions()
    assert (o.weighting, o.initial_cls_weight, o.lr_alpha, o.alpha_rows) == ("fitted", 0.05, 1e-4, 8)
    assert METHODS["lfm"] is LFM and LFM.epoch_base == 0
    assert "at least 2 modalities" in LFM.check_modalities(o, ["audio"])


def test_refusals_before_anything_is_written(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=lfm",
                             "--set", "model.unimodal_logits=fusion-slices", "--out", tmp_path)
    assert code == 2 and "model.unimodal_logits: heads" in out + err
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=lfm",
                             "--set", "train.epochs=250", "--out", tmp_path)
    assert code == 2 and "200 epochs" in out + err and "method.weighting: learned" in out + err
    assert not any(tmp_path.iterdir())
