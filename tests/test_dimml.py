"""DI-MML's rule on hand-computable inputs (fanyunfeng-bit/DI-MML main_CFT.py, main_CFT_stage2.py,
loss/contrast_loss.py), its two stages inside a model, and its refusals."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.dimml import (DIMML, DIMMLHead, DIMMLOptions, confidence_weights, discriminative_dims, top_dims,
                                   unidirectional_contrast)
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def test_discriminative_dimensions_by_hand():
    # dimension 0 separates the classes, dimension 1 does not: class means (0, 1) and (10, 1.5)
    feats = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 1.0], [10.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    rates = discriminative_dims(feats, labels, 2)
    # dim 1: row values 0, 2, 1, 2 against means 1 (class 0) and 1.5 (class 1): nearest 0, 1, 0, 1 -> 2 of 4 hit
    assert rates.tolist() == pytest.approx([1.0, 0.5])
    assert top_dims(rates).tolist() == [True, False]
    # a class without rows is never nearest (its mean would be 0/0)
    rates = discriminative_dims(feats, labels, 3)
    assert rates.tolist() == pytest.approx([1.0, 0.5])
    assert discriminative_dims(feats, labels, 2, chunk=1).tolist() == pytest.approx([1.0, 0.5])


def test_unidirectional_contrast_by_hand_and_the_reference_loop():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 0.0]], requires_grad=True)
    dims = torch.tensor([True, True, False])
    # similarities on dims 0, 1: s0.t0 = 1, s0.t1 = 4, s1.t0 = 0, s1.t1 = 1; T = 2
    expected = ((math.log(math.exp(0.5) + math.exp(2.0)) - 0.5) + (math.log(1 + math.exp(0.5)) - 0.5)) / 2
    loss = unidirectional_contrast(s, t, dims, temperature=2.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert t.grad is None and s.grad[:, 2].abs().sum() == 0  # the teacher is detached; other dims untouched

    def reference(sf, tf, temperature):  # SupConLoss's per-row loop, one direction
        total = 0
        for i in range(sf.shape[0]):
            total += -torch.log(torch.exp(sf[i] @ tf[i] / temperature) / torch.exp(sf[i] @ tf.T / temperature).sum())
        return total / sf.shape[0]

    g = torch.Generator().manual_seed(0)
    sf, tf = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(4, dtype=torch.bool)
    assert unidirectional_contrast(sf, tf, mask, 0.5).item() == pytest.approx(reference(sf, tf, 0.5).item())
    empty = torch.zeros(4, dtype=torch.bool)
    assert unidirectional_contrast(sf, tf, empty, 0.5).item() == pytest.approx(math.log(6))


def test_contrast_against_a_global_batch_uses_the_offset_row():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    mask = torch.ones(3, dtype=torch.bool)
    whole = unidirectional_contrast(s, t, mask, 1.0)
    parts = [unidirectional_contrast(s[:4], t, mask, 1.0, offset=0), unidirectional_contrast(s[4:], t, mask, 1.0, 4)]
    assert whole.item() == pytest.approx((4 * parts[0].item() + 2 * parts[1].item()) / 6, rel=1e-6)


def test_confidence_weights_by_hand():
    one = torch.log(torch.tensor([[0.9, 0.1]]))
    two = torch.log(torch.tensor([[0.4, 0.6]]))
    w = confidence_weights([one, two], temperature=1.0)
    z = math.exp(0.9) + math.exp(0.6)
    assert w[0].tolist() == pytest.approx([math.exp(0.9) / z, math.exp(0.6) / z])
    w3 = confidence_weights([one, two], temperature=3.0)
    assert w3[0, 0].item() < w[0, 0].item()  # a higher temperature flattens the weights


def small_model(seed: int = 0, fusion_temperature: float = 1.0):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=16), SPECS, 3)
    DIMML.adapt_model(DIMMLOptions(fusion_temperature=fusion_temperature), model)
    return model.double()


def make_batch(seed: int, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def make_method(model, lr=0.1, train_eval=None, **options) -> DIMML:
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=lr), train_eval=train_eval)
    return DIMML(DIMMLOptions(**options), model, ctx)


def test_adapted_model_predicts_the_confidence_weighted_sum():
    model = small_model(fusion_temperature=2.0)
    assert isinstance(model.fusion_head, DIMMLHead)
    out = model(make_batch(0).inputs)
    own = [out.unimodal_logits["a"], out.unimodal_logits["b"]]
    fusion = model.fusion_head.concat(torch.cat([out.features["a"], out.features["b"]], dim=1))
    w = confidence_weights(own + [fusion], 2.0)
    expected = sum(w[:, k:k + 1] * z for k, z in enumerate(own + [fusion]))
    torch.testing.assert_close(out.fused_logits, expected)


def test_stage_one_step_by_hand_the_fusion_classifier_never_moves_an_encoder():
    model = small_model()
    twin = copy.deepcopy(model)
    batch = make_batch(1)
    method = make_method(model, train_eval=[batch], contrast_start_epoch=0, temperature=2.0, weight=0.5)
    method.on_epoch_start(1)  # the reference's epoch 0: dimensions chosen now, the contrast on
    assert method.masks is not None and set(method.masks) == {"a", "b"}
    logs = method.step(batch).logs
    assert "loss.contrast" in logs
    out = twin(batch.inputs)
    head, y = twin.fusion_head, batch.labels
    feats = {m: out.features[m] for m in SPECS}
    loss = sum(F.cross_entropy(out.unimodal_logits[m], y) + 0.5 * F.cross_entropy(head.shared(feats[m]), y)
               for m in SPECS)
    loss = loss + F.cross_entropy(head.concat(torch.cat([feats["a"].detach(), feats["b"].detach()], 1)), y)
    loss = loss + unidirectional_contrast(feats["a"], feats["b"], method.masks["a"]["b"], 2.0)
    loss = loss + unidirectional_contrast(feats["b"], feats["a"], method.masks["b"]["a"], 2.0)
    loss.backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, msg=name)
    # the dimensions: student a learns t's discriminative dimensions it lacks, and the reverse
    assert not (method.masks["a"]["b"] & method.masks["b"]["a"]).any()


def test_no_contrast_before_its_epoch():
    model = small_model()
    method = make_method(model, train_eval=[make_batch(0)])
    method.on_epoch_start(20)  # the reference's epoch 19
    assert method.masks is None and "loss.contrast" not in method.step(make_batch(1)).logs
    method.on_epoch_start(21)
    assert method.masks is not None and "loss.contrast" in method.step(make_batch(1)).logs


def test_stage_two_trains_only_a_fresh_fusion_classifier_on_frozen_features():
    torch.manual_seed(0)
    images = {m: ModalitySpec("image", [1, 8, 8], "float32") for m in "ab"}
    model = build_model(ModelBlock(encoders="cnn-small", cnn_channels=[4, 8], feature_dim=4), images, 3)
    DIMML.adapt_model(DIMMLOptions(), model)
    g = torch.Generator().manual_seed(0)
    batch = Batch({m: torch.randn(8, 1, 8, 8, generator=g) for m in "ab"}, torch.randint(0, 3, (8,), generator=g),
                  torch.arange(8))
    method = make_method(model, stage1_epochs=2)
    method.on_epoch_start(2)
    method.step(batch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    method.on_epoch_start(3)  # the reference's epoch 2 = stage1_epochs: stage 2 begins
    reset = model.fusion_head.concat.weight.detach().clone()
    assert not torch.equal(reset, before["fusion_head.concat.weight"])  # re-initialised
    result = method.step(batch)
    assert "loss.stage2" in result.logs
    for n, p in model.named_parameters():
        if n.startswith("fusion_head.concat."):
            continue
        assert torch.equal(p, before[n]), n  # encoders, own and shared classifiers frozen
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n  # BatchNorm statistics too (eval mode)
    assert not torch.equal(model.fusion_head.concat.weight, reset)
    assert method.state_dict()["stage2_optimizer"] is not None
    torch.testing.assert_close(result.fused_logits, model.eval()(batch.inputs).fused_logits.detach(), atol=1e-4,
                               rtol=1e-4, msg="stage 2 reports the prediction rule's logits")


def test_state_round_trip():
    model = small_model()
    method = make_method(model, train_eval=[make_batch(0)], contrast_start_epoch=0, stage1_epochs=1)
    method.on_epoch_start(1)
    method.on_epoch_start(2)
    method.step(make_batch(1))
    clone = make_method(copy.deepcopy(model), train_eval=[make_batch(0)], contrast_start_epoch=0, stage1_epochs=1)
    clone.load_state_dict(method.state_dict())
    assert all(torch.equal(clone.masks[s][t], method.masks[s][t]) for s in method.masks for t in method.masks[s])
    assert clone.stage2_optimizer.state_dict()["state"].keys() == method.stage2_optimizer.state_dict()["state"].keys()


def test_defaults_and_registration():
    o = DIMMLOptions()
    assert (o.weight, o.temperature, o.contrast_start_epoch) == (1, 1, 20)
    assert (o.stage1_epochs, o.fusion_temperature) == (150, 1)
    assert METHODS["dimml"] is DIMML and DIMML.epoch_base == 0


def test_refuses_unequal_feature_sizes_and_fusion_slices(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=dimml",
                             "--set", "model.unimodal_logits=fusion-slices", "--out", tmp_path)
    assert code == 2 and "model.unimodal_logits: heads" in out + err
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=dimml",
                             "--set", "model.encoders={audio: resnet18, image: cnn-small, vector: mlp}",
                             "--out", tmp_path)
    assert code == 2 and "same feature size" in out + err
    assert not any(tmp_path.iterdir())
