"""The balance metrics of eval.json, on inputs whose answers are worked out by hand: exact Shapley
contributions and the imbalance degree, ECE / NLL / Brier, the linear probe, and the cost figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.engine.calibration_metrics import calibration
from bogc_cli.engine.contribution import (MAX_MODALITIES, ShapleyTooLarge, absent_features, check_modality_count,
                                          contributions, imbalance_degree, score_subsets, shapley_values)
from bogc_cli.engine.cost import forward_flops_per_sample, parameter_count
from bogc_cli.engine.linear_probe import linear_probe
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.recipe import ModelBlock


class Identity(nn.Module):
    """An 'encoder' whose feature is its input: the subsets' logits are then sums we can add up by hand."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, x):
        return x


def additive_model(modalities: list[str], classes: int = 2, fill: str = "zero-feature") -> MultimodalModel:
    """Fused logits = the sum of the present modalities' inputs (a linear concat head [I I ...], no bias)."""
    specs = {m: ModalitySpec("vector", [classes], "float32") for m in modalities}
    model = MultimodalModel(specs, classes, {m: "mlp" for m in modalities}, ModelBlock(feature_dim=classes),
                            fill=fill)
    for m in modalities:
        model.encoders[m] = Identity(classes)
    with torch.no_grad():
        model.fusion_head.net.weight.copy_(torch.eye(classes).repeat(1, len(modalities)))
        model.fusion_head.net.bias.zero_()
    return model.eval()


def subset_shapley(model, inputs: dict[str, list], labels: list[int]) -> dict:
    feats = {m: torch.tensor(v, dtype=torch.float32) for m, v in inputs.items()}
    y = torch.tensor(labels)
    absent = absent_features(model, {m: x[:1] for m, x in feats.items()})
    scores = score_subsets(model, feats, y, absent, autocast=_no_autocast)
    return contributions(scores, list(model.modalities), model.fill)


def _no_autocast():
    from contextlib import nullcontext

    return nullcontext()


# ------------------------------------------------------------------ Shapley values
def test_two_modalities_by_hand():
    # labels 0 1 1 1; a alone predicts 0 1 0 1 (3/4 right), b alone 1 1 1 0 (2/4), a+b 0 1 1 0 (3/4);
    # with both missing the logits are 0 0 and argmax takes class 0: 1/4 right.
    model = additive_model(["a", "b"])
    out = subset_shapley(model, {"a": [[2, 0], [0, 2], [2, 0], [0, 1]], "b": [[0, 1], [0, 1], [0, 3], [2, 0]]},
                         [0, 1, 1, 1])
    acc = out["accuracy"]
    worth = out["subsets"]
    assert [worth[s]["accuracy"] for s in ("", "a", "b", "a+b")] == [0.25, 0.75, 0.5, 0.75]
    # phi_a = 1/2 (0.75 - 0.25) + 1/2 (0.75 - 0.5) = 0.375;  phi_b = 1/2 (0.5 - 0.25) + 1/2 (0.75 - 0.75) = 0.125
    assert acc["shapley"] == pytest.approx({"a": 0.375, "b": 0.125})
    assert sum(acc["shapley"].values()) == pytest.approx(acc["full"] - acc["empty"]) == pytest.approx(0.5)
    assert acc["imbalance_degree"] == pytest.approx(0.25 / 0.5)  # |0.375 - 0.125| / (0.375 + 0.125)
    # the smooth value function adds up too: v(all) - v(empty) with v = mean true-class probability
    p = out["true_class_probability"]
    assert sum(p["shapley"].values()) == pytest.approx(p["full"] - p["empty"])
    assert p["empty"] == pytest.approx(0.5)  # logits 0 0: every class 1/2


def test_three_modalities_by_hand_through_the_model():
    # labels 0 1 1 0.  v: {} 0.5 (ties -> class 0), a 0.75, b 0.5, c 0.75, ab 0.5, ac 1.0, bc 0.75, abc 0.75
    model = additive_model(["a", "b", "c"])
    out = subset_shapley(model, {"a": [[1, 0], [0, 1], [1, 0], [1, 0]],
                                 "b": [[0, 2], [0, 2], [0, 2], [0, 2]],
                                 "c": [[3, 0], [0, 0.5], [0, 3], [0, 0.5]]}, [0, 1, 1, 0])
    worth = {s: v["accuracy"] for s, v in out["subsets"].items()}
    assert worth == {"": 0.5, "a": 0.75, "b": 0.5, "c": 0.75, "a+b": 0.5, "a+c": 1.0, "b+c": 0.75, "a+b+c": 0.75}
    # weights 1/3 (|S| = 0), 1/6 (|S| = 1), 1/3 (|S| = 2):
    # a: 1/3*.25 + 1/6*0 + 1/6*.25 + 1/3*0 = .125;  b: 0 - 1/6*.25 + 0 - 1/3*.25 = -.125;  c: .25 everywhere = .25
    acc = out["accuracy"]
    assert acc["shapley"] == pytest.approx({"a": 0.125, "b": -0.125, "c": 0.25})
    assert sum(acc["shapley"].values()) == pytest.approx(0.75 - 0.5)
    # (|.125 + .125| + |.125 - .25| + |-.125 - .25|) / (2 * .25)
    assert acc["imbalance_degree"] == pytest.approx(0.75 / 0.5)


def test_shapley_of_a_known_game_and_efficiency_for_more_modalities():
    worth = {(): 0.1, ("a",): 0.5, ("b",): 0.3, ("c",): 0.2, ("a", "b"): 0.7, ("a", "c"): 0.6, ("b", "c"): 0.4,
             ("a", "b", "c"): 0.8}
    phi = shapley_values(worth, ["a", "b", "c"])
    assert phi == pytest.approx({"a": 0.4, "b": 0.2, "c": 0.1})
    assert imbalance_degree(phi) == pytest.approx((0.2 + 0.3 + 0.1) / (2 * 0.7))
    # efficiency and symmetry on a random 5-player game: sum = v(all) - v(empty); a player that adds the
    # same as another everywhere gets the same value; one that adds nothing gets 0
    rng = np.random.default_rng(0)
    mods = ["a", "b", "c", "d", "e"]
    from itertools import combinations

    base = {s: float(rng.random()) for k in range(4) for s in combinations(mods[:4], k)}
    base[tuple(mods[:4])] = float(rng.random())
    game = {}
    for s, v in base.items():
        game[s] = v
        game[(*s, "e")] = v  # e is a null player
    phi = shapley_values(game, mods)
    assert sum(phi.values()) == pytest.approx(game[tuple(mods)] - game[()])
    assert phi["e"] == pytest.approx(0.0, abs=1e-12)


def test_imbalance_degree_bounds_and_undefined_cases():
    assert imbalance_degree({"a": 0.3, "b": 0.3, "c": 0.3}) == 0.0
    assert imbalance_degree({"a": 0.6, "b": 0.0, "c": 0.0}) == pytest.approx(1.0)
    assert math.isnan(imbalance_degree({"a": 0.4}))
    assert math.isnan(imbalance_degree({"a": 0.1, "b": -0.1}))


def test_the_fill_decides_the_missing_modality():
    # mean-feature: a missing modality contributes its running training mean, not zeros
    model = additive_model(["a", "b"], fill="mean-feature")
    model.feature_mean("b").copy_(torch.tensor([0.0, 5.0]))
    out = subset_shapley(model, {"a": [[2, 0], [2, 0]], "b": [[3, 0], [3, 0]]}, [0, 0])
    # a alone: logits a + mean_b = [2, 5] -> class 1, wrong; zero-feature would have said class 0
    assert out["subsets"]["a"]["accuracy"] == 0.0 and out["fill"] == "mean-feature"


def test_more_than_the_limit_is_refused_with_the_way_out():
    check_modality_count([f"m{i}" for i in range(MAX_MODALITIES)])
    with pytest.raises(ShapleyTooLarge, match=r"M = 9 .*--no-shapley"):
        check_modality_count([f"m{i}" for i in range(MAX_MODALITIES + 1)])


def test_subsets_by_forward_agree_with_the_feature_path_and_cover_interacting_encoders():
    """Running the model once per subset (needed when encoders interact) gives what the stored-feature path
    gives on a model whose encoders do not; with I2M2's independent experts, the balance pass predicts
    exactly what predict() does (the unimodal heads read the experts' encoders)."""
    from bogc_cli.data.cache import SplitArrays
    from bogc_cli.data.loader import make_loader
    from bogc_cli.engine.balance_eval import split_pass
    from bogc_cli.engine.contribution import interacting_encoders, score_subsets_by_forward
    from bogc_cli.engine.evaluate import predict

    rng = np.random.default_rng(3)
    arrays = {m: rng.standard_normal((90, 5)).astype(np.float32) for m in ("a", "b", "c")}
    loader = make_loader(SplitArrays(arrays, rng.integers(0, 3, 90).astype(np.int64)), 32, shuffle=False)
    specs = {m: ModalitySpec("vector", [5], "float32") for m in arrays}
    torch.manual_seed(0)
    model = MultimodalModel(specs, 3, {m: "mlp" for m in specs}, ModelBlock(feature_dim=8, hidden_dim=16),
                            fill="zero-input").eval()
    test = split_pass(model, loader, torch.device("cpu"), _no_autocast)
    fast = score_subsets(model, test.features, test.labels, absent_features(model, test.example), _no_autocast)
    slow = score_subsets_by_forward(model, loader, torch.device("cpu"), _no_autocast)
    assert not interacting_encoders(model)
    for s in fast.correct:
        assert np.array_equal(fast.correct[s], slow.correct[s])
        np.testing.assert_allclose(fast.true_prob[s], slow.true_prob[s], rtol=1e-5)
    model.add_expert_encoders()
    model.prediction = "product-of-experts"
    model.eval()
    assert interacting_encoders(model)
    p = predict(model, loader, torch.device("cpu"), _no_autocast)
    again = split_pass(model, loader, torch.device("cpu"), _no_autocast).predictions
    assert np.array_equal(p.fused, again.fused)
    assert all(np.array_equal(p.unimodal[m], again.unimodal[m]) for m in p.unimodal)


# ------------------------------------------------------------------ calibration
def test_ece_nll_brier_by_hand():
    # confidences .9 .85 .7 .62 each in a bin of its own (15 bins of width 1/15); right, wrong, right, wrong
    p = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.38, 0.62]])
    y = np.array([0, 1, 1, 0])
    out = calibration(np.log(p), y)
    assert out["bins"] == 15
    assert out["ece"] == pytest.approx((0.1 + 0.85 + 0.3 + 0.62) / 4, abs=1e-6)
    assert out["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.15) + math.log(0.7) + math.log(0.38)) / 4)
    assert out["brier"] == pytest.approx((0.02 + 1.445 + 0.18 + 0.7688) / 4)
    bins = out["reliability"]
    assert sum(bins["count"]) == 4 and bins["count"][13] == 1 and bins["count"][9] == 1
    assert bins["accuracy"][12] == 0.0 and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["accuracy"][0] is None and bins["confidence"][14] is None  # empty bins: JSON has no NaN
    shares = np.array(bins["count"]) / 4  # the diagram's bins give the same ECE here (no confidence of 1)
    acc, conf = (np.nan_to_num(np.asarray(bins[k], float)) for k in ("accuracy", "confidence"))
    gaps = np.abs(acc - conf)
    assert float((shares * gaps).sum()) == pytest.approx(out["ece"])


@pytest.mark.parametrize("seed", range(3))
def test_the_diagram_bins_imply_the_ece(seed):
    """The reliability diagram's bins are the ECE's (torchmetrics'): without confidences of exactly 1,
    sum_b n_b / N |acc_b - conf_b| over them is the ECE."""
    g = torch.Generator().manual_seed(seed)
    logits, labels = torch.randn(500, 6, generator=g) * (1 + seed), torch.randint(0, 6, (500,), generator=g)
    out = calibration(logits, labels)
    bins = out["reliability"]
    shares = np.array(bins["count"]) / 500
    acc, conf = (np.nan_to_num(np.asarray(bins[k], float)) for k in ("accuracy", "confidence"))
    gaps = np.abs(acc - conf)
    assert sum(bins["count"]) == 500 and float((shares * gaps).sum()) == pytest.approx(out["ece"], abs=1e-6)


@pytest.mark.parametrize("scale", [1.0, 4.0, 60.0])
def test_ece_is_torchmetrics_top_label_calibration_error(scale):
    """Our ECE is torchmetrics' rule (computed here to spare every run its import): random predictions, and
    saturated ones (scale 60: many confidences exactly 1 in float32, torchmetrics' extra bin)."""
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(int(scale))
    logits, labels = torch.randn(700, 5, generator=g, dtype=torch.float64) * scale, torch.randint(0, 5, (700,),
                                                                                                  generator=g)
    expected = tm.multiclass_calibration_error(torch.softmax(logits, 1), labels, num_classes=5, n_bins=15, norm="l1")
    assert calibration(logits, labels)["ece"] == pytest.approx(float(expected), abs=1e-6)
    if scale == 60.0:
        assert (torch.softmax(logits, 1).max(1).values.float() == 1).sum() > 100  # the extra bin is exercised


def test_shared_bin_and_a_perfect_prediction():
    # two rows in one bin: |accuracy 1/2 - mean confidence .95| weighs 2/3; the third row is right at .9
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.1, 0.9]])
    out = calibration(np.log(p), np.array([0, 1, 1]))
    assert out["ece"] == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.1, abs=1e-6)
    sure = calibration(np.array([[50.0, 0.0], [0.0, 50.0]]), np.array([0, 1]))
    assert sure["brier"] == pytest.approx(0.0, abs=1e-12) and sure["nll"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="N > 0"):
        calibration(np.zeros((0, 3)), np.zeros(0))


# ------------------------------------------------------------------ linear probe
def _encoded(rng, n: int, informative: bool, classes: int = 4, dim: int = 16):
    y = rng.integers(0, classes, n)
    centres = np.random.default_rng(123).standard_normal((classes, dim)) * 3
    x = rng.standard_normal((n, dim)) + (centres[y] if informative else 0)
    return x.astype(np.float32), y


def test_probe_of_a_random_encoder_is_at_chance_and_of_an_informative_one_well_above():
    rng = np.random.default_rng(0)
    good = linear_probe(*(_encoded(rng, n, True) for n in (400, 200, 1000)))
    noise = linear_probe(*(_encoded(rng, n, False) for n in (400, 200, 1000)))
    chance, sd = 0.25, math.sqrt(0.25 * 0.75 / 1000)
    assert abs(noise.accuracy - chance) < 4 * sd  # about 0.055
    assert good.accuracy > 0.9
    assert good.C in (0.01, 0.1, 1.0, 10.0) and set(good.val_by_C) == {0.01, 0.1, 1.0, 10.0}
    assert good.val_accuracy == max(good.val_by_C.values())


def test_probe_rows_are_a_stratified_seeded_sample_of_train():
    from bogc_cli.engine.linear_probe import TRAIN_ROWS, probe_rows

    labels = np.repeat(np.arange(4), [1500, 900, 450, 150])  # 3,000 rows, unequal classes
    rows = probe_rows(labels)
    assert len(rows) == TRAIN_ROWS == 1000 and np.array_equal(rows, np.sort(np.unique(rows)))
    assert np.bincount(labels[rows]).tolist() == [500, 300, 150, 50]  # the class shares of train
    assert np.array_equal(rows, probe_rows(labels))  # the same rows for every method and seed
    assert np.array_equal(probe_rows(labels[:800]), np.arange(800))  # a small train split is used whole


def test_probe_through_a_trained_run_encoder(tmp_path):
    """The whole eval path on a model: a modality of pure noise probes at chance, the informative one far
    above, whatever the fusion learnt (here: untrained encoders, so only the inputs differ)."""
    from bogc_cli.data.cache import SplitArrays
    from bogc_cli.data.loader import make_loader
    from bogc_cli.engine.balance_eval import balance_metrics

    rng = np.random.default_rng(1)
    splits = {}
    for split, n in (("train", 600), ("val", 200), ("test", 1000)):
        x, y = _encoded(rng, n, True)
        noise, _ = _encoded(rng, n, False)
        splits[split] = make_loader(SplitArrays({"signal": x, "noise": noise}, y.astype(np.int64)), 128, shuffle=False)
    specs = {m: ModalitySpec("vector", [16], "float32") for m in ("signal", "noise")}
    torch.manual_seed(0)
    model = MultimodalModel(specs, 4, {m: "mlp" for m in specs}, ModelBlock(feature_dim=32, hidden_dim=64))
    result = balance_metrics(model, splits, torch.device("cpu"), _no_autocast, run_dir=tmp_path, title="probe")
    out = result.fields
    probe = out["linear_probe"]["accuracy"]
    assert probe["signal"] > 0.85
    assert abs(probe["noise"] - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 1000)
    assert (tmp_path / "reliability.png").stat().st_size > 10_000
    assert out["parameters"] == parameter_count(model)
    c = out["contribution"]["accuracy"]
    assert sum(c["shapley"].values()) == pytest.approx(c["full"] - c["empty"])
    # the pass that gave the features gave the test predictions too: exactly predict()'s
    from bogc_cli.engine.evaluate import predict

    p = predict(model, splits["test"], torch.device("cpu"), _no_autocast)
    assert np.array_equal(p.fused, result.test.fused) and np.array_equal(p.labels, result.test.labels)
    assert all(np.array_equal(p.unimodal[m], result.test.unimodal[m]) for m in p.unimodal)
    assert c["full"] == pytest.approx(float((p.fused.argmax(1) == p.labels).mean()))


# ------------------------------------------------------------------ cost
def test_parameters_and_flops_of_a_known_model():
    # two linear 'encoders' 8 -> 4 and 6 -> 4 (no bias), a linear concat head 8 -> 3 and two unimodal
    # heads 4 -> 3: per sample 2 * (8*4 + 6*4 + 8*3 + 2*4*3) = 208 FLOPs (2 per multiply-add)
    specs = {"a": ModalitySpec("vector", [8], "float32"), "b": ModalitySpec("vector", [6], "float32")}
    model = MultimodalModel(specs, 3, {"a": "mlp", "b": "mlp"}, ModelBlock(feature_dim=4))
    for m, d in (("a", 8), ("b", 6)):
        model.encoders[m] = nn.Linear(d, 4, bias=False)
        model.encoders[m].out_dim = 4
    inputs = {"a": torch.randn(5, 8), "b": torch.randn(5, 6)}
    assert forward_flops_per_sample(model, inputs) == pytest.approx(2 * (8 * 4 + 6 * 4 + 8 * 3 + 4 * 3 * 2))
    # parameters: encoders 32 + 24, fusion head 8*3 + 3, unimodal heads 2 * (4*3 + 3)
    assert parameter_count(model) == 32 + 24 + 27 + 30
