"""Model shapes for every encoder / fusion pair, missing-modality fills, declared gradient sources."""

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.build import build_model
from bogc_cli.models.multimodal import FUSED
from bogc_cli.recipe import ModelBlock

SPECS = {
    "audio": ModalitySpec("audio", [1, 20, 24], "float16"),
    "image": ModalitySpec("image", [3, 16, 16], "uint8"),
    "video": ModalitySpec("video", [2, 3, 32, 32], "uint8"),
    "vector": ModalitySpec("vector", [12], "float32"),
}
ENCODER_FOR = {"mlp": ["vector", "audio"], "cnn-small": ["audio", "image", "video"],
               "resnet18": ["audio", "image", "video"]}


def batch(specs, b=3):
    return {m: torch.randn(b, *s.shape) for m, s in specs.items()}


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
@pytest.mark.parametrize("encoder", ["mlp", "cnn-small", "resnet18"])
def test_every_encoder_fusion_pair_gives_logits(encoder, fusion):
    specs = {m: SPECS[m] for m in ENCODER_FOR[encoder]}
    cfg = ModelBlock(encoders=encoder, fusion=fusion, feature_dim=16, cnn_channels=[4, 8])
    model = build_model(cfg, specs, num_classes=5)
    out = model(batch(specs))
    assert out.fused_logits.shape == (3, 5)
    expected_dim = 512 if encoder == "resnet18" else 16
    for m in specs:
        assert out.unimodal_logits[m].shape == (3, 5)
        assert out.features[m].shape == (3, expected_dim)


def test_param_groups_declare_sources_and_cover_every_parameter():
    specs = {m: SPECS[m] for m in ("audio", "vector")}
    model = build_model(ModelBlock(feature_dim=8, cnn_channels=[4]), specs, 4)
    groups = {g.name: g for g in model.param_groups()}
    assert groups["encoder:audio"].sources == (FUSED, "audio")
    assert groups["fusion_head"].sources == (FUSED,)
    assert groups["head:vector"].sources == ("vector",)
    covered = {id(p) for g in groups.values() for p in g.params}
    assert covered == {id(p) for p in model.parameters()}
    # the declaration is true: L_audio has no gradient on the vector encoder or the fusion head
    out = model(batch(specs))
    out.unimodal_logits["audio"].sum().backward()
    assert all(p.grad is None for p in groups["encoder:vector"].params + groups["fusion_head"].params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["encoder:audio"].params)


def test_fusion_slices_sum_to_fused_logits():
    specs = {m: SPECS[m] for m in ("audio", "vector")}
    model = build_model(ModelBlock(feature_dim=8, cnn_channels=[4], unimodal_logits="fusion-slices"), specs, 4)
    out = model(batch(specs))
    torch.testing.assert_close(sum(out.unimodal_logits.values()), out.fused_logits)
    assert {g.name for g in model.param_groups()} == {"encoder:audio", "encoder:vector", "fusion_head"}
    with pytest.raises(UserError, match="fusion-slices"):
        build_model(ModelBlock(unimodal_logits="fusion-slices", fusion="sum"), specs, 4)


@pytest.mark.parametrize("fill", ["zero-input", "zero-feature", "mean-feature"])
def test_missing_samples_are_filled(fill):
    specs = {m: SPECS[m] for m in ("image", "vector")}
    model = build_model(ModelBlock(feature_dim=8, cnn_channels=[4], fill=fill), specs, 4).eval()
    with torch.no_grad():
        model.feature_mean("vector").copy_(torch.arange(8.0))
        x = batch(specs, b=4)
        present = {"vector": torch.tensor([True, False, True, False])}
        full = model(x)
        part = model(x, present)
    f = part.features["vector"]
    torch.testing.assert_close(f[0], full.features["vector"][0])
    if fill == "zero-feature":
        assert torch.all(f[1] == 0)
    elif fill == "mean-feature":
        torch.testing.assert_close(f[1], torch.arange(8.0))
    else:  # zero input: the encoder sees zeros, so the feature is the encoder's response to zeros
        zero = model.encode({"image": x["image"], "vector": torch.zeros_like(x["vector"])})["vector"][1]
        torch.testing.assert_close(f[1], zero)
    torch.testing.assert_close(part.features["image"], full.features["image"])


def test_feature_mean_tracks_training_features():
    specs = {"vector": SPECS["vector"]}
    model = build_model(ModelBlock(feature_dim=8), specs, 3).train()
    for _ in range(60):
        model(batch(specs, b=16))
    with torch.no_grad():
        reference = model.encode(batch(specs, b=2000))["vector"].mean(0)
    torch.testing.assert_close(model.feature_mean("vector"), reference, atol=0.05, rtol=0.1)
