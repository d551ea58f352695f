"""InfoReg: the prime-window rate and the proximal strength against the reference's formulas, one real step's gradient
and Fisher trace computed by hand, the window switching the rule off, and a CLI run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.inforeg import layer_fisher, proximal_strengths, window_rate
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli, run_results

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def reference_k(traces: list[float]) -> float:
    """main.py's train_epoch: audio_trace_list starts as ten zeros and gets each epoch's trace appended."""
    if not traces:
        return 1
    audio_trace_list = [0] * 10 + traces
    tr1 = sum(audio_trace_list[-10:]) / 10
    tr2 = sum(audio_trace_list[-11:-1]) / 10
    return (tr1 - tr2) / tr1


def test_window_rate_is_the_references_k():
    assert window_rate([], 10) == 1.0
    assert window_rate([2.0], 10) == pytest.approx(1.0)
    assert window_rate([2.0, 6.0], 10) == pytest.approx(6 / 8)
    assert window_rate([1.0, 2.0, 3.0], 2) == pytest.approx((2.5 - 1.5) / 2.5)
    g = torch.Generator().manual_seed(0)
    for n in range(1, 25):
        traces = torch.rand(n, generator=g).tolist()
        assert window_rate(traces, 10) == pytest.approx(reference_k(traces))
    assert window_rate([0.0, 0.0], 10) == 0.0  # the reference: ZeroDivisionError


def test_proximal_strength_is_the_references_beta():
    modalities = ["audio", "visual"]
    beta = proximal_strengths({"audio": 40.0, "visual": 39.5}, [0.95, 0.1], modalities)
    assert beta == {"audio": pytest.approx(0.95 * math.exp(math.tanh(0.5))), "visual": 0.0}
    beta = proximal_strengths({"audio": 30.0, "visual": 35.0}, [0.95, 0.1], modalities)
    assert beta == {"audio": 0.0, "visual": pytest.approx(0.1 * math.exp(math.tanh(5.0)))}
    assert proximal_strengths({"audio": 3.0, "visual": 3.0}, [0.95, 0.1], modalities) == {"audio": 0.0, "visual": 0.0}
    three = proximal_strengths({"x": 1.0, "y": 2.0, "z": 5.0}, [0.95, 0.1], ["x", "y", "z"])
    assert three == {"x": 0.0, "y": 0.0, "z": pytest.approx(0.1 * math.exp(math.tanh(3.0)))}  # gap to the runner-up


def _method(**options):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, dropout=0.0,
                                   unimodal_logits="fusion-slices"), SPECS, 3).double()
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=1.0))
    return METHODS["inforeg"](METHODS["inforeg"].Options(**options), model, ctx)


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(16, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (16,), generator=g), torch.arange(16))


def test_a_step_pulls_the_leader_to_its_epoch_start_weights_and_adds_its_fisher_trace():
    method = _method()
    model = method.model
    with torch.no_grad():  # modality a's slice of the fusion head sharper: the scores differ clearly
        model.fusion_head.net.weight[:, :4] *= 6
    method.on_epoch_start(1)
    start = copy.deepcopy(model)
    method.step(_batch(1))  # theta moves away from theta_prev
    first_trace = float(method.trace)
    batch = _batch(2)
    twin = copy.deepcopy(model)
    out = twin(batch.inputs)
    logits = {"fused": out.fused_logits, **out.unimodal_logits}
    torch.stack([F.cross_entropy(v.float(), batch.labels) for v in logits.values()]).sum().backward()  # as the step
    scores = {m: float(F.softmax(u.detach().float(), 1).gather(1, batch.labels.view(-1, 1)).sum())
              for m, u in out.unimodal_logits.items()}
    leader, other = sorted(scores, key=scores.get, reverse=True)
    assert scores[leader] - scores[other] > 0.05  # a clear leader, whatever the rounding
    beta = 0.95 if leader == "a" else 0.1
    beta *= math.exp(math.tanh(scores[leader] - scores[other]))
    expected_grads = {}
    for (name, p), p0 in zip(twin.named_parameters(), start.parameters()):
        g = p.grad.clone()
        if name.startswith(f"encoders.{leader}."):
            g += beta * (p.detach() - p0.detach())
        expected_grads[name] = g
    result = method.step(batch)
    assert result.logs[f"inforeg.beta.{leader}"].item() == pytest.approx(beta, rel=1e-6)
    assert result.logs[f"inforeg.beta.{other}"].item() == 0.0
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):  # SGD lr 1: theta - grad
        torch.testing.assert_close(p.detach(), q.detach() - expected_grads[name], rtol=0, atol=1e-10, msg=name)
    # the trace: the first encoder's linear weights, mean squared (regulated) gradient, summed over layers and steps
    layers = [n for n, mod in twin.encoders["a"].named_modules() if isinstance(mod, torch.nn.Linear)]
    step_trace = sum(expected_grads[f"encoders.a.{n}.weight"].square().mean().item() for n in layers)
    assert float(method.trace) == pytest.approx(first_trace + step_trace, rel=1e-12)
    assert method.on_epoch_end(1)["method.inforeg.trace.a"] == pytest.approx(first_trace + step_trace, rel=1e-12)


def test_outside_the_window_no_encoder_is_pulled():
    method = _method(threshold=0.5)
    method.history = [1.0] * 11  # a flat trace for 11 epochs: k = (1 - 1) / 1 = 0, the window has closed
    method.on_epoch_start(12)
    assert method.rate == 0.0 and not method.in_window
    method.step(_batch(1))
    result = method.step(_batch(2))
    assert all(result.logs[f"inforeg.beta.{m}"].item() == 0.0 for m in ("a", "b"))


def test_epoch_start_snapshots_each_encoder_and_computes_k_from_the_traces():
    method = _method()
    method.on_epoch_start(1)
    assert method.rate == 1.0
    method.step(_batch(1))
    method.on_epoch_end(1)
    method.on_epoch_start(2)
    assert method.rate == pytest.approx(1.0)  # one trace: (t0 / 10) / (t0 / 10)
    for m in ("a", "b"):
        assert all(torch.equal(p, q) for p, q in zip(method.model.encoders[m].parameters(), method.previous[m]))
    state = method.state_dict()
    fresh = _method()
    fresh.load_state_dict(state)
    assert fresh.history == method.history and fresh.rate == method.rate
    assert all(torch.equal(p, q) for p, q in zip(fresh.previous["a"], method.previous["a"]))


def test_layer_fisher_skips_layers_without_gradient():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[1].weight.grad = torch.tensor([[3.0, 1.0]])
    assert layer_fisher(net).item() == pytest.approx(5.0)  # mean(9, 1); the first layer has no gradient


def test_an_unknown_trace_modality_is_refused_before_training():
    cls = METHODS["inforeg"]
    reason = cls.check_modalities(cls.Options(trace_modality="video"), ["audio", "image"])
    assert "trace_modality 'video'" in reason and "audio, image" in reason


def test_cli_run_regulates_in_its_window_and_logs_the_trace(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "method.name=inforeg", "--set", "train.epochs=2", "--set", "dataset.n_train=200", "--set", "dataset.n_val=50", "--set", "dataset.n_test=50")
    assert code == 0, err[-2000:]
    records, ev, _ = run_results(tmp_path)
    assert [r["method.inforeg.k"] for r in records] == [1.0, pytest.approx(1.0)]
    assert all(r["method.inforeg.trace.audio"] > 0 for r in records)
    assert sum(records[1][f"method.inforeg.beta.{m}"] for m in ("audio", "image", "vector")) > 0.9
