"""ReconBoost: the boosting loss against the reference's formula, the stage schedule, the shared-head ensemble, real
boosting and rectification steps (which parameters move), the optimiser reset per phase, the warm start, and a CLI
run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.reconboost import BoostEnsemble, boosting_loss, turn_of
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock, load_recipe
from cli_helpers import run_cli, run_results, write_unimodal_run

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
CLS = METHODS["reconboost"]


def reference_boosting_loss(out_obj, out_join, lbl, weight1, weight2):
    """train.py's phase-1 loss, written out (its `target` one-hot, `.mean(-1)` over classes, then `.mean()`)."""
    target = torch.zeros(lbl.shape[0], out_obj.shape[1]).scatter_(1, lbl.view(-1, 1), 1)
    boosting = (-weight1 * (target * out_obj.log_softmax(1)).mean(-1)
                + weight2 * (target * out_join.detach().softmax(1) * out_obj.log_softmax(1)).mean(-1))
    return boosting.mean()


def test_boosting_loss_is_the_references():
    g = torch.Generator().manual_seed(0)
    own, others, y = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.randint(0, 6, (8,), generator=g)
    torch.testing.assert_close(boosting_loss(own, others, y, 5.0, 1.0), reference_boosting_loss(own, others, y, 5.0, 1.0))
    # an empty ensemble: the reference's constant c0 broadcast to [B, 1], whose softmax is 1
    c0 = torch.full((8, 1), 0.37)
    torch.testing.assert_close(boosting_loss(own, None, y, 5.0, 1.0), reference_boosting_loss(own, c0, y, 5.0, 1.0))
    # a sample the others already fit is down-weighted: (w1 - w2 q) / C of its cross-entropy
    sure = torch.full((1, 6), -20.0)
    sure[0, 2] = 20.0
    ce = F.cross_entropy(own[:1], torch.tensor([2]))
    torch.testing.assert_close(boosting_loss(own[:1], sure, torch.tensor([2]), 5.0, 1.0), 4.0 * ce / 6, rtol=1e-6,
                               atol=0)


def test_stages_alternate_boosting_and_rectification_in_modality_order():
    turns = [turn_of(e, 4, 4, 2) for e in range(18)]  # the reference's epochs from 0
    assert [t.stage for t in turns] == [0] * 8 + [1] * 8 + [2] * 2
    assert [t.boosting for t in turns[:8]] == [True] * 4 + [False] * 4
    assert [t.active for t in turns] == [0] * 8 + [1] * 8 + [0] * 2
    assert [e for e, t in enumerate(turns) if t.first] == [0, 4, 8, 12, 16]
    assert [turn_of(e, 1, 1, 3).active for e in range(8)] == [0, 0, 1, 1, 2, 2, 0, 0]


def _method(hidden: int = 0, **options):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, dropout=0.0, fusion_hidden=hidden),
                        SPECS, 3)
    options = CLS.Options(**options)
    CLS.adapt_model(options, model)
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    return CLS(options, model, ctx)


def _batch(seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(16, *s.shape, generator=g) for m, s in SPECS.items()},
                 torch.randint(0, 3, (16,), generator=g), torch.arange(16))


def test_the_model_predicts_with_the_ensemble_of_the_learners_that_have_had_a_turn():
    method = _method(hidden=5)
    model, head = method.model, method.model.fusion_head
    assert isinstance(head, BoostEnsemble) and head.learner[0].out_features == 5  # model.fusion_hidden
    batch = _batch()
    method.on_epoch_start(1)  # stage 0: a's turn
    out = model(batch.inputs)
    z = model.encode(batch.inputs)
    torch.testing.assert_close(out.unimodal_logits["b"], head.learner(z["b"]))
    torch.testing.assert_close(out.fused_logits, head.boost_rate * head.learner(z["a"]))  # b has had no turn
    method.on_epoch_start(9)  # stage 1: b's turn
    torch.testing.assert_close(model(batch.inputs).fused_logits,
                               head.boost_rate * (head.learner(z["a"]) + head.learner(z["b"])))
    assert head.members.tolist() == [True, True] and "fusion_head.members" in model.state_dict()


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_a_boosting_step_trains_only_the_active_learner_and_the_shared_head():
    method = _method()
    method.on_epoch_start(9)  # stage 1, b boosts against a's learner
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    result = method.step(_batch())
    after = method.model.state_dict()
    assert _changed(before, after, "encoders.b.") and _changed(before, after, "fusion_head.learner.")
    assert not _changed(before, after, "encoders.a.") and not _changed(before, after, "fusion_head.boost_rate")
    assert set(result.logs) >= {"loss.boost", "loss.consolidation"}


def test_the_boosting_loss_uses_the_other_learners_ensemble():
    method = _method()
    method.on_epoch_start(9)
    batch = _batch()
    head = method.model.fusion_head
    with torch.no_grad():
        z = method.model.encode(batch.inputs)
        own, others = head.learner(z["b"]), head.boost_rate * head.learner(z["a"])
        expected = reference_boosting_loss(own, others, batch.labels, 5.0, 1.0)
    assert method.step(batch).logs["loss.boost"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_reference_consolidation_term_changes_the_loss_but_not_the_update():
    steps = {}
    for name, options in (("detached", {}), ("none", {"alpha": 0.0}), ("gradient", {"consolidation": "gradient"})):
        method = _method(**options)
        method.on_epoch_start(9)
        steps[name] = (method.step(_batch()).loss, method.model.state_dict())
    assert steps["detached"][0] > steps["none"][0]
    assert all(torch.equal(steps["detached"][1][k], steps["none"][1][k]) for k in steps["none"][1])
    assert _changed(steps["detached"][1], steps["gradient"][1], "encoders.b.")


def test_a_rectification_step_trains_the_ensemble_and_its_boost_rate_but_no_newcomer():
    method = _method()
    method.on_epoch_start(5)  # stage 0, rectification: only a is in the ensemble
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    method.step(_batch())
    after = method.model.state_dict()
    assert _changed(before, after, "encoders.a.") and _changed(before, after, "fusion_head.boost_rate")
    assert not _changed(before, after, "encoders.b.")


def test_each_phase_starts_with_a_fresh_optimiser_state():
    method = _method()
    opt = method.ctx.optimizer
    for epoch in range(1, 10):
        method.on_epoch_start(epoch)
        if epoch in (1, 5, 9):  # the first epoch of each phase
            assert not opt.state
        method.step(_batch(epoch))
        assert opt.state
    kept = _method(reset_optimizer=False)
    kept.on_epoch_start(1)
    kept.step(_batch())
    kept.on_epoch_start(5)
    assert kept.ctx.optimizer.state


def test_recipe_checks_refuse_slices_other_heads_and_mixed_feature_sizes(tmp_path):
    recipe = load_recipe("recipes/quickstart.yaml")
    options = CLS.Options()
    for change, needle in ((dict(unimodal_logits="fusion-slices"), "unimodal_logits: heads"),
                           (dict(fusion="sum"), "model.fusion: concat"),
                           (dict(encoders={"audio": "resnet18", "image": "cnn-small", "vector": "mlp"}),
                            "same feature size")):
        bad = recipe.model_copy(update={"model": recipe.model.model_copy(update=change)})
        assert needle in CLS.check_config(options, bad)
    assert "{seed}" in CLS.check_config(CLS.Options(warm_start={"a": "runs/{epoch}"}), recipe)
    cremad = load_recipe("recipes/cremad/reconboost.yaml")  # a key naming no modality: refused before any run
    assert CLS.check_config(CLS.Options(warm_start={"audio": "runs/a", "visual": "runs/v"}), cremad) is None
    assert "'audoi' is not a modality of dataset 'cremad'; valid keys: audio, visual" in CLS.check_config(
        CLS.Options(warm_start={"audoi": "runs/a"}), cremad)


def _unimodal_run(tmp_path, modality: str, classes: list[str]) -> torch.nn.Module:
    """A finished `unimodal` run directory of ``modality`` (best.pt + eval.json) with a recognisable encoder."""
    torch.manual_seed(7)
    solo = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, dropout=0.0),
                       {modality: SPECS[modality]}, 3)
    write_unimodal_run(tmp_path, modality, solo, classes)
    return solo


def test_warm_start_loads_each_named_encoder_and_puts_its_learner_in_the_ensemble_at_once(tmp_path):
    classes = ["x", "y", "z"]
    solo = _unimodal_run(tmp_path, "b", classes)
    options = CLS.Options(warm_start={"b": str(tmp_path / "uni-b" / "seed{seed}")})
    method = _method(warm_start=options.warm_start)
    recipe = load_recipe("recipes/quickstart.yaml").model_copy(update={"seed": 0})
    CLS.before_training(options, method.model, recipe, classes)
    for (k, v), (_, w) in zip(method.model.encoders["b"].state_dict().items(), solo.encoders["b"].state_dict().items()):
        assert torch.equal(v, w), k
    method.on_epoch_start(1)  # a's first turn: b, warm-started, is already in the ensemble
    assert method.model.fusion_head.members.tolist() == [True, True]
    with pytest.raises(UserError, match="not a unimodal run of 'a'"):
        CLS.before_training(CLS.Options(warm_start={"a": str(tmp_path / "uni-b" / "seed0")}), method.model, recipe,
                            classes)
    with pytest.raises(UserError, match="trained on classes"):
        CLS.before_training(options, method.model, recipe, ["p", "q", "r"])


def test_cli_run_boosts_then_rectifies_and_predicts_with_the_first_learner_alone(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "method.name=reconboost", "--set", "method.epochs_per_stage=1", "--set", "method.correct_epoch=1", "--set", "train.epochs=2", "--set", "dataset.n_train=200", "--set", "dataset.n_val=50", "--set", "dataset.n_test=50")
    assert code == 0, err[-2000:]
    records, ev, _ = run_results(tmp_path)
    assert [r["method.reconboost.boosting"] for r in records] == [1.0, 0.0]
    assert "method.loss.boost" in records[0] and "method.loss.fused" in records[1]
    assert ev["accuracy"] == ev["unimodal_accuracy"]["audio"]  # only audio has had a turn: F = rho h(z_audio)
