"""MMCosine's rule on hand-computable inputs (GeWu-Lab/MMCosine_ICASSP23 main_CD.py --mmcosine True), one step
inside a model, and its refusals."""

import copy

import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.mmcosine import CosineConcatHead, MMCosine, MMCosineOptions, cosine_logits
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def small_model(unimodal_logits: str = "heads", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=16, unimodal_logits=unimodal_logits),
                        SPECS, 3).double()
    MMCosine.adapt_model(MMCosineOptions(), model)
    return model


def make_batch(seed: int, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def test_cosine_logits_by_hand():
    z = torch.tensor([[3.0, 4.0], [0.0, -2.0]])             # unit rows [0.6, 0.8], [0, -1]
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-5.0, 0.0]])  # unit rows [1, 0], [0, 1], [-1, 0]
    expected = 10 * torch.tensor([[0.6, 0.8, -0.6], [0.0, -1.0, 0.0]])
    torch.testing.assert_close(cosine_logits(z, w, 10.0), expected)
    # the scale of features or weights does not matter, only directions
    torch.testing.assert_close(cosine_logits(7 * z, 0.1 * w, 10.0), expected)


def test_head_sums_each_modalitys_cosines_with_its_block():
    head = CosineConcatHead([2, 3], 4, scaling=15.0)
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(5, 2, generator=g), torch.randn(5, 3, generator=g)
    w = head.net.weight.detach()
    expected = cosine_logits(za, w[:, :2], 15.0) + cosine_logits(zb, w[:, 2:], 15.0)
    torch.testing.assert_close(head([za, zb]), expected)
    parts = head.slice_logits([za, zb])
    torch.testing.assert_close(parts[0] + parts[1], head([za, zb]))
    assert head.net.bias is None and head([za, zb]).abs().max() <= 2 * 15.0 + 1e-5  # no bias, |s cos| <= s


def test_adapted_model_and_one_step_train_the_cosine_logits():
    model = small_model()
    assert isinstance(model.fusion_head, CosineConcatHead) and model.fusion_head.scaling == 10.0
    twin = copy.deepcopy(model)
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.2))
    batch = make_batch(1)
    MMCosine(MMCosineOptions(), model, ctx).step(batch)
    out = twin(batch.inputs)
    feats = [out.features["a"], out.features["b"]]
    w = twin.fusion_head.net.weight
    fused = cosine_logits(feats[0], w[:, :4], 10.0) + cosine_logits(feats[1], w[:, 4:], 10.0)
    torch.testing.assert_close(out.fused_logits, fused)
    probes = sum(F.cross_entropy(twin.unimodal_heads[m](z.detach()), batch.labels) for m, z in out.features.items())
    (F.cross_entropy(fused, batch.labels) + probes).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.2 * q.grad, msg=name)


def test_fusion_slices_are_the_cosine_terms():
    model = small_model("fusion-slices")
    out = model(make_batch(2).inputs)
    torch.testing.assert_close(out.unimodal_logits["a"] + out.unimodal_logits["b"], out.fused_logits)
    w = model.fusion_head.net.weight
    torch.testing.assert_close(out.unimodal_logits["b"], cosine_logits(out.features["b"], w[:, 4:], 10.0))


def test_defaults_and_registration():
    assert MMCosineOptions().scaling == 10.0  # main_CD.py's --scaling default and README command
    assert METHODS["mmcosine"] is MMCosine


def test_refuses_a_fusion_head_without_linear_blocks(tmp_path, capsys):
    for setting in ("model.fusion=gated", "model.fusion_hidden=32"):
        code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=mmcosine",
                                 "--set", setting, "--out", tmp_path)
        assert code == 2 and "model.fusion: concat" in out + err, setting
    assert not any(tmp_path.iterdir())
