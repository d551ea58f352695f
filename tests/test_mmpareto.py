"""MMPareto's rule on hand-checkable inputs, and one step inside a model."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bogc_cli.fusion.calibration import Segments
from bogc_cli.fusion.mmpareto import min_norm_weight, pareto_update


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 30))
def test_min_norm_weight_is_the_brute_force_minimiser_with_the_reference_solvers_corners(seed, d):
    g = torch.Generator().manual_seed(seed)
    g1, g2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    g1 = g1 * torch.rand((), generator=g, dtype=torch.float64) * 3  # unequal lengths: corners happen
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    norms = ((grid[:, None] * g1 + (1 - grid[:, None]) * g2) ** 2).sum(1)
    best = grid[norms.argmin()].item()
    w, exact = min_norm_weight(g1, g2).item(), min_norm_weight(g1, g2, exact_corners=True).item()
    assert abs(exact - best) < 1e-4
    if exact in (0.0, 1.0):  # a corner: the reference solver stops 0.001 short of it
        assert w == pytest.approx(0.999 if exact == 1.0 else 0.001)
    else:
        assert w == exact


def test_min_norm_hand_cases():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert min_norm_weight(e1, e2).item() == pytest.approx(0.5)           # orthogonal, equal length
    long = torch.tensor([3.0, 0.0])
    assert min_norm_weight(e1, long).item() == pytest.approx(0.999)       # g1.g2 >= |g1|^2: the solver's corner
    assert min_norm_weight(long, e1).item() == pytest.approx(0.001)       # g1.g2 >= |g2|^2: the other corner
    assert min_norm_weight(e1, long, exact_corners=True).item() == 1.0     # the exact minimiser


def test_zero_unimodal_gradient_steps_the_encoder_by_gamma_times_the_fusion_gradient():
    """The reference's corner: cos(g_0, 0) = 0 is not > 0, the solver returns w_0 = 0.001, the update 0.002 g_0
    is rescaled per tensor to |g_0 + 0| and times gamma: exactly 1.5 g_0."""
    g0 = torch.tensor([0.3, -0.4, 2.0, 1.0, -1.0], dtype=torch.float64)
    gm = torch.zeros(5, dtype=torch.float64)
    seg = Segments.from_numels([2, 3], g0)
    update, cos, w0 = pareto_update(g0, gm, seg, gamma=1.5)
    assert cos.item() == 0.0 and w0.item() == pytest.approx(0.001)
    torch.testing.assert_close(update, 1.5 * g0)
    frozen, _, w0 = pareto_update(g0, gm, seg, gamma=1.5, exact_corners=True)
    assert w0.item() == 0.0 and torch.equal(frozen, torch.zeros_like(g0))  # the exact corner: no step at all


def test_agreeing_gradients_are_averaged_then_scaled_by_gamma():
    g0 = torch.tensor([1.0, 2.0, 0.5, 0.1], dtype=torch.float64)
    gm = torch.tensor([0.5, 1.0, 0.2, 0.3], dtype=torch.float64)
    update, cos, w0 = pareto_update(g0, gm, Segments.from_numels([2, 2], g0), gamma=1.5)
    assert cos > 0 and w0.item() == 0.5
    torch.testing.assert_close(update, 1.5 * (g0 + gm))


def test_conflicting_gradients_use_the_min_norm_direction():
    g0 = torch.tensor([1.0, 0.2], dtype=torch.float64)
    gm = torch.tensor([-0.8, 0.6], dtype=torch.float64)
    seg = Segments.single(2, g0)
    update, cos, w0 = pareto_update(g0, gm, seg, gamma=1.0)
    assert cos < 0 and 0 < w0.item() < 1
    # the common descent direction decreases neither loss's objective: non-negative inner products
    assert update.dot(g0) >= -1e-12 and update.dot(gm) >= -1e-12
    # never shorter than the plain sum (per tensor)
    assert update.norm() >= (g0 + gm).norm() - 1e-12


def test_step_logs_coefficients_and_keeps_heads_plain():
    from bogc_cli.data.cache import ModalitySpec
    from bogc_cli.data.loader import Batch
    from bogc_cli.fusion import METHODS, StepContext
    from bogc_cli.models.build import build_model
    from bogc_cli.recipe import ModelBlock

    specs = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), specs, 3).double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = Batch({m: torch.randn(32, *s.shape, generator=g, dtype=torch.float64) for m, s in specs.items()},
                  torch.randint(0, 3, (32,), generator=g), torch.arange(32))
    steps = {}
    for name, m in (("mmpareto", model), ("uniform", twin)):
        cls = METHODS[name]
        method = cls(cls.Options(), m, StepContext(torch.device("cpu"), torch.optim.SGD(m.parameters(), lr=0.1)))
        steps[name] = method.step(batch)
    logs = steps["mmpareto"].logs
    assert {"mmpareto.cos.a", "mmpareto.cos.b", "mmpareto.w_fused.a", "mmpareto.w_fused.b"} <= set(logs)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if name.startswith("encoders."):
            continue
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)  # heads: plain sum, as uniform
    assert any(not torch.allclose(p, q) for (n, p), q in zip(model.named_parameters(), twin.parameters())
               if n.startswith("encoders."))
