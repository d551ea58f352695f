"""Gradient conflict over training (engine/conflict.py): the cosine itself, that sampling it leaves training
exactly as it was, its per-epoch values in metrics.jsonl on the stated schedule, and a resume inside an
epoch that logs what an uninterrupted run logs."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.engine.conflict import GradientConflict, conflict_cosines
from bogc_cli.errors import UserError
from bogc_cli.models.multimodal import MultimodalModel
from bogc_cli.recipe import ModelBlock, load_recipe
from cli_helpers import run_results, stopped_and_resumed

TINY = ["--set", "dataset.n_train=160", "--set", "dataset.n_val=48", "--set", "dataset.n_test=48",
        "--set", "train.batch_size=32", "--set", "model.cnn_channels=[8,16]"]


def two_vectors(classes: int = 3) -> MultimodalModel:
    specs = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
    torch.manual_seed(0)
    return MultimodalModel(specs, classes, {"a": "mlp", "b": "mlp"}, ModelBlock(feature_dim=4, hidden_dim=8))


def batch(n: int = 16, classes: int = 3) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch({"a": torch.randn(n, 6, generator=g), "b": torch.randn(n, 5, generator=g)},
                 torch.randint(0, classes, (n,), generator=g), torch.arange(n))


def ce(out, labels):
    return torch.nn.functional.cross_entropy(out.fused_logits.float(), labels)


def test_one_when_the_fusion_loss_is_the_modality_loss_undefined_when_a_gradient_is_zero():
    model = two_vectors()
    with torch.no_grad():  # fused logits = a's head on z_a exactly: block a = head a, block b = 0, same bias
        model.fusion_head.net.weight.zero_()
        model.fusion_head.net.weight[:, :4].copy_(model.unimodal_heads["a"].weight)
        model.fusion_head.net.bias.copy_(model.unimodal_heads["a"].bias)
    cos = conflict_cosines(model.train(), ce, batch(), nullcontext)
    assert cos["a"] == pytest.approx(1.0, abs=1e-9)
    assert math.isnan(cos["b"])  # the fusion loss does not reach encoder b


def test_a_frozen_encoder_has_no_cosine_and_the_others_keep_theirs():
    """An encoder without a trainable parameter (a frozen pretrained one) is NaN, not a crash of the run."""
    model = two_vectors().train()
    before = conflict_cosines(model, ce, batch(), nullcontext)
    model.encoders["b"].requires_grad_(False)
    cos = conflict_cosines(model, ce, batch(), nullcontext)
    assert math.isnan(cos["b"]) and cos["a"] == pytest.approx(before["a"], abs=1e-9)
    model.encoders["a"].requires_grad_(False)
    assert all(math.isnan(v) for v in conflict_cosines(model, ce, batch(), nullcontext).values())


def test_the_cosine_is_the_one_mmpareto_decides_on():
    """MMPareto (an independent implementation over GradientSources) logs the same cosine on its batch."""
    from bogc_cli.fusion import METHODS, StepContext

    model = two_vectors().train()
    cls = METHODS["mmpareto"]
    method = cls(cls.Options(), model, StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1)))
    b = batch()
    ours = conflict_cosines(model, method.fused_loss, b, nullcontext)
    logs = method.step(b).logs
    for m in ("a", "b"):
        assert ours[m] == pytest.approx(float(logs[f"mmpareto.cos.{m}"]), abs=1e-5)
    assert any(abs(v) > 0.05 for v in ours.values())  # not a trivial zero


def test_a_sample_leaves_buffers_generators_and_grads_alone():
    model = two_vectors().train()
    monitor = GradientConflict(model, ce, _rows(), 8, 1, torch.device("cpu"), nullcontext)
    before = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    cos = monitor.measure(3)  # 20 rows in batches of 8: sample 3 cycles back to rows 0..7
    assert set(cos) == {"a", "b"} and all(-1 <= v <= 1 for v in cos.values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert monitor.batch(3).index.tolist() == list(range(8)) and monitor.batch(2).index.tolist() == list(range(16, 20))


def _rows():
    from bogc_cli.data.cache import SplitArrays

    b = batch(20)
    return SplitArrays({m: x.numpy() for m, x in b.inputs.items()}, b.labels.numpy())


def test_conflict_every_is_checked_with_the_recipe():
    with pytest.raises(UserError, match="conflict_every"):
        load_recipe("recipes/quickstart.yaml", ["train.conflict_every=-1"])


def test_sampling_logs_each_epoch_and_changes_nothing_else(tmp_path: Path, capsys):
    from cli_helpers import run_cli

    for every in (0, 2):
        code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path / f"e{every}", *TINY,
                               "--set", "train.epochs=2", "--set", f"train.conflict_every={every}")
        assert code == 0, err
    (plain, _, w_plain), (sampled, _, w_sampled) = run_results(tmp_path / "e0"), run_results(tmp_path / "e2")
    assert all(torch.equal(w_plain[k], w_sampled[k]) for k in w_plain)  # the same training, bit for bit
    strip = [{k: v for k, v in r.items() if not k.startswith("conflict.")} for r in sampled]
    assert strip == plain
    # 160 rows / 32 = 5 steps an epoch; global steps 1, 3, 5 | 7, 9 are sampled
    assert [r["conflict.samples"] for r in sampled] == [3, 2]
    for r in sampled:
        assert {k for k in r if k.startswith("conflict.cos.")} == {"conflict.cos.audio", "conflict.cos.image",
                                                                   "conflict.cos.vector"}
        assert all(-1 <= r[f"conflict.cos.{m}"] <= 1 for m in ("audio", "image", "vector"))


def test_a_run_stopped_inside_an_epoch_logs_the_conflict_an_uninterrupted_one_logs(capsys, tmp_path, monkeypatch):
    # samples at global steps 1, 3, 5, 7, 9, ...: the stop at step 3 of epoch 2 (global 8) falls between two
    # samples of that epoch, so its first sample (global 7) must come back from last.pt
    args = ["train", "recipes/quickstart.yaml", *TINY, "--set", "train.epochs=3", "--set", "train.conflict_every=2",
            "--set", "method.name=uniform"]
    records, _, _ = stopped_and_resumed(capsys, monkeypatch, tmp_path, args, step=3)
    assert [r["conflict.samples"] for r in records] == [3, 2, 3]
    run = next((tmp_path / "cut").rglob("metrics.jsonl"))
    assert [json.loads(line)["conflict.samples"] for line in run.read_text().splitlines()] == [3, 2, 3]
