"""I2M2: the normalised product of experts, the model's prediction rule and its recipe check."""

import json

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.models.build import build_model
from bogc_cli.models.multimodal import FUSED, product_of_experts
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli

SMALL = ["--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
         "--set", "train.epochs=2"]


def test_normalised_product_by_hand():
    log = lambda p: torch.tensor([p]).log()  # noqa: E731
    joint, audio, image = log([0.5, 0.5]), log([0.9, 0.1]), log([0.6, 0.4])
    # product 0.5*0.9*0.6 : 0.5*0.1*0.4 = 0.27 : 0.02
    expected = torch.tensor([[0.27 / 0.29, 0.02 / 0.29]])
    torch.testing.assert_close(product_of_experts([joint, audio, image]).exp(), expected)


def test_product_ignores_each_experts_logit_offset():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    torch.testing.assert_close(product_of_experts([a, b]), product_of_experts([a + 3.0, b - 7.0]))
    assert torch.allclose(product_of_experts([a, b]).exp().sum(1), torch.ones(4))


SPECS = {"audio": ModalitySpec("audio", [1, 12, 12], "float32"), "vec": ModalitySpec("vector", [6], "float32")}


def test_model_predicts_the_product_and_the_loss_trains_every_expert():
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders={"audio": "cnn-small", "vec": "mlp"}, cnn_channels=[4], feature_dim=8),
                        SPECS, 3)
    x = {"audio": torch.randn(5, 1, 12, 12), "vec": torch.randn(5, 6)}
    plain = model(x)
    METHODS["i2m2"].adapt_model(None, model)
    out = model(x)
    torch.testing.assert_close(out.fused_logits,
                               product_of_experts([plain.fused_logits, *plain.unimodal_logits.values()]))
    assert {g.name: g.sources for g in model.param_groups()}["head:vec"] == (FUSED, "vec")
    method = METHODS["i2m2"](METHODS["i2m2"].Options(), model,
                             StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    losses = method.losses(out, torch.tensor([0, 1, 2, 0, 1]))
    assert list(losses) == [FUSED]
    losses[FUSED].backward()
    for name in ("fusion_head", "unimodal_heads.audio", "unimodal_heads.vec"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_cli_trains_and_eval_uses_the_product(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2",
                             *SMALL, "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "i2m2" / "seed0"
    trained = json.loads((run / "eval.json").read_text())
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, out + err
    again = json.loads((run / "eval.json").read_text())
    assert again["accuracy"] == pytest.approx(trained["accuracy"])  # same rule at train and at eval


def test_refuses_fusion_slices_at_validation(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2",
                             "--set", "model.unimodal_logits=fusion-slices", "--out", tmp_path)
    assert code == 2 and "model.unimodal_logits: heads" in out + err
    assert not any(tmp_path.iterdir())
