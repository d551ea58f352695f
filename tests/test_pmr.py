"""PMR: prototype logits, prototypes, coefficients on hand inputs; one step inside a model; a CLI run."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.errors import UserError
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.pmr import (PMR, PMROptions, class_sums, mean_entropy, new_prototypes, pmr_coefficients,
                                 prototype_logits, prototype_score)
from bogc_cli.models.build import build_model
from bogc_cli.models.multimodal import Outputs
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli


def test_prototype_logits_are_minus_euclidean_distances_by_default():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(prototype_logits(z, c), torch.tensor([[-1.0, -2.0], [-1.0, -math.sqrt(2.0)]]))
    torch.testing.assert_close(prototype_logits(z, c, "squared"), torch.tensor([[-1.0, -4.0], [-1.0, -2.0]]))


def test_prototypes_are_class_means_unseen_class_falls_back_and_momentum_mixes():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    sums, counts = class_sums(z, torch.tensor([0, 0, 1]), num_classes=3)
    assert counts.tolist() == [2.0, 1.0, 0.0]
    protos = new_prototypes(sums, counts, old=None, momentum=0.0)
    torch.testing.assert_close(protos, torch.tensor([[2.0, 3.0], [5.0, 6.0], [3.0, 4.0]]))  # class 2: mean of all
    old = torch.tensor([[0.0, 0.0], [1.0, 1.0], [9.0, 9.0]])
    mixed = new_prototypes(sums, counts, old=old, momentum=0.25)
    torch.testing.assert_close(mixed, torch.tensor([[1.5, 2.25], [4.0, 4.75], [9.0, 9.0]]))  # unseen: keeps old


def test_reference_coefficients_are_constant_on_the_lagging_modality_and_zero_on_a_tie():
    rho, gamma, beta = pmr_coefficients({"audio": torch.tensor(30.0), "visual": torch.tensor(29.0)}, 2.0, 0.1)
    assert (gamma["visual"].item(), gamma["audio"].item()) == (2.0, 0.0)  # the reference's beta / lam = alpha
    assert beta["audio"].item() == pytest.approx(0.1) and beta["visual"].item() == 0.0
    _, gamma, beta = pmr_coefficients({"audio": torch.tensor(30.0), "visual": torch.tensor(30.0)}, 2.0, 0.1)
    assert all(v.item() == 0.0 for d in (gamma, beta) for v in d.values())  # its else branch: neither
    assert PMROptions().coefficient == "constant" and PMROptions().mu == 0.0 and PMROptions().distance == "euclidean"


def test_paper_ratio_form_grades_the_weights():
    rho, gamma, beta = pmr_coefficients({"audio": torch.tensor(30.0), "visual": torch.tensor(20.0)}, alpha=2.0,
                                        mu=0.1, form="ratio")
    assert rho["audio"].item() == pytest.approx(1.5) and rho["visual"].item() == pytest.approx(2 / 3)
    assert gamma["visual"].item() == pytest.approx(2.0 * 0.5) and gamma["audio"].item() == 0.0  # alpha (1/rho - 1)
    assert beta["audio"].item() == pytest.approx(0.1 * 0.5) and beta["visual"].item() == 0.0    # mu (rho - 1)
    _, gamma, beta = pmr_coefficients({"audio": torch.tensor(30.0), "visual": torch.tensor(10.0)}, alpha=2.0, mu=0.1,
                                      form="ratio")
    assert gamma["visual"].item() == pytest.approx(2.0) and beta["audio"].item() == pytest.approx(0.1)  # clipped at 1


def test_more_than_two_modalities_compare_with_the_best_other_and_zero_scores_are_guarded():
    rho, gamma, beta = pmr_coefficients({"a": torch.tensor(4.0), "b": torch.tensor(3.0), "c": torch.tensor(2.5)},
                                        alpha=1.0, mu=1.0, form="ratio")
    assert [rho[m].item() for m in "abc"] == pytest.approx([4 / 3, 0.75, 0.625])
    assert [gamma[m].item() for m in "abc"] == pytest.approx([0.0, 1 / 3, 0.6])
    assert [beta[m].item() for m in "abc"] == pytest.approx([1 / 3, 0.0, 0.0])
    rho, gamma, beta = pmr_coefficients({"a": torch.tensor(5.0), "b": torch.tensor(0.0)}, alpha=1.0, mu=1.0,
                                        form="ratio")
    assert all(math.isfinite(v.item()) for d in (rho, gamma, beta) for v in d.values())
    assert gamma["b"].item() == 1.0 and beta["a"].item() == 1.0


def test_score_and_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert prototype_score(logits, torch.tensor([0, 1])).item() == pytest.approx(0.5 + 0.25)
    second = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert mean_entropy(logits).item() == pytest.approx((math.log(2) + second) / 2)


SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def small_model():
    torch.manual_seed(0)
    return build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), SPECS, 3).double()


def make_batch(seed=1, n=32):
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def sgd_context(model, **kwargs):
    return StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def method_for(name, model, **options):
    cls = METHODS[name]
    return cls(cls.Options(**options), model, sgd_context(model))


def test_first_epoch_is_the_plain_fused_loss_then_only_the_weaker_encoder_gets_the_pce_gradient():
    model = small_model()
    twin = copy.deepcopy(model)
    pmr, joint = method_for("pmr", model, mu=0.0, prototypes="train-features"), method_for("joint", twin)
    batch = make_batch()
    for method in (pmr, joint):
        method.on_epoch_start(1)
    logs = pmr.step(batch).logs
    joint.step(batch)
    assert not any(k.startswith("pmr.") for k in logs)  # no prototypes yet
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)
    for method in (pmr, joint):
        method.on_epoch_start(2)
    assert set(pmr.protos) == {"a", "b"} and pmr.protos["a"].shape == (3, 8)
    logs = pmr.step(batch).logs
    joint.step(batch)
    weaker = [m for m in "ab" if logs[f"pmr.gamma.{m}"] > 0]
    assert len(weaker) == 1 and logs[f"pmr.rho.{weaker[0]}"] < 1
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if name.startswith(f"encoders.{weaker[0]}."):
            continue
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)  # dominant encoder, heads: as joint
    assert any(not torch.allclose(p, q) for (n, p), q in zip(model.named_parameters(), twin.parameters())
               if n.startswith(f"encoders.{weaker[0]}."))


def test_prototypes_are_last_epochs_training_feature_means_and_survive_state_dict():
    model = small_model()
    pmr = method_for("pmr", model, prototypes="train-features")
    batch = make_batch(n=12)
    pmr.on_epoch_start(1)
    model.train()
    with torch.no_grad():
        feats = model.encode(batch.inputs)  # the features the step will see, before its update
    pmr.step(batch)
    pmr.on_epoch_start(2)
    for m in "ab":
        for k in range(3):
            rows = batch.labels == k
            if rows.any():
                torch.testing.assert_close(pmr.protos[m][k], feats[m][rows].float().mean(0))
    other_model = small_model()
    other = PMR(PMROptions(), other_model, sgd_context(other_model))
    other.load_state_dict(pmr.state_dict())
    torch.testing.assert_close(other.protos["a"], pmr.protos["a"])


def train_loader(n=40, seed=3):
    """A real training-set loader (unshuffled, as the trainer lends ``ctx.train_eval``) over random rows."""
    from bogc_cli.data.cache import SplitArrays
    from bogc_cli.data.loader import make_loader

    rng = np.random.default_rng(seed)
    split = SplitArrays({m: rng.standard_normal((n, *s.shape)).astype("float32") for m, s in SPECS.items()},
                        rng.integers(0, 3, n))
    return make_loader(split, batch_size=8, shuffle=False), split


def pass_rows(pmr, loader):
    return sorted(i for raw in pmr._pass_batches(loader) for i in raw["index"].tolist())


def test_eval_pass_uses_the_lent_train_loader_in_eval_mode_and_is_refused_without_it():
    model = small_model().float()
    loader, split = train_loader()
    pmr = PMR(PMROptions(prototypes="eval-pass", proto_fraction=1.0), model, sgd_context(model, train_eval=loader))
    model.train()
    pmr.on_epoch_start(1)
    assert model.training  # restored after the pass
    model.eval()
    with torch.no_grad():
        z = model.encode({m: torch.from_numpy(a) for m, a in split.inputs.items()})["b"]
    labels = torch.from_numpy(split.labels)
    torch.testing.assert_close(pmr.protos["b"][labels[0]], z[labels == labels[0]].float().mean(0))
    lonely = PMR(PMROptions(prototypes="eval-pass"), model, sgd_context(model))
    with pytest.raises(UserError, match="ctx.train_eval"):
        lonely.on_epoch_start(1)


def test_eval_pass_takes_a_fresh_random_tenth_of_the_rows_each_epoch_and_resumes_the_draws():
    model = small_model().float()
    loader, _ = train_loader(n=40)
    pmr = PMR(PMROptions(), model, sgd_context(model, train_eval=loader))  # proto_fraction 0.1: 4 of 40 rows
    first, saved, second = pass_rows(pmr, loader), pmr.state_dict(), pass_rows(pmr, loader)
    assert len(first) == len(second) == 4 and first != second  # the reference's shuffled loader: new rows
    twin = PMR(PMROptions(), model, sgd_context(model, train_eval=loader))
    twin.load_state_dict(saved)
    assert pass_rows(twin, loader) == second
    tiny, _ = train_loader(n=5)
    assert len(pass_rows(pmr, tiny)) == 1  # at least one row, as the reference's at least one batch
    batches = [make_batch(seed=s, n=4) for s in range(20)]  # any other iterable of batches: whole batches
    picks = [pmr._pass_batches(batches) for _ in range(5)]
    assert all(len(p) == 2 and all(any(b is c for c in batches) for b in p) for p in picks)
    assert len({tuple(id(b) for b in p) for p in picks}) > 1


def test_pce_gradient_is_the_euclidean_constant_form_by_hand_where_the_squared_ratio_form_vanishes():
    """One sample of class 0, 1-d features. Modality b: z_b = 0, prototypes -1 and 5 (distances 1, 5); modality a
    leads (prototypes -0.5 and 5). The reference (constant alpha on the lagging b, -||z - c||) gives
    d alpha CE(P_b) / d z_b = alpha (p_0 - 1)(-1) + alpha p_1 (+1) = 2 alpha p_1, p_1 = e^-4 / (1 + e^-4)."""
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16, unimodal_logits="fusion-slices"),
                        SPECS, 3)  # no probe heads: only the rule's terms
    protos = {"a": torch.tensor([[-0.5], [5.0]]), "b": torch.tensor([[-1.0], [5.0]])}
    labels = torch.tensor([0])

    def pce_gradient(**options):
        pmr = method_for("pmr", model, **options)
        pmr.protos = protos
        feats = {m: torch.zeros(1, 1, requires_grad=True) for m in "ab"}
        out = Outputs(torch.zeros(1, 3), {}, feats)
        losses = pmr.losses(out, labels)
        sum(v for k, v in losses.items() if k != "fused").backward()
        return feats["b"].grad.item(), feats["a"].grad.item()

    p1 = math.exp(-4) / (1 + math.exp(-4))
    grad_b, grad_a = pce_gradient()
    assert grad_b == pytest.approx(2 * 2.0 * p1, rel=1e-5)  # 0.0719 with the default alpha 2
    assert grad_a == 0.0  # the leader gets no prototype term
    # the earlier defaults: the squared margins (24, 24.75) saturate both scores to 1 in float32, rho = 1, weight 0
    grad_b, _ = pce_gradient(distance="squared", coefficient="ratio", mu=0.01)
    assert grad_b == 0.0


def test_needs_two_modalities():
    assert "at least 2 modalities" in METHODS["pmr"].check_modalities(PMROptions(), ["audio"])


def test_cli_run_logs_the_coefficients(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=pmr",
                             "--set", "dataset.n_train=240", "--set", "dataset.n_val=60", "--set", "dataset.n_test=60",
                             "--set", "train.epochs=2", "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "pmr" / "seed0"
    assert (run / "eval.json").exists()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for m in ("audio", "image", "vector"):
        for key in ("rho", "gamma", "beta"):
            assert math.isfinite(record[f"method.pmr.{key}.{m}"])
    assert max(record[f"method.pmr.gamma.{m}"] for m in ("audio", "image", "vector")) > 0
