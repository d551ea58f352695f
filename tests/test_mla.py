"""MLA's rule on hand-computable inputs, inside one alternating step, and end to end."""

import copy
import json
import math

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.mla import (MLA, MLAHead, MLAOptions, batch_entropy, batch_entropy_weights, entropy_weights,
                                  owm_update, project_gradient)
from bogc_cli.models.build import build_model
from bogc_cli.models.encoders import MLPEncoder
from bogc_cli.recipe import ModelBlock, load_recipe
from cli_helpers import run_cli

SMALL = ["--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
         "--set", "train.epochs=2", "--set", "model.cnn_channels=[8,16]", "--set", "model.feature_dim=32"]


# ------------------------------------------------------------------ projector
def test_projector_update_by_hand():
    x = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)  # |x|^2 = 9
    p = owm_update(torch.eye(3, dtype=torch.float64), x, alpha=1.0)
    torch.testing.assert_close(p, torch.eye(3, dtype=torch.float64) - torch.outer(x, x) / 10.0)
    torch.testing.assert_close(p @ x, x / 10.0)  # alpha / (alpha + |x|^2) of x is left
    p = owm_update(torch.eye(3, dtype=torch.float64), x, alpha=1e-9)
    assert (p @ x).norm() < 1e-9                  # small alpha: x is projected out
    e = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)  # orthogonal to x: untouched
    torch.testing.assert_close(p @ e, e)


def test_projector_keeps_every_seen_input_and_gradients_orthogonal_to_them():
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(6, generator=g, dtype=torch.float64) for _ in range(3)]
    p = torch.eye(6, dtype=torch.float64)
    for x in xs:
        p = owm_update(p, x, alpha=1e-8)
    for x in xs:
        assert (p @ x).norm() < 1e-6 * x.norm()
    grad = torch.randn(4, 6, generator=g, dtype=torch.float64)
    projected = project_gradient(grad, p)
    for x in xs:
        assert (projected @ x).abs().max() < 1e-6 * grad.abs().max() * x.norm()
    assert projected.norm() > 0.1 * grad.norm()  # the 3 unseen directions of 6 still learn
    # the recursion is regularised least squares: P = (I + sum x x^T / alpha)^-1
    q = torch.eye(6, dtype=torch.float64)
    for x in xs:
        q = owm_update(q, x, alpha=0.5)
    expected = torch.linalg.inv(torch.eye(6, dtype=torch.float64) + sum(torch.outer(x, x) for x in xs) / 0.5)
    torch.testing.assert_close(q, expected)


# ------------------------------------------------------------------ inference weights
def test_entropy_weights_by_hand():
    uniform = torch.tensor([[0.0, 0.0]])                 # p = (1/2, 1/2): exp(-e) = 1/2
    confident = torch.tensor([[math.log(3.0), 0.0]])     # p = (3/4, 1/4): exp(-e) = .75^.75 * .25^.25
    w = entropy_weights([uniform, confident])
    a, b = 0.5, 0.75 ** 0.75 * 0.25 ** 0.25
    torch.testing.assert_close(w, torch.tensor([[a / (a + b), b / (a + b)]]))
    w3 = entropy_weights([torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]]),
                          torch.tensor([[5.0, 0.0, 0.0]])])
    assert w3.sum().item() == pytest.approx(1.0)
    assert w3.argmin().item() == 1 and w3.argmax().item() == 2  # uniform smallest, most confident largest
    torch.testing.assert_close(entropy_weights([uniform, uniform]), torch.tensor([[0.5, 0.5]]))


def test_reference_batch_entropy_by_hand():
    # the reference's calculate_entropy: softmax over the batch dimension, entropy summed over the whole batch
    a = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # columns over the batch: (1/4, 3/4) and (1/2, 1/2)
    h_a = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75) + 2 * 0.5 * math.log(0.5))
    assert batch_entropy(a).item() == pytest.approx(h_a)
    b = torch.zeros(2, 2)  # every column uniform over the batch: the largest entropy, 4 * (1/2 ln 2)
    h_b = 2 * math.log(2.0)
    assert batch_entropy(b).item() == pytest.approx(h_b)
    w = batch_entropy_weights([a, b])  # one weight per modality for the whole batch
    wa = math.exp(h_b - h_a) / (math.exp(h_b - h_a) + 1.0)
    torch.testing.assert_close(w, torch.tensor([[wa, 1 - wa], [wa, 1 - wa]]))
    # a sample's weight depends on the rest of its batch (unlike the paper's per-sample form)
    alone = batch_entropy_weights([a[:1], b[:1]])
    torch.testing.assert_close(alone, torch.tensor([[0.5, 0.5]]))  # one row: both columns' softmax is 1
    torch.testing.assert_close(entropy_weights([a, b])[0], torch.tensor([0.5, 0.5]))  # per sample: row 0 ties
    assert abs(w[0, 0].item() - 0.5) > 0.02                                            # per batch: it does not


VEC = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32"),
       "c": ModalitySpec("vector", [4], "float32")}


def small_model(options: MLAOptions, specs=VEC, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), specs, 3)
    MLA.adapt_model(options, model)
    return model.double()


def make_batch(specs=VEC, n: int = 32):
    g = torch.Generator().manual_seed(1)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in specs.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


@pytest.mark.parametrize("fusion, entropy_over", [("entropy", "batch"), ("entropy", "sample"), ("fixed", "batch")])
def test_adapted_model_predicts_the_weighted_sum_of_the_shared_head(fusion, entropy_over):
    model = small_model(MLAOptions(fusion=fusion, entropy_over=entropy_over)).eval()
    batch = make_batch()
    out = model(batch.inputs)
    head = model.fusion_head.linear
    feats = model.encode(batch.inputs)
    for m in VEC:  # unimodal logits are h(z_m), one shared head
        torch.testing.assert_close(out.unimodal_logits[m], head(feats[m]))
    uni = [out.unimodal_logits[m] for m in VEC]
    if fusion == "fixed":
        w = torch.full((32, 3), 1 / 3)
    elif entropy_over == "batch":  # the default: one weight per modality for the batch
        w = torch.softmax(-torch.stack([batch_entropy(z) for z in uni]), 0).expand(32, 3)
    else:
        w = entropy_weights(uni)
    expected = sum(w[:, i:i + 1] * uni[i] for i in range(3))
    torch.testing.assert_close(out.fused_logits, expected.float())
    assert isinstance(model.fusion_head, MLAHead)
    names = [n for n, _ in model.named_parameters() if "head" in n]
    assert names == ["fusion_head.linear.weight", "fusion_head.linear.bias"]  # owned once, by the fusion head
    assert "fusion_head.projector" in model.state_dict()


def test_different_feature_sizes_are_refused():
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), VEC, 3)
    model.encoders["c"] = MLPEncoder(4, feature_dim=5, hidden_dim=16)  # as a 512-d resnet18 beside 8-d mlps
    with pytest.raises(UserError, match="same feature size"):
        MLA.adapt_model(MLAOptions(), model)
    recipe = load_recipe("recipes/quickstart.yaml")
    recipe.model.encoders = {"audio": "resnet18", "vector": "mlp"}
    assert "model.feature_dim: 512" in MLA.check_config(MLAOptions(), recipe)


# ------------------------------------------------------------------ one step
def recording(optim_cls):
    class Recording(optim_cls):
        """An optimiser that counts its steps and snapshots the parameters at every ``zero_grad``
        (the start of each sub-step and the end of the batch: after any post-step projection)."""

        def __init__(self, model, **kw):
            super().__init__(model.parameters(), **kw)
            self.model, self.snapshots, self.steps = model, [], 0

        def step(self, closure=None):
            self.steps += 1
            return super().step(closure)

        def zero_grad(self, set_to_none=True):
            self.snapshots.append({n: p.detach().clone() for n, p in self.model.named_parameters()})
            super().zero_grad(set_to_none=set_to_none)

    return Recording


def run_step(options: MLAOptions, opt: str = "sgd"):
    model = small_model(options)
    before = copy.deepcopy(model)
    optimizer = (recording(torch.optim.SGD)(model, lr=0.5) if opt == "sgd"
                 else recording(torch.optim.AdamW)(model, lr=0.05, weight_decay=0.01))
    method = MLA(options, model, StepContext(torch.device("cpu"), optimizer))
    batch = make_batch()
    result = method.step(batch)
    return model, before, optimizer, result, batch


def test_defaults_follow_the_reference_code():
    o = MLAOptions()
    assert (o.fusion, o.entropy_over, o.owm) == ("entropy", "batch", "none")


def test_one_step_is_m_optimiser_steps_each_moving_only_its_encoder_and_the_head():
    model, before, opt, result, _ = run_step(MLAOptions(owm="gradient"))
    assert opt.steps == 3 and len(opt.snapshots) == 4
    states = opt.snapshots
    for k, m in enumerate(model.modalities):
        changed = {".".join(n.split(".")[:2]) for n in states[k + 1] if not torch.equal(states[k + 1][n], states[k][n])}
        assert changed == {f"encoders.{m}", "fusion_head.linear"}, (m, changed)
    logs = result.logs
    assert {f"mla.{c}.{m}" for c in ("loss", "weight") for m in "abc"} <= set(logs)
    assert sum(logs[f"mla.weight.{m}"].item() for m in "abc") == pytest.approx(1.0)
    assert 0 < logs["mla.p_trace"].item() < 1
    assert not torch.equal(model.fusion_head.projector, torch.eye(8, dtype=torch.float64))


def second_substep_head_move(owm: str, opt: str):
    """(head weight change in the second sub-step [C, d], batch-mean input of the first sub-step [d])."""
    _, before, optimizer, _, batch = run_step(MLAOptions(owm=owm, alpha=1e-6), opt)
    w1, w2 = (s["fusion_head.linear.weight"] for s in optimizer.snapshots[1:3])
    with torch.no_grad():
        x_prev = before.encoders["a"](batch.inputs["a"]).mean(0)
    return w2 - w1, x_prev


def leak(delta, x):
    return ((delta @ x).norm() / (delta.norm() * x.norm())).item()


@pytest.mark.parametrize("mode,opt", [("gradient", "sgd"), ("update", "sgd"), ("update", "adamw")])
def test_later_substeps_leave_the_head_unchanged_on_earlier_inputs(mode, opt):
    assert leak(*second_substep_head_move(mode, opt)) < 1e-4
    assert leak(*second_substep_head_move("none", opt)) > 1e-2  # without OWM the head moves on them


def test_adamw_reshapes_a_projected_gradient():
    # why owm: update exists: Adam's per-coordinate scaling and weight decay break the orthogonality
    assert leak(*second_substep_head_move("gradient", "adamw")) > 1e-2


def test_owm_off_keeps_the_identity_projector():
    model, *_ = run_step(MLAOptions())  # the default, as the reference code runs
    torch.testing.assert_close(model.fusion_head.projector, torch.eye(8, dtype=torch.float64))


# ------------------------------------------------------------------ recipes and CLI
def test_registered_and_needs_two_modalities():
    assert METHODS["mla"] is MLA
    assert "at least 2 modalities" in MLA.check_modalities(MLAOptions(), ["audio"])


def test_refuses_fusion_slices_and_other_fusion_heads(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=mla",
                             "--set", "model.unimodal_logits=fusion-slices", "--out", tmp_path)
    assert code == 2 and "model.unimodal_logits: heads" in out + err
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=mla",
                             "--set", "model.fusion=gated", "--out", tmp_path)
    assert code == 2 and "model.fusion: concat" in out + err
    assert not any(tmp_path.iterdir())


def test_cli_trains_logs_coefficients_and_eval_uses_the_same_rule(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=mla",
                             *SMALL, "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "mla" / "seed0"
    trained = json.loads((run / "eval.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = set(records[-1])
    for m in ("audio", "image", "vector"):
        assert {f"method.mla.weight.{m}", f"method.mla.loss.{m}"} <= keys
    assert sum(records[-1][f"method.mla.weight.{m}"] for m in ("audio", "image", "vector")) == pytest.approx(1.0)
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, out + err
    again = json.loads((run / "eval.json").read_text())
    assert again["accuracy"] == pytest.approx(trained["accuracy"])  # projector and rule restored at eval
    assert set(again["unimodal_accuracy"]) == {"audio", "image", "vector"}
