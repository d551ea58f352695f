"""AGM: the Shapley split, the coefficients, the backward scaling, one step and a CLI run."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.agm import (AGM, AGMOptions, agm_coefficients, agm_ratios, coalition_values, mono_scores,
                                 proper_coalitions, scale_backward, shapley_split)
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli


def split_of(fn, inputs):
    names = list(inputs)
    values = coalition_values(fn, inputs, proper_coalitions(names))
    values[frozenset(names)] = fn(inputs)
    return shapley_split(values, names)


def test_two_modalities_match_the_baselines_formula_and_sum_to_the_output():
    # f(a, v) = 2a + 3v + a v, per sample and per class (inputs [B, C])
    def f(x):
        return 2 * x["a"] + 3 * x["v"] + x["a"] * x["v"]

    g = torch.Generator().manual_seed(0)
    inputs = {"a": torch.randn(5, 3, generator=g, dtype=torch.float64),
              "v": torch.randn(5, 3, generator=g, dtype=torch.float64)}
    a, v = inputs["a"], inputs["v"]
    o = split_of(f, inputs)
    torch.testing.assert_close(o["a"], 2 * a + a * v / 2)  # by hand: the interaction is shared equally
    torch.testing.assert_close(o["v"], 3 * v + a * v / 2)
    zero = torch.zeros_like(a)
    torch.testing.assert_close(o["a"], (f({"a": a, "v": v}) - f({"a": zero, "v": v}) + f({"a": a, "v": zero})) / 2)
    torch.testing.assert_close(o["v"], (f({"a": a, "v": v}) - f({"a": a, "v": zero}) + f({"a": zero, "v": v})) / 2)
    torch.testing.assert_close(o["a"] + o["v"], f(inputs))


def test_three_modalities_exact_shapley_by_hand():
    # f = a + 2b + 3c + ab + 4bc + 6abc: pairwise terms split in halves, the triple term in thirds
    def f(x):
        a, b, c = x["a"], x["b"], x["c"]
        return a + 2 * b + 3 * c + a * b + 4 * b * c + 6 * a * b * c

    inputs = {"a": torch.tensor([[2.0], [1.0]], dtype=torch.float64),
              "b": torch.tensor([[3.0], [-1.0]], dtype=torch.float64),
              "c": torch.tensor([[0.5], [2.0]], dtype=torch.float64)}
    a, b, c = inputs["a"], inputs["b"], inputs["c"]
    o = split_of(f, inputs)
    torch.testing.assert_close(o["a"], a + a * b / 2 + 2 * a * b * c)
    torch.testing.assert_close(o["b"], 2 * b + a * b / 2 + 2 * b * c + 2 * a * b * c)
    torch.testing.assert_close(o["c"], 3 * c + 2 * b * c + 2 * a * b * c)
    torch.testing.assert_close(o["a"] + o["b"] + o["c"], f(inputs))
    assert o["a"][0].item() == pytest.approx(11.0)  # a=2, b=3, c=.5: 2 + 6/2 + 2*6*0.5


def test_coalitions_run_in_one_batched_call_with_inputs_zeroed():
    calls = []

    def f(x):
        calls.append(x["a"].shape[0])
        return torch.cat([x["a"], x["b"], x["c"]], dim=1)

    inputs = {m: torch.full((4, 1), float(i + 1)) for i, m in enumerate("abc")}
    coalitions = proper_coalitions(list("abc"))
    assert len(coalitions) == 6 and frozenset("abc") not in coalitions
    values = coalition_values(f, inputs, coalitions)
    assert calls == [24]
    torch.testing.assert_close(values[frozenset("ac")], torch.tensor([[1.0, 0.0, 3.0]]).expand(4, 3))


def test_scores_are_cross_entropy_with_a_probability_floor():
    o = {"a": torch.tensor([[0.0, 0.0], [100.0, -100.0]]), "v": torch.tensor([[2.0, 0.0], [0.0, 0.0]])}
    s = mono_scores(o, torch.tensor([0, 1]))
    assert s["a"].item() == pytest.approx((math.log(2) + -math.log(1e-8)) / 2, rel=1e-6)  # 200 nats capped at 18.4
    assert s["v"].item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2, rel=1e-6)


def test_ratios_follow_the_reference_for_two_and_three_modalities():
    r = agm_ratios(torch.tensor([0.5, 1.25], dtype=torch.float64))
    assert r.tolist() == pytest.approx([math.exp(1.25 - 0.5), math.exp(0.5 - 1.25)])  # r_a = exp(s_v - s_a)
    r = agm_ratios(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert r.tolist() == pytest.approx([math.exp(1.5), 1.0, math.exp(-1.5)])  # exp(3/2 (mean - s_m))


def test_coefficient_formula_and_its_clip():
    scores = torch.tensor([0.5, 1.5], dtype=torch.float64)   # a dominates now: r = (e, 1/e)
    means = torch.tensor([1.0, 1.0], dtype=torch.float64)    # but on average the two are even: rbar = (1, 1)
    r, rbar, coeff = agm_coefficients(scores, means, alpha=2.0)
    assert rbar.tolist() == [1.0, 1.0]
    assert coeff[0].item() == pytest.approx(math.exp(2.0 * (1 - math.e)))      # dominant: slowed
    assert coeff[1].item() == pytest.approx(math.exp(2.0 * (1 - 1 / math.e)))  # weaker: sped up
    # rbar - r = e^12 - 1 >> 10: the exponent is clipped at alpha * 10
    _, _, coeff = agm_coefficients(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 12.0]), alpha=0.5)
    assert coeff[0].item() == pytest.approx(math.exp(0.5 * 10), rel=1e-6)
    assert coeff[1].item() == pytest.approx(math.exp(0.5 * (math.exp(-12) - 1)), rel=1e-6)
    _, _, coeff = agm_coefficients(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 12.0]), alpha=0.5, clip=3.0)
    assert coeff[0].item() == pytest.approx(math.exp(1.5), rel=1e-6)


def test_backward_scaling_leaves_the_forward_and_scales_the_gradient_exactly():
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 1.5, -1.0], dtype=torch.float64, requires_grad=True)

    def run(coeff):
        x.grad = w.grad = None
        z = x * 2  # "encoder features"
        if coeff is not None:
            scale_backward(z, coeff)
        y = ((z * w).sum()) ** 2
        y.backward()
        return y.detach(), x.grad.clone(), w.grad.clone()

    y0, gx0, gw0 = run(None)
    y1, gx1, gw1 = run(torch.tensor(0.3, dtype=torch.float64))
    assert torch.equal(y0, y1)                 # forward value unchanged
    torch.testing.assert_close(gx1, 0.3 * gx0)  # the branch behind z: exactly coeff times
    torch.testing.assert_close(gw1, gw0)        # the rest of the graph: untouched


SPECS = {"audio": ModalitySpec("audio", [1, 12, 12], "float32"), "image": ModalitySpec("image", [1, 10, 10], "float32")}


def test_step_scales_each_encoder_update_by_its_coefficient_and_nothing_else():
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="cnn-small", cnn_channels=[4, 8], feature_dim=8), SPECS, 3)
    plain = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = Batch({m: torch.randn(16, *s.shape, generator=g) for m, s in SPECS.items()},
                  torch.randint(0, 3, (16,), generator=g), torch.arange(16))
    before = copy.deepcopy(model.state_dict())

    method = AGM(AGMOptions(alpha=2.5, gradient_path="features", fusion_grad_clip=None), model,
                 StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1), epoch=1))
    model.train()
    result = method.step(batch)
    assert all(mod.training for mod in model.modules())  # padded passes restored train mode

    # the plain step: same forward, fused loss + detached probes, no modulation
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    plain.train()
    out = plain(batch.inputs)
    loss = F.cross_entropy(out.fused_logits, batch.labels)
    for m, z in out.features.items():
        loss = loss + F.cross_entropy(plain.unimodal_heads[m](z.detach()), batch.labels)
    loss.backward()
    opt.step()

    coeff = {m: result.logs[f"agm.coeff.{m}"].item() for m in SPECS}
    # first step: rbar = 1, so coeff_m = exp(alpha (1 - r_m)) with r_a r_v = 1
    r = {m: result.logs[f"agm.ratio.{m}"].item() for m in SPECS}
    assert r["audio"] * r["image"] == pytest.approx(1.0, rel=1e-5)
    for m in SPECS:
        assert coeff[m] == pytest.approx(math.exp(2.5 * (1 - r[m])), rel=1e-5)
    assert abs(coeff["audio"] - 1) > 1e-3  # the test can see a modulation
    new, ref = model.state_dict(), plain.state_dict()
    for name, p in model.named_parameters():
        step_agm, step_plain = before[name] - new[name], before[name] - ref[name]
        if name.startswith("encoders."):
            torch.testing.assert_close(step_agm, coeff[name.split(".")[1]] * step_plain, rtol=1e-4, atol=1e-7)
        else:
            torch.testing.assert_close(step_agm, step_plain)  # fusion head and probes: plain
    for name, buf in model.named_buffers():  # BN statistics and feature means: only the training forward
        torch.testing.assert_close(buf, ref[name])
    # the running mean of the scores is kept across steps and saved
    state = method.state_dict()
    assert state["steps"] == 1
    assert state["mean_scores"]["audio"] == pytest.approx(result.logs["agm.score.audio"].item())
    fresh = AGM(AGMOptions(), model, StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    fresh.load_state_dict(json.loads(json.dumps(state)))
    torch.testing.assert_close(fresh.mean_scores, method.mean_scores)


def window_run(epochs: range, **options) -> list[dict]:
    """One step per epoch over ``epochs`` (ours, from 1) on a small model; each step's logs."""
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=8), SPECS, 3)
    method = AGM(AGMOptions(**options), model,
                 StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    g = torch.Generator().manual_seed(2)
    logs = []
    for epoch in epochs:
        method.on_epoch_start(epoch)
        batch = Batch({m: torch.randn(8, *s.shape, generator=g) for m, s in SPECS.items()},
                      torch.randint(0, 3, (8,), generator=g), torch.arange(8))
        logs.append({k: v.item() for k, v in method.step(batch).logs.items()})
    assert method.steps == len(logs)  # the running means update in every epoch, inside the window or not
    return logs


def test_before_the_window_coefficients_are_one_but_means_update():
    logs = window_run(range(1, 3), start_epoch=3)
    assert all(r["agm.coeff.audio"] == 1.0 and r["agm.coeff.image"] == 1.0 for r in logs)


def test_reference_window_sets_coefficients_in_epochs_1_to_20_and_keeps_the_last_ones_after():
    """The reference (CREMAD_main.py) loops epochs from 1 and tests 0 <= epoch <= 20: 20 epochs set the
    coefficients; its hooks keep the scale update_scale last set, so epochs 21-22 apply epoch 20's."""
    logs = window_run(range(1, 23))
    coeff = [(r["agm.coeff.audio"], r["agm.coeff.image"]) for r in logs]
    changes = [e for e in range(2, 23) if coeff[e - 1] != coeff[e - 2]]
    assert changes and max(changes) == 20  # each epoch 2..20 sets new coefficients, none after
    assert coeff[20] == coeff[21] == coeff[19] != (1.0, 1.0)


def test_trigger_clip_fires_only_when_a_fusion_weight_gradient_entry_leaves_the_unit_interval():
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=4, unimodal_logits="fusion-slices"),
                        SPECS, 3)
    method = AGM(AGMOptions(), model, StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    weight = model.fusion_head.net.weight
    params = list(model.parameters())

    def set_grads(fusion_entry: float, rest: float) -> None:
        for p in params:
            p.grad = torch.full_like(p, rest)
        weight.grad.zero_()
        weight.grad[0, 0] = fusion_entry

    # every fusion-weight entry inside [-1, 1]: no clip, although the total norm is far above 1
    set_grads(fusion_entry=-1.0, rest=3.0)
    assert method.after_backward(None, None)["agm.clipped"].item() == 0.0
    assert weight.grad[0, 0].item() == -1.0 and params[0].grad.flatten()[0].item() == 3.0
    # one entry at -1.5: every gradient scaled by 1 / total norm (clip_grad_norm_ to 1.0)
    set_grads(fusion_entry=-1.5, rest=0.5)
    total = math.sqrt(sum(p.numel() for p in params if p is not weight) * 0.25 + 1.5 ** 2)
    assert method.after_backward(None, None)["agm.clipped"].item() == 1.0
    assert weight.grad[0, 0].item() == pytest.approx(-1.5 / total, rel=1e-4)
    assert params[0].grad.flatten()[0].item() == pytest.approx(0.5 / total, rel=1e-4)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm.item() == pytest.approx(1.0, rel=1e-4)
    off = AGM(AGMOptions(fusion_grad_clip=None), model,
              StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    set_grads(fusion_entry=-1.5, rest=0.5)
    assert off.after_backward(None, None) == {} and weight.grad[0, 0].item() == -1.5


def test_shapley_path_scales_the_backward_through_each_term_as_the_reference():
    """Against a transcription of the reference's GradMod: o_a = (f(a,v) - f(0,v) + f(a,0)) / 2 with the
    padded passes in eval mode and WITH gradient, loss = CE(o_a + o_v), each term's backward times coeff."""
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="cnn-small", cnn_channels=[4, 8], feature_dim=8,
                                   unimodal_logits="fusion-slices"), SPECS, 3).double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = Batch({m: torch.randn(16, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                  torch.randint(0, 3, (16,), generator=g), torch.arange(16))
    method = AGM(AGMOptions(alpha=2.5, fusion_grad_clip=None), model,
                 StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    model.train()
    out = model(batch.inputs)
    method._inputs = batch.inputs  # as its step() lends them
    losses = method.losses(out, batch.labels)
    logs = method.before_backward(out, batch)
    sum(losses.values()).backward()
    coeff = {m: logs[f"agm.coeff.{m}"].item() for m in SPECS}
    assert abs(coeff["audio"] - 1) > 1e-3 and abs(coeff["image"] - 1) > 1e-3

    a, v = batch.inputs["audio"], batch.inputs["image"]
    twin.train()
    total = twin(batch.inputs).fused_logits
    twin.eval()
    pad_v = twin({"audio": a, "image": torch.zeros_like(v)}).fused_logits  # f(a, 0)
    pad_a = twin({"audio": torch.zeros_like(a), "image": v}).fused_logits  # f(0, v)
    twin.train()
    o_a, o_v = 0.5 * (total - pad_a + pad_v), 0.5 * (total - pad_v + pad_a)
    o_a.register_hook(lambda grad: grad * coeff["audio"])
    o_v.register_hook(lambda grad: grad * coeff["image"])
    F.cross_entropy(o_a + o_v, batch.labels).backward()
    torch.testing.assert_close(losses["fused"].double(), F.cross_entropy(total, batch.labels), rtol=1e-6, atol=0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):  # the terms are summed in float32
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert model.fusion_head.net.weight.grad.abs().sum() > 0


def test_needs_two_modalities():
    assert "at least 2 modalities" in METHODS["agm"].check_modalities(AGMOptions(), ["audio"])


def test_cli_run_logs_the_coefficients(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=agm",
                             "--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
                             "--set", "train.epochs=2", "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "agm" / "seed0"
    assert (run / "eval.json").exists()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for m in ("audio", "image", "vector"):
        for key in ("coeff", "score", "ratio"):
            assert math.isfinite(record[f"method.agm.{key}.{m}"])
