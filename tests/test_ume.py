"""UME (Du et al., ICML 2023): each modality's model learns from its own CE alone and the prediction is the mean of
the unimodal logits; pinned on hand-computable inputs, one real step, and one CLI run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.ume import UME, ume_loss
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock, load_recipe
from cli_helpers import run_cli, run_results

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=16), SPECS, 3).double()
    UME.adapt_model(UME.Options(), model)
    return model


def test_each_modality_has_its_own_cross_entropy():
    logits = {"a": torch.log(torch.tensor([[0.75, 0.25]])), "b": torch.log(torch.tensor([[0.4, 0.6]]))}
    losses = ume_loss(logits, torch.tensor([0]))
    assert set(losses) == {"a", "b"}
    assert losses["a"].item() == pytest.approx(-math.log(0.75))
    assert losses["b"].item() == pytest.approx(-math.log(0.4))


def test_the_prediction_is_the_mean_of_the_unimodal_logits():
    model = small_model()
    with torch.no_grad():  # o_a = [1, 3, 0] and o_b = [5, -1, 0] for any input: a says class 1, the ensemble class 0
        for m, bias in (("a", [1.0, 3.0, 0.0]), ("b", [5.0, -1.0, 0.0])):
            model.unimodal_heads[m].weight.zero_()
            model.unimodal_heads[m].bias.copy_(torch.tensor(bias))
    out = model({m: torch.randn(2, *s.shape, dtype=torch.float64) for m, s in SPECS.items()})
    assert out.fused_logits.tolist() == [[3.0, 1.0, 0.0]] * 2
    assert not list(model.fusion_head.parameters())  # no fusion layer: the ensemble has no weights of its own


def test_one_step_is_each_unimodal_models_own_sgd_step():
    model = small_model()
    twin = copy.deepcopy(model)
    method = UME(UME.Options(), model, StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    g = torch.Generator().manual_seed(1)
    batch = Batch({m: torch.randn(16, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                  torch.randint(0, 3, (16,), generator=g), torch.arange(16))
    method.step(batch)
    for m in SPECS:  # modality m's encoder and head move by the gradient of CE(o_m) alone, as in a run of its own
        params = [*twin.encoders[m].parameters(), *twin.unimodal_heads[m].parameters()]
        z = twin.unimodal_heads[m](twin.encoders[m](batch.inputs[m]))
        grads = torch.autograd.grad(F.cross_entropy(z, batch.labels), params)
        moved = [*model.encoders[m].parameters(), *model.unimodal_heads[m].parameters()]
        for p, q, gq in zip(moved, params, grads):
            torch.testing.assert_close(p.detach(), q.detach() - 0.1 * gq)


def test_recipe_check_refuses_fusion_slices():
    recipe = load_recipe("recipes/quickstart.yaml")
    bad = recipe.model_copy(update={"model": recipe.model.model_copy(update={"unimodal_logits": "fusion-slices"})})
    assert "model.unimodal_logits: heads" in UME.check_config(UME.Options(), bad)
    assert UME.check_config(UME.Options(), recipe) is None and METHODS["ume"] is UME


def test_cli_run_predicts_with_the_ensemble(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "method.name=ume",
                           "--set", "train.epochs=1", "--set", "dataset.n_train=96", "--set", "dataset.n_val=32",
                           "--set", "dataset.n_test=32", "--set", "train.batch_size=32")
    assert code == 0, err[-2000:]
    records, ev, weights = run_results(tmp_path)
    assert {"method.loss.audio", "method.loss.image", "method.loss.vector"} <= set(records[0])
    assert "method.loss.fused" not in records[0]
    assert not any(k.startswith("fusion_head.") for k in weights)  # the prediction is the heads' mean
