"""The bogc method inside training: equal evidence reproduces uniform, options change the update,
diagnostics are logged and plotted, a recipe that names it trains."""

import copy
import json

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion import calibration
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def setup(method: str, options: dict | None = None, model=None):
    torch.manual_seed(0)
    model = model if model is not None else build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16),
                                                         SPECS, 3).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cls = METHODS[method]
    return cls(cls.Options.model_validate(options or {}), model, StepContext(torch.device("cpu"), opt)), model


def batch(n=32):
    g = torch.Generator().manual_seed(1)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


# laplace's closed form takes the cross-entropy in the model's float64, uniform (as every method) of float32
# logits: they agree to float32's rounding (laplace's rows equal float64 autograd to 1e-13, test_bogc_laplace)
@pytest.mark.parametrize(("moments", "atol"), [("microbatch", 1e-12), ("ema", 1e-12), ("laplace", 1e-8)])
def test_equal_evidence_step_equals_uniform(monkeypatch, moments, atol):
    """With every source given the same evidence, calibrated weights are 1 and a whole bogc step
    (microbatch: 4 chunks, no BatchNorm; laplace: the gradient at the posterior mean) applies the
    uniform sum L_0 + sum_m L_m."""
    monkeypatch.setattr(calibration, "evidence_of", lambda mu, var, *a, **k: torch.ones_like(mu))
    bogc, model_b = setup("bogc", {"single_source": "calibrate", "moments": moments})
    uniform, model_u = setup("uniform", model=copy.deepcopy(model_b))
    x = batch()
    bogc.step(x)
    uniform.step(x)
    for (name, pb), pu in zip(model_b.named_parameters(), model_u.parameters()):
        torch.testing.assert_close(pb, pu, rtol=0, atol=atol, msg=name)


def test_calibration_changes_the_update_and_logs_diagnostics():
    bogc, model_b = setup("bogc")
    uniform, model_u = setup("uniform", model=copy.deepcopy(model_b))
    x = batch()
    result = bogc.step(x)
    uniform.step(x)
    enc = [(pb - pu).abs().max().item() for (n, pb), pu in zip(model_b.named_parameters(), model_u.parameters())
           if n.startswith("encoders.")]
    assert max(enc) > 1e-6  # the encoders (two sources) are reweighted
    heads = [torch.allclose(pb, pu, rtol=0, atol=1e-12)
             for (n, pb), pu in zip(model_b.named_parameters(), model_u.parameters()) if not n.startswith("encoders.")]
    assert all(heads)  # single-source tensors keep the plain (mean of chunks = full batch) gradient by default
    logs = result.logs
    for key in ("bogc.uncertainty.a", "bogc.uncertainty.b", "bogc.weight_mean.fused", "bogc.weight_std.a",
                "bogc.clipped", "loss.fused", "loss.a"):
        assert key in logs, key
    assert 0 < logs["bogc.uncertainty.a"] < 1
    # weights average to 1 per tensor, so their mean over a source's dimensions stays near 1
    assert 0.5 < logs["bogc.weight_mean.fused"] < 1.5


@pytest.mark.parametrize("options", [{"moments": "ema"}, {"evidence": "snr"}, {"frame": "sign"},
                                     {"single_source": "calibrate"}, {"norm": "match"}, {"chunks": 2},
                                     {"moments": "laplace"}, {"moments": "laplace", "samples": 2},
                                     {"frame": "modality"}, {"evidence": "precision"},
                                     {"frame": "modality", "evidence": "precision", "moments": "laplace"}])
def test_every_option_takes_a_finite_step(options):
    bogc, model = setup("bogc", options)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        result = bogc.step(batch())
    assert torch.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_bogc_recipe_trains_and_plots(tmp_path):
    from rich.console import Console

    from bogc_cli.engine.trainer import train_run
    from bogc_cli.recipe import load_recipe

    r = load_recipe("recipes/quickstart-bogc.yaml", [f"output.dir={tmp_path}", "train.epochs=2",
                                                     "dataset.n_train=640", "dataset.n_val=100",
                                                     "dataset.n_test=100", "model.cnn_channels=[8]"])
    result = train_run(r.for_seed(0), Console(quiet=True))
    assert result.run_dir.parent.name == "bogc"
    record = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"method.bogc.uncertainty.audio", "method.bogc.weight_mean.fused", "method.bogc.clipped"} <= set(record)
    assert (result.run_dir / "bogc_diagnostics.png").read_bytes()[:4] == b"\x89PNG"
    assert result.test["accuracy"] > 0.2


@pytest.mark.parametrize("frame", ["modality", "dims"])
def test_diagnostics_report_the_weights_applied_not_the_raw_ones(frame):
    """Issue 17 (kind 9): with w_max below many raw weights, the logged weights are the clipped ones the update
    used: their mean and spread over each source's dimensions, all within [0, w_max]."""
    w_max = 1.2
    bogc, model = setup("bogc", {"w_max": w_max, "frame": frame})
    x = batch()
    mu, var, *_ = bogc._microbatch_moments(x)
    logs = bogc._apply(mu, var)
    assert logs["bogc.clipped"] > 0.05  # the raw weights of many dimensions were above w_max
    (group,) = bogc.groups  # the two-source encoder blocks
    cal = calibration.calibrate_segments(group.stack(mu), group.stack(var), group.segments, "snr", frame,
                                         w_max=w_max)
    assert cal.weights.max() > w_max and torch.equal(cal.applied, cal.weights.clamp(0, w_max))
    index = {s: i for i, s in enumerate(bogc.sources.sources)}
    for s in ("fused", "a", "b"):
        rows = cal.applied[group.source_of.repeat_interleave(group.segments.lengths, dim=1) == index[s]]
        torch.testing.assert_close(logs[f"bogc.weight_mean.{s}"], rows.mean(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(logs[f"bogc.weight_std.{s}"], rows.std(unbiased=False), rtol=1e-6, atol=1e-9)
        assert 0 <= logs[f"bogc.weight_mean.{s}"] <= w_max
        assert logs[f"bogc.weight_mean.{s}"] + logs[f"bogc.weight_std.{s}"] <= 2 * w_max


def test_the_weights_plot_draws_the_applied_range(tmp_path, monkeypatch):
    """The band of mean ± std is drawn within [0, w_max] (a std larger than the mean no longer reaches below 0)
    and w_max is marked."""
    import matplotlib.axes

    from bogc_cli.report.plots import plot_bogc_diagnostics

    bands, lines = [], []
    real_fill, real_axhline = matplotlib.axes.Axes.fill_between, matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, x, y1, y2, **k: bands.append((list(y1), list(y2))) or real_fill(self, x, y1, y2, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda self, y=0, **k: lines.append(y) or real_axhline(self, y, **k))
    records = [{"epoch": e, "method.bogc.weight_mean.fused": m, "method.bogc.weight_std.fused": sd,
                "method.bogc.uncertainty.a": 0.5, "method.bogc.clipped": 0.1}
               for e, m, sd in ((1, 0.8, 2.5), (2, 9.0, 3.0), (3, 1.0, 0.2))]
    paths = plot_bogc_diagnostics(records, tmp_path / "d.png", w_max=10.0)
    assert paths and paths[0].read_bytes()[:4] == b"\x89PNG"
    (low, high), = bands
    assert low == [0.0, 6.0, 0.8] and high == [pytest.approx(3.3), 10.0, pytest.approx(1.2)]
    assert 10.0 in lines


def test_linear_chunk_gradients_equal_the_chunk_loop():
    """MLP encoders (linear layers, no BatchNorm): the chunk gradients' mean and variance from one forward of
    the batch equal those of one forward and backward per chunk, where the calibration reads them."""
    bogc, _ = setup("bogc")
    assert bogc.linear_chunks is not None
    x = batch()
    mu, var, *_ = bogc._microbatch_moments(x)
    bogc.linear_chunks = None  # the loop
    mu_loop, var_loop, *_ = bogc._microbatch_moments(x)
    for s, params in bogc.sources.params.items():
        needed = torch.cat([torch.full((p.numel(),), id(p) in bogc._needs_var) for p in params])
        assert needed.any()
        torch.testing.assert_close(mu[s], mu_loop[s], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(var[s][needed], var_loop[s][needed], rtol=1e-9, atol=1e-18)
    assert any((v > 0).any() for v in var.values())


def test_linear_chunk_squares_skip_a_frozen_weight_and_keep_its_bias():
    """A linear layer whose weight is frozen and bias trained: the chunk squares fill only the bias's span of the
    flat buffer (the weight is in no pass), and they equal the loop's."""
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()
    frozen = next(m for m in model.encoders.modules() if isinstance(m, torch.nn.Linear))
    frozen.weight.requires_grad_(False)
    bogc, _ = setup("bogc", model=model)
    assert bogc.linear_chunks is not None and id(frozen.bias) in bogc._needs_var
    x = batch()
    mu, var, *_ = bogc._microbatch_moments(x)
    bogc.linear_chunks = None
    mu_loop, var_loop, *_ = bogc._microbatch_moments(x)
    for s, params in bogc.sources.params.items():
        needed = torch.cat([torch.full((p.numel(),), id(p) in bogc._needs_var) for p in params])
        torch.testing.assert_close(mu[s], mu_loop[s], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(var[s][needed], var_loop[s][needed], rtol=1e-9, atol=1e-18)
    owner = [s for s, params in bogc.sources.params.items() if any(p is frozen.bias for p in params)]
    assert owner and all(var[s].gt(0).any() for s in owner)


def test_layers_that_couple_rows_keep_the_chunk_loop():
    from bogc_cli.fusion.chunk_grads import LinearChunkMoments

    cnn = build_model(ModelBlock(encoders="cnn-small", cnn_channels=[4], feature_dim=8),
                      {"a": ModalitySpec("image", [1, 8, 8], "uint8")}, 3)
    params = [p for g in cnn.param_groups() if len(g.sources) > 1 for p in g.params]
    assert not LinearChunkMoments.applicable(cnn, params)  # convolutions and BatchNorm
    bogc, _ = setup("bogc", {"moments": "ema"})
    assert bogc.linear_chunks is None


@pytest.mark.parametrize("moments", ["microbatch", "laplace"])
def test_fusion_slices_calibrate_the_fusion_head_across_every_loss(moments):
    """With fusion-slices every loss reaches the fusion head: it is one block of 1 + M sources, calibrated per
    dimension across them (frame modality), while encoders are calibrated between the fusion loss and their own."""
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16, unimodal_logits="fusion-slices"),
                        SPECS, 3).double()
    bogc, model_b = setup("bogc", {"frame": "modality", "evidence": "precision", "moments": moments}, model=model)
    uniform, model_u = setup("uniform", model=copy.deepcopy(model_b))
    assert sorted(len(g.blocks[0].sources) for g in bogc.groups) == [2, 3]
    x = batch()
    logs = bogc.step(x).logs
    uniform.step(x)
    head = [(pb - pu).abs().max().item() for (n, pb), pu in zip(model_b.named_parameters(), model_u.parameters())
            if n.startswith("fusion_head.")]
    assert max(head) > 1e-8  # reweighted across the fusion loss and both modality losses
    assert 0 < logs["bogc.weight_mean.a"] <= 3 and torch.isfinite(logs["bogc.uncertainty.a"])


def test_a_small_batch_never_gives_batchnorm_a_one_sample_chunk():
    """A last batch of 6 rows in 4 chunks made chunks of 1 row; a 1x1 feature map then crashed BatchNorm."""
    from bogc_cli.data.cache import ModalitySpec as Spec

    specs = {"a": Spec("image", [1, 2, 2], "uint8"), "b": Spec("vector", [5], "float32")}
    model = build_model(ModelBlock(encoders={"a": "cnn-small", "b": "mlp"}, cnn_channels=[4, 4], feature_dim=8,
                                   hidden_dim=8), specs, 3)
    bogc, model = setup("bogc", {"chunks": 4}, model=model)
    g = torch.Generator().manual_seed(0)
    for n in (6, 3, 2, 8):
        inputs = {"a": torch.rand(n, 1, 2, 2, generator=g), "b": torch.randn(n, 5, generator=g)}
        before = [p.detach().clone() for p in model.parameters()]
        result = bogc.step(Batch(inputs, torch.randint(0, 3, (n,), generator=g), torch.arange(n)))
        assert torch.isfinite(result.loss).all()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
