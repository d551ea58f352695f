"""OPM: drop probabilities, inverted-dropout masks, fully-dropped samples; one step inside a model; a CLI run."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import bogc_cli.fusion.opm as opm_module
from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.opm import OPMOptions, drop_probabilities, keep_masks, kept_samples, mask_features
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli


def test_drop_probability_below_at_and_above_one_and_the_clip():
    rho = {"a": torch.tensor(0.5), "b": torch.tensor(1.0), "c": torch.tensor(2.0)}
    q = drop_probabilities(rho, q_base=0.5, lam=0.5)
    assert q["a"].item() == 0.0 and q["b"].item() == 0.0  # not dominant: never dropped
    assert q["c"].item() == pytest.approx(0.5 * (1 + 0.5 * math.tanh(1.0)))
    q = drop_probabilities({"a": torch.tensor(10.0)}, q_base=0.9, lam=1.0)
    assert q["a"].item() == 1.0  # 0.9 * (1 + tanh 9) > 1: clipped


def test_inverted_dropout_keeps_the_expected_feature():
    z = torch.tensor([[1.0, -2.0], [3.0, 4.0], [0.5, 0.5]])
    q = {"a": torch.tensor(0.25)}
    keep = {"a": torch.tensor([True, False, True])}
    out = mask_features({"a": z}, keep, q, scale="modality")["a"]
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0], [0.0, 0.0], [0.5, 0.5]]) / 0.75)  # exact, q fixed
    g = torch.Generator().manual_seed(0)
    n = 200_000
    big = torch.tensor([[2.0, -1.0]]).expand(n, 2)
    q = {"a": torch.tensor(0.4), "b": torch.tensor(0.0)}
    keep = keep_masks(q, n, torch.device("cpu"), generator=g)
    assert keep["a"].float().mean().item() == pytest.approx(0.6, abs=0.01) and bool(keep["b"].all())
    masked = mask_features({"a": big, "b": big}, keep, q, scale="modality")
    torch.testing.assert_close(masked["a"].mean(0), torch.tensor([2.0, -1.0]), rtol=0.02, atol=0.0)  # Monte Carlo
    torch.testing.assert_close(masked["b"], big)  # q = 0: untouched


def test_shared_scale_uses_the_drop_rate_of_the_concatenated_feature():
    za, zb = torch.ones(2, 3), torch.ones(2, 1)
    q = {"a": torch.tensor(0.5), "b": torch.tensor(0.0)}
    keep = {"a": torch.tensor([True, True]), "b": torch.tensor([True, True])}
    out = mask_features({"a": za, "b": zb}, keep, q, scale="shared")
    theta = (3 * 0.5 + 1 * 0.0) / 4
    torch.testing.assert_close(out["a"], za / (1 - theta))
    torch.testing.assert_close(out["b"], zb / (1 - theta))


def test_default_scale_is_the_references_one_shared_factor():
    """BML_TPAMI2024 Modality_drop: every kept feature / (1 - theta), theta = sum d q / sum d. With q = 0.6 on one
    of two 2-d modalities theta = 0.3; the per-modality option gives x1.75 and x0.70 relative to it."""
    assert OPMOptions().scale == "shared"
    z = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[3.0, -1.0]])}
    q = {"a": torch.tensor(0.6), "b": torch.tensor(0.0)}
    keep = {"a": torch.tensor([True]), "b": torch.tensor([True])}
    shared = mask_features(z, keep, q)
    torch.testing.assert_close(shared["a"], torch.tensor([[1.0, 2.0]]) / 0.7)
    torch.testing.assert_close(shared["b"], torch.tensor([[3.0, -1.0]]) / 0.7)
    own = mask_features(z, keep, q, scale="modality")
    torch.testing.assert_close(own["a"] / shared["a"], torch.full((1, 2), 1.75))
    torch.testing.assert_close(own["b"] / shared["b"], torch.full((1, 2), 0.7))


def test_fully_dropped_samples_are_found():
    keep = {"a": torch.tensor([True, False, False]), "b": torch.tensor([False, True, False])}
    assert kept_samples(keep).tolist() == [True, True, False]


SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32"),
         "c": ModalitySpec("vector", [4], "float32")}


def small_model(specs):
    torch.manual_seed(0)
    return build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), specs, 3).double()


def make_batch(specs, seed=1, n=32):
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in specs.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def method_for(name, model, epoch, **options):
    cls = METHODS[name]
    return cls(cls.Options(**options), model,
               StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1), epoch=epoch))


def test_warm_up_is_a_plain_step_then_a_fully_dropped_dominant_encoder_gets_no_update():
    specs = {m: SPECS[m] for m in "ab"}
    batch = make_batch(specs)
    model, twin = small_model(specs), small_model(specs)
    # the reference's warm_up = epoch <= 5 over epochs from 0: our epochs 1-6 (warmup_epochs 6) are plain
    assert OPMOptions().warmup_epochs == 6
    logs = method_for("opm", model, epoch=6, p_exe=1.0).step(batch).logs
    method_for("joint", twin, epoch=6).step(batch)
    assert logs["opm.executed"].item() == 0.0 and logs["opm.q.a"].item() == logs["opm.q.b"].item() == 0.0
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)  # warm-up: exactly joint

    model = small_model(specs)
    before = copy.deepcopy(model)
    logs = method_for("opm", model, epoch=7, p_exe=1.0, q_base=1.0, lam=0.0).step(batch).logs
    dominant = max("ab", key=lambda m: logs[f"opm.rho.{m}"].item())
    weaker = "b" if dominant == "a" else "a"
    assert logs["opm.executed"].item() == 1.0 and logs[f"opm.q.{dominant}"].item() == 1.0
    assert logs[f"opm.q.{weaker}"].item() == 0.0 and logs["opm.kept"].item() == 1.0
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        if name.startswith(f"encoders.{dominant}."):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)  # its features were all dropped
    assert any(not torch.equal(p, q) for (n, p), q in zip(model.named_parameters(), before.parameters())
               if n.startswith(f"encoders.{weaker}."))


def test_fully_dropped_samples_leave_the_loss(monkeypatch):
    batch = make_batch(SPECS, n=6)
    all_dropped = torch.tensor([True, False, False, False, False, False])

    def fixed(q, batch_size, device, generator=None):
        return {m: ~all_dropped if m == "a" else torch.tensor([False, True, False, True, False, True]) for m in q}

    monkeypatch.setattr(opm_module, "keep_masks", fixed)
    results = []
    for first_label in (0, 1):  # the fully dropped sample's label must not matter to the fused update
        labels = batch.labels.clone()
        labels[0] = first_label
        model = small_model(SPECS)
        method = method_for("opm", model, epoch=7, p_exe=1.0, q_base=0.0)  # q = 0: scale 1, masks as fixed
        logs = method.step(Batch(batch.inputs, labels, batch.index)).logs
        results.append((logs, {n: p.detach().clone() for n, p in model.named_parameters()
                               if not n.startswith("unimodal_heads.")}))  # probes see every sample
    (logs, params0), (_, params1) = results
    assert logs["opm.kept"].item() == pytest.approx(5 / 6)
    for name, p in params0.items():
        torch.testing.assert_close(p, params1[name], rtol=0, atol=1e-12, msg=name)
    # the loss is the CE over the kept rows of the masked features
    model = small_model(SPECS)
    feats = model.encode(batch.inputs)
    q = {m: logs[f"opm.q.{m}"] for m in SPECS}
    masked = model.heads(mask_features(feats, fixed(q, 6, None), q))
    expected = F.cross_entropy(masked.fused_logits[1:], batch.labels[1:])
    assert logs["loss.fused"].item() == pytest.approx(expected.item())


def test_needs_two_modalities():
    assert "at least 2 modalities" in METHODS["opm"].check_modalities(OPMOptions(), ["audio"])


def test_cli_run_logs_the_coefficients(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=opm",
                             "--set", "method.warmup_epochs=1",
                             "--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
                             "--set", "train.epochs=2", "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "opm" / "seed0"
    assert (run / "eval.json").exists()
    first, last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in ("audio", "image", "vector"):
        assert first[f"method.opm.q.{m}"] == 0.0  # warm-up
        assert math.isfinite(last[f"method.opm.q.{m}"]) and math.isfinite(last[f"method.opm.rho.{m}"])
    assert max(last[f"method.opm.q.{m}"] for m in ("audio", "image", "vector")) > 0
