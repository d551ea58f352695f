"""BOGC's ``moments: laplace`` (bogc_cli.fusion.laplace), float64: the diagonal GGN of a linear softmax head by
hand and against autograd's Hessian, the posterior it gives, each source's gradient at every posterior sample
against autograd with those weights put in the model (every fusion head, heads and fusion-slices), and the posterior
state surviving a checkpoint bitwise (equal evidence reproducing uniform: tests/test_bogc_method.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.laplace import LastLayerLaplace, linear_softmax_diag_ggn
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

F64 = torch.float64
SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
HEADS = {"concat": {}, "fusion-slices": {"unimodal_logits": "fusion-slices"}, "sum": {"fusion": "sum"},
         "concat-hidden": {"fusion_hidden": 7}, "gated": {"fusion": "gated"}, "film": {"fusion": "film"}}


def test_logistic_regression_diag_ggn_by_hand():
    """Two classes, two rows, two inputs. At W = 0, b = 0 every p is 1/2, p (1 - p) = 1/4:
    GGN[W_cj] = 1/4 * sum_i a_ij^2 = (1/4) (1 + 9) = 2.5 and (1/4) (4 + 1) = 1.25 for both classes,
    GGN[b_c] = 2 * 1/4 = 0.5. With logits (0, ln 3) for row 1, p = (1/4, 3/4) and p (1 - p) = 3/16."""
    a = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    gw, gb = linear_softmax_diag_ggn(a, torch.zeros(2, 2, dtype=F64))
    torch.testing.assert_close(gw, torch.tensor([[2.5, 1.25], [2.5, 1.25]], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(gb, torch.tensor([0.5, 0.5], dtype=F64), rtol=0, atol=1e-15)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=F64)
    gw, gb = linear_softmax_diag_ggn(a, logits)
    h1, h2 = 3 / 16, 1 / 4
    expected = torch.tensor([[h1 * 1 + h2 * 9, h1 * 4 + h2 * 1]] * 2, dtype=F64)
    torch.testing.assert_close(gw, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(gb, torch.tensor([h1 + h2] * 2, dtype=F64), rtol=1e-14, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 9), st.integers(1, 5), st.integers(2, 5))
def test_diag_ggn_is_the_diagonal_of_the_hessian_of_a_linear_softmax_head(seed, b, d, c):
    """The model is linear in (W, b), so its GGN is the Hessian of the summed cross-entropy exactly."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, d, generator=g, dtype=F64) * 2
    y = torch.randint(0, c, (b,), generator=g)
    theta = torch.randn(c * d + c, generator=g, dtype=F64)

    def loss(t):
        w, bias = t[:c * d].view(c, d), t[c * d:]
        return F.cross_entropy(a @ w.T + bias, y, reduction="sum")

    hessian = torch.autograd.functional.hessian(loss, theta).diagonal()
    w, bias = theta[:c * d].view(c, d), theta[c * d:]
    gw, gb = linear_softmax_diag_ggn(a, a @ w.T + bias)
    torch.testing.assert_close(torch.cat([gw.reshape(-1), gb]), hessian, rtol=1e-10, atol=1e-12)


def make(head: str = "concat", options: dict | None = None, rows: int = 40):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16, **HEADS[head]), SPECS, 3).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cls = METHODS["bogc"]
    train_eval = [Batch({}, torch.zeros(rows, dtype=torch.long), torch.arange(rows))]  # N = rows
    ctx = StepContext(torch.device("cpu"), opt, train_eval=train_eval)
    return cls(cls.Options.model_validate({"moments": "laplace", **(options or {})}), model, ctx), model


def batch(n: int = 16, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=F64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def test_posterior_precision_is_prior_plus_rows_times_the_curvature():
    """After one step the bias-corrected EMA is that batch's mean GGN; precision = prior + N * GGN for the
    unimodal heads (inputs z_m) and the fusion head (input the concatenated features)."""
    method, model = make(options={"prior_precision": 2.5}, rows=40)
    x = batch()
    with method.laplace.capture():
        out = model(x.inputs)
    method.laplace.gradient_rows(out.features, x.labels, method.sources.params, F64, 40)
    std = method.laplace.posterior_std(40)
    z = {m: f.detach() for m, f in out.features.items()}
    cat = torch.cat([z["a"], z["b"]], 1)
    for i, (a, logits) in enumerate([(cat, out.fused_logits), (z["a"], out.unimodal_logits["a"]),
                                     (z["b"], out.unimodal_logits["b"])]):
        gw, gb = linear_softmax_diag_ggn(a, logits.detach())
        torch.testing.assert_close(std[i][0], (2.5 + 40 * gw / 16).rsqrt(), rtol=1e-12, atol=0)
        torch.testing.assert_close(std[i][1], (2.5 + 40 * gb / 16).rsqrt(), rtol=1e-12, atol=0)
    # the samples are drawn with that spread around the current weights (row 0 is the mean itself)
    w = method.laplace.draws[1][0]
    assert torch.equal(w[0], model.unimodal_heads["a"].weight.detach())
    assert not torch.equal(w[1], w[0])


def test_fusion_slices_share_one_posterior_with_every_loss_in_its_curvature():
    """With fusion-slices, modality m's last layer is block m of the fusion layer (and b / M): the layer's
    curvature adds the fused loss's GGN and each modality's on its block (1 / M^2 on the bias)."""
    method, model = make("fusion-slices", rows=10)
    x = batch()
    with method.laplace.capture():
        out = model(x.inputs)
    method.laplace.gradient_rows(out.features, x.labels, method.sources.params, F64, 10)
    assert len(method.laplace.layers) == 1
    z = {m: f.detach() for m, f in out.features.items()}
    gw, gb = linear_softmax_diag_ggn(torch.cat([z["a"], z["b"]], 1), out.fused_logits.detach())
    for j, (m, cols) in enumerate([("a", slice(0, 8)), ("b", slice(8, 16))]):
        w_m, b_m = linear_softmax_diag_ggn(z[m], out.unimodal_logits[m].detach())
        gw[:, cols] += w_m
        gb += b_m / 4
    ema = method.laplace.curvature[0]  # after one step: (1 - beta) x the batch's mean GGN, before bias correction
    torch.testing.assert_close(ema[0] / (1 - 0.9), gw / 16, rtol=1e-12, atol=0)
    torch.testing.assert_close(ema[1] / (1 - 0.9), gb / 16, rtol=1e-12, atol=0)


@pytest.mark.parametrize("head", list(HEADS))
def test_each_sources_gradient_at_each_sample_equals_autograd_with_those_weights(head):
    method, model = make(head, {"samples": 3})
    x = batch()
    with method.laplace.capture():
        out = model(x.inputs)
    rows = method.laplace.gradient_rows(out.features, x.labels, method.sources.params, F64, 40)
    names = {id(p): n for n, p in model.named_parameters()}
    for k in range(4):  # the posterior mean and three samples
        sampled = copy.deepcopy(model)
        layers = list(sampled.fusion_head.final_linears()) + list(sampled.unimodal_heads.values())
        with torch.no_grad():
            for layer, (w, b) in zip(layers, method.laplace.draws):
                layer.weight.copy_(w[k])
                layer.bias.copy_(b[k])
        o = sampled(x.inputs)
        losses = {"fused": F.cross_entropy(o.fused_logits, x.labels),
                  **{m: F.cross_entropy(v, x.labels) for m, v in o.unimodal_logits.items()}}
        params = dict(sampled.named_parameters())
        for s, plist in method.sources.params.items():
            ps = [params[names[id(p)]] for p in plist]
            grads = torch.autograd.grad(losses[s], ps, allow_unused=True, retain_graph=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, ps)])
            torch.testing.assert_close(rows[s][k], flat, rtol=1e-10, atol=1e-13, msg=f"{head}: {s}, row {k}")


def test_the_variance_comes_from_the_posterior_spread():
    """A tight posterior (a large prior precision) gives the sampled gradients almost no spread; a wide one
    more; the calibrated step then differs from the plain sum."""
    spreads = []
    for prior in (1e12, 1.0):
        method, model = make(options={"prior_precision": prior})
        x = batch()
        mu, var, *_ = method._laplace_moments(x)
        spreads.append(max(float((v / mu[s].square().mean().clamp_min(1e-300)).max()) for s, v in var.items()))
    assert spreads[0] < 1e-6 and spreads[1] > 1e-3, spreads


def test_the_posterior_state_resumes_bitwise():
    """Curvature EMA, step count and generator are in state_dict: two steps straight equal one step, a
    save/load into a fresh method, and a second step."""
    straight, model_s = make()
    straight.step(batch(seed=1))
    straight.step(batch(seed=2))

    first, model_f = make()
    first.step(batch(seed=1))
    saved = copy.deepcopy((model_f.state_dict(), first.ctx.optimizer.state_dict(), first.state_dict()))
    torch.randn(5)  # the global RNG is the trainer's business; the posterior's draws must not depend on it
    resumed, model_r = make()
    model_r.load_state_dict(saved[0])
    resumed.ctx.optimizer.load_state_dict(saved[1])
    resumed.load_state_dict(saved[2])
    resumed.step(batch(seed=2))
    for (name, a), b in zip(model_s.named_parameters(), model_r.parameters()):
        assert torch.equal(a, b), name
    assert resumed.laplace.steps == straight.laplace.steps == 2


def test_bad_laplace_options_are_refused():
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3)
    with pytest.raises(ValueError, match="samples"):
        LastLayerLaplace(model, 1, 1.0, 0.9, seed=0)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        METHODS["bogc"].Options.model_validate({"moments": "laplace", "samples": 1})
    with pytest.raises(ValidationError):
        METHODS["bogc"].Options.model_validate({"moments": "laplace", "prior_precision": 0})
