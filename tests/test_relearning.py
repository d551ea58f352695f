"""Diagnosing & Re-learning: purity, the re-initialisation weight and rule on hand-computable inputs, the reference's
re-initialisation epochs, a diagnosis on a real model, and a CLI run that re-initialises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import ModalitySpec, SplitArrays
from bogc_cli.data.loader import make_loader
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.relearning import cluster_purity, purity, relearn_weight, soft_reinit
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli, run_results

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def reference_purity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ours.py's purity_score, written out: each cluster votes its most frequent label (ties: the lowest)."""
    voted = np.zeros(y_true.shape)
    for cluster in np.unique(y_pred):
        labels, counts = np.unique(y_true[y_pred == cluster], return_counts=True)
        voted[y_pred == cluster] = labels[np.argmax(counts)]
    return float((voted == y_true).mean())


def test_purity_hand_case():
    labels = np.array([0, 0, 1, 1, 1, 2])
    clusters = np.array([5, 5, 5, 7, 7, 7])  # cluster 5: {0, 0, 1} votes 0; cluster 7: {1, 1, 2} votes 1
    assert purity(labels, clusters) == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, c = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
        assert purity(y, c) == pytest.approx(reference_purity(y, c))


def test_well_separated_clusters_have_purity_one():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    features = np.eye(3)[labels] * 10 + rng.normal(scale=0.1, size=(60, 3))
    assert cluster_purity(features, labels, 3) == 1.0


def test_weight_is_tanh_of_lambda_times_the_purity_gap():
    assert relearn_weight(0.9, 0.6, 3.0) == pytest.approx(math.tanh(0.9))
    assert relearn_weight(0.6, 0.9, 3.0) == pytest.approx(math.tanh(0.9))  # |gap|
    assert relearn_weight(0.7, 0.7, 3.0) == 0.0


def test_soft_reinit_moves_each_parameter_that_share_of_the_way_back():
    layer = torch.nn.Linear(2, 1)
    initial = {"weight": torch.tensor([[1.0, -1.0]]), "bias": torch.tensor([2.0])}
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0]))
    soft_reinit(layer, initial, 0.25)
    assert layer.weight.tolist() == [[2.5, 0.5]] and layer.bias.tolist() == [0.5]


def _method(**options):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, dropout=0.0), SPECS, 3)
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 3, n)
        return SplitArrays({m: (rng.standard_normal((n, *s.shape)) + labels[:, None]).astype("float32")
                            for m, s in SPECS.items()}, labels)

    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      train_eval=make_loader(split(60), 16, shuffle=False), holdout=make_loader(split(30), 16, False))
    return METHODS["relearning"](METHODS["relearning"].Options(**options), model, ctx)


def test_reinitialises_after_the_references_epochs_20_40_60_only():
    method = _method()
    due = [e for e in range(1, 120) if method.reinit_due(e)]
    assert due == [22, 42, 62]  # our epochs after the reference's epochs 20, 40, 60 (counted from 0)
    assert [e for e in range(1, 30) if _method(reinit_epoch=5, reinit_num=2).reinit_due(e)] == [7, 12]


def test_epoch_start_diagnoses_each_encoder_and_pulls_it_back_by_its_own_weight():
    method = _method(reinit_epoch=1)
    model = method.model
    with torch.no_grad():  # as if trained: every parameter moved away from its initial value
        for p in model.parameters():
            p.add_(0.5)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = method.ctx.optimizer.state  # nothing yet; the optimiser's state is never touched
    train, train_y = method.features(method.ctx.train_eval)
    held, held_y = method.features(method.ctx.holdout)
    method.on_epoch_start(3)  # after the reference's epoch 1
    logs = method.on_epoch_end(3)
    for m in ("a", "b"):
        p_train, p_held = cluster_purity(train[m], train_y, 3), cluster_purity(held[m], held_y, 3)
        assert logs[f"method.relearn.purity_train.{m}"] == p_train
        assert logs[f"method.relearn.purity_held_out.{m}"] == p_held
        w = relearn_weight(p_train, p_held, 3.0)
        assert logs[f"method.relearn.weight.{m}"] == w
        for name, p in model.encoders[m].named_parameters():
            expected = w * method.initial[m][name] + (1 - w) * trained[f"encoders.{m}.{name}"]
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items() if not k.startswith("encoders."))
    assert not momentum and method.reinits == 1


def test_too_few_held_out_rows_for_one_cluster_per_class_is_refused():
    from bogc_cli.errors import UserError

    method = _method()
    method.ctx.holdout = make_loader(SplitArrays({m: np.zeros((2, *s.shape), "float32") for m, s in SPECS.items()},
                                                 np.array([0, 1])), 16, False)
    with pytest.raises(UserError, match="holdout_fraction"):
        method.on_epoch_start(1)


def test_cli_run_reinitialises_and_logs_the_diagnosis(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "method.name=relearning", "--set", "method.reinit_epoch=1", "--set", "train.epochs=3", "--set", "dataset.n_train=200", "--set", "dataset.n_val=50", "--set", "dataset.n_test=50")
    assert code == 0, err[-2000:]
    records, ev, _ = run_results(tmp_path)
    assert not any(k.startswith("method.relearn.") for k in records[0] | records[1])
    weights = [records[2][f"method.relearn.weight.{m}"] for m in ("audio", "image", "vector")]
    assert all(0 <= w < 1 for w in weights)
    assert ev["train_rows"] + ev["holdout_rows"] == 200 and 20 <= ev["holdout_rows"] <= 25  # 11.1%, stratified
