"""SMV (sample-level modality valuation): the Shapley values and copy bins against the reference's hand formulas, the
re-sampled epoch through the real loader, a real step with copies, and a CLI run whose later epochs are re-sampled."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import ModalitySpec, SplitArrays
from bogc_cli.data.loader import Batch, make_loader, resampled_entries, to_device
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.smv import coalitions, copy_counts, keep_only, shapley_values
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli, run_results

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def reference_contributions(all_right: bool, a_right: bool, v_right: bool) -> tuple[float, float]:
    """sample_level.py's execute_modulation, written out: value_all 2 when right, each modality alone 1."""
    value_all, value_a, value_v = 2.0 * all_right, 1.0 * a_right, 1.0 * v_right
    return (value_a + value_all - value_v) / 2.0, (value_v + value_all - value_a) / 2.0


def test_two_modality_shapley_values_are_the_references_contributions():
    cases = list(itertools.product([False, True], repeat=3))  # (all, a, v) right
    correct = {(0, 1): torch.tensor([c[0] for c in cases]), (0,): torch.tensor([c[1] for c in cases]),
               (1,): torch.tensor([c[2] for c in cases])}
    phi = shapley_values(correct, 2)
    expected = torch.tensor([reference_contributions(*c) for c in cases], dtype=torch.double)
    assert torch.equal(phi, expected)
    assert set(phi.flatten().tolist()) == {-0.5, 0.0, 0.5, 1.0, 1.5}


def test_three_modality_values_are_efficient_and_one_when_every_coalition_is_right():
    g = torch.Generator().manual_seed(0)
    correct = {s: torch.rand(50, generator=g) < 0.6 for s in coalitions(3)}
    phi = shapley_values(correct, 3)
    # efficiency: the values add up to v(all) = 3 * correct(all), v(empty) = 0
    torch.testing.assert_close(phi.sum(1), 3 * correct[(0, 1, 2)].double())
    everything = {s: torch.ones(1, dtype=torch.bool) for s in coalitions(3)}
    assert torch.equal(shapley_values(everything, 3), torch.ones(1, 3, dtype=torch.double))


def test_copy_bins_are_the_reference_datasets():
    """AV_KS_Dataset_sample_level: 0.4 < c < 1 -> 1 copy, -0.1 < c < 0.4 -> 2, c < -0.1 -> 3, else none."""
    phi = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5]]).T
    assert copy_counts(phi, [-0.1, 0.4, 1.0], [3, 2, 1]).flatten().tolist() == [3, 2, 1, 0, 0]
    on_bounds = torch.tensor([[-0.1], [0.4], [1.0]])
    assert copy_counts(on_bounds, [-0.1, 0.4, 1.0], [3, 2, 1]).flatten().tolist() == [0, 0, 0]  # strict, as there


def test_resampled_entries_keep_every_row_once_then_copies_row_by_row():
    copies = torch.tensor([[1, 0, 2], [0, 3, 0]])  # 2 variants, 3 rows
    entries = resampled_entries(copies)
    n = 3
    assert entries[:n].tolist() == [0, 1, 2]
    assert entries[n:].tolist() == [3, 7, 7, 7, 5, 5]  # code v * n + i: row 0 variant 1; row 1 variant 2 x3; row 2 variant 1 x2
    with pytest.raises(ValueError):
        resampled_entries(torch.tensor([[-1, 0]]))


def _split(n: int = 10) -> SplitArrays:
    rng = np.random.default_rng(0)
    return SplitArrays({m: rng.standard_normal((n, *s.shape)).astype("float32") for m, s in SPECS.items()},
                       rng.integers(0, 3, n))


def test_the_loader_shuffles_the_entries_with_the_seeded_generator_and_tags_each_copy():
    split = _split(10)
    loader = make_loader(split, batch_size=4, shuffle=True, seed=5)
    copies = torch.zeros(2, 10, dtype=torch.long)
    copies[0, 3], copies[1, 7] = 2, 1
    loader.batch_sampler.use_entries(resampled_entries(copies))
    assert loader.batch_sampler.rows == 13 and len(loader) == 4
    state = loader.generator.get_state()
    batches = [to_device(raw, torch.device("cpu")) for raw in loader]
    rows = torch.cat([b.index for b in batches])
    variant = torch.cat([b.variant for b in batches])
    assert sorted(zip(rows.tolist(), variant.tolist())) == sorted(
        [(i, 0) for i in range(10)] + [(3, 1), (3, 1), (7, 2)])
    for b in batches:  # each sample carries its own row's data, copies included
        assert torch.equal(b.inputs["a"], torch.from_numpy(split.inputs["a"][b.index.numpy()]))
    # the same generator state gives the same order; a resume at batch 2 sees the batches after it
    loader.generator.set_state(state)
    loader.batch_sampler.start_next_epoch_at(2)
    rest = [to_device(raw, torch.device("cpu")) for raw in loader]
    assert [b.index.tolist() for b in rest] == [b.index.tolist() for b in batches[2:]]
    assert [b.variant.tolist() for b in rest] == [b.variant.tolist() for b in batches[2:]]
    loader.batch_sampler.use_entries(None)
    assert len(loader) == 3 and all(int(b["variant"].sum()) == 0 for b in loader)


def test_keep_only_zeroes_every_other_modalitys_feature_of_a_copy():
    feats = {"a": torch.ones(3, 2), "b": 2 * torch.ones(3, 4), "c": 3 * torch.ones(3, 1)}
    out = keep_only(feats, torch.tensor([0, 1, 3]), ["a", "b", "c"])
    assert out["a"].tolist() == [[1, 1], [1, 1], [0, 0]]
    assert out["b"].tolist() == [[2] * 4, [0] * 4, [0] * 4]
    assert out["c"].tolist() == [[3], [0], [3]]


def _method(**options):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, dropout=0.0), SPECS, 3)
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1),
                      train_eval=make_loader(_split(24), batch_size=8, shuffle=False))
    return METHODS["smv"](METHODS["smv"].Options(**options), model, ctx)


def test_valuation_uses_the_fusion_head_on_zeroed_features_of_each_coalition():
    method = _method()
    model = method.model
    split = method.ctx.train_eval.dataset.split
    phi = method.valuate(method.ctx.train_eval)
    assert model.training  # the valuation's eval mode is undone
    with torch.no_grad():
        model.eval()
        z = model.encode({m: torch.from_numpy(a) for m, a in split.inputs.items()})
        y = torch.from_numpy(split.labels)
        right = {s: model.fusion_head([z[m] if j in s else torch.zeros_like(z[m]) for j, m in enumerate("ab")])
                 .argmax(1) == y for s in [(0, 1), (0,), (1,)]}
    expected = torch.tensor([reference_contributions(bool(right[(0, 1)][i]), bool(right[(0,)][i]),
                                                     bool(right[(1,)][i])) for i in range(len(y))], dtype=torch.double)
    assert torch.equal(phi, expected)


def test_warm_up_epochs_train_the_plain_set_then_the_copies_come_from_the_values():
    method = _method(warmup_epochs=2)
    for epoch in (1, 2):  # the reference's epochs 0 and 1: warm-up
        method.on_epoch_start(epoch)
        assert method.training_entries() is None
    method.on_epoch_start(3)
    phi = method.valuate(method.ctx.train_eval)
    expected = copy_counts(phi, [-0.1, 0.4, 1.0], [3, 2, 1]).T
    assert torch.equal(method.copies, expected)
    assert len(method.training_entries()) == 24 + int(expected.sum())


def test_a_step_on_copies_of_one_modality_gives_the_other_encoder_no_gradient():
    method = _method()
    g = torch.Generator().manual_seed(2)
    batch = Batch({m: torch.randn(8, *s.shape, generator=g) for m, s in SPECS.items()},
                  torch.randint(0, 3, (8,), generator=g), torch.arange(8), torch.ones(8, dtype=torch.long))
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    result = method.step(batch)  # every sample a copy that keeps modality a: b's feature zeroed
    after = method.model.state_dict()
    assert torch.isfinite(result.loss)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.b."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.a."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unimodal_heads.b."))  # probe
    assert result.logs["smv.copy_share"].item() == 1.0


def test_cli_run_trains_its_later_epochs_on_the_resampled_set(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "method.name=smv", "--set", "method.warmup_epochs=1", "--set", "train.epochs=2", "--set", "dataset.n_train=200", "--set", "dataset.n_val=50", "--set", "dataset.n_test=50")
    assert code == 0, err[-2000:]
    records, ev, _ = run_results(tmp_path)
    assert records[0]["method.smv.entries"] == 200 and records[0]["steps"] == 4
    extra = sum(records[1][f"method.smv.copies.{m}"] for m in ("audio", "image", "vector"))
    assert extra > 0 and records[1]["method.smv.entries"] == 200 + extra
    assert records[1]["steps"] == -(-(200 + extra) // 64)
