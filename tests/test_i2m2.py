"""I2M2: the normalised product of experts, independent experts (own encoders), the warm start from
this tool's own runs, and the recipe checks."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.engine.setup import build_parts, resolved_recipe
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.i2m2 import I2M2Options, load_warm_start
from bogc_cli.models.build import build_model
from bogc_cli.models.multimodal import FUSED, product_of_experts
from bogc_cli.recipe import ModelBlock, load_recipe
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


VEC = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_independent_experts_have_their_own_encoders_twice_the_encoder_parameters():
    cfg = ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16)
    joint = build_model(cfg, VEC, 3)
    # mlp encoders 6 -> 16 -> 8 and 5 -> 16 -> 8: (6*16 + 16) + (16*8 + 8) = 248 and (5*16 + 16) + 136 = 232
    assert count(joint.encoders) == 248 + 232
    model = build_model(cfg, VEC, 3)
    METHODS["i2m2"].adapt_model(I2M2Options(), model)
    assert count(model.encoders) == count(model.expert_encoders) == 480
    assert count(model) - count(joint) == 480  # the experts' encoders are the only new parameters
    shared = build_model(cfg, VEC, 3)
    METHODS["i2m2"].adapt_model(I2M2Options(experts="shared"), shared)
    assert count(shared) == count(joint) and not len(shared.expert_encoders)
    groups = {g.name: g for g in model.param_groups()}
    assert groups["expert_encoder:a"].sources == (FUSED, "a")
    assert sum(sum(p.numel() for p in g.params) for g in groups.values()) == count(model)  # every parameter once


def test_each_expert_reads_its_own_encoder_and_the_loss_trains_every_expert():
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), VEC, 3)
    METHODS["i2m2"].adapt_model(I2M2Options(), model)
    x = {"a": torch.randn(5, 6), "b": torch.randn(5, 5)}
    out = model(x)
    for m in VEC:
        torch.testing.assert_close(out.unimodal_logits[m], model.unimodal_heads[m](model.expert_encoders[m](x[m])))
    joint_logits = model.fusion_head([model.encoders[m](x[m]) for m in VEC])
    torch.testing.assert_close(out.fused_logits, product_of_experts([joint_logits, *out.unimodal_logits.values()]))
    method = METHODS["i2m2"](I2M2Options(), model, StepContext(torch.device("cpu"),
                                                                torch.optim.SGD(model.parameters(), lr=0.1)))
    losses = method.losses(out, torch.tensor([0, 1, 2, 0, 1]))
    assert list(losses) == [FUSED]
    losses[FUSED].backward()
    for name in ("encoders", "expert_encoders", "fusion_head", "unimodal_heads"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name + ".")]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_cli_trains_and_eval_uses_the_product(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2",
                             *SMALL, "--out", tmp_path)
    assert code == 0, out + err
    run = tmp_path / "quickstart" / "synthetic" / "i2m2" / "seed0"
    trained = json.loads((run / "eval.json").read_text())
    assert any(k.startswith("expert_encoders.") for k in torch.load(run / "best.pt", weights_only=False)["model"])
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, out + err
    again = json.loads((run / "eval.json").read_text())
    assert again["accuracy"] == pytest.approx(trained["accuracy"])  # same rule and experts at train and at eval


def test_refuses_fusion_slices_at_validation(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2",
                             "--set", "model.unimodal_logits=fusion-slices", "--out", tmp_path)
    assert code == 2 and "model.unimodal_logits: heads" in out + err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ warm start from this tool's runs
TINY = ["--set", "dataset.n_train=120", "--set", "dataset.n_val=40", "--set", "dataset.n_test=40",
        "--set", "train.epochs=1"]


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    """Stage 1 of the two-stage procedure: a finished joint run and a finished unimodal-audio run (seed 0)."""
    from bogc_cli.cli import main

    out = tmp_path_factory.mktemp("stage1")
    for extra in ([], ["--set", "method.name=unimodal", "--set", "method.modality=audio"]):
        argv, sys.argv = sys.argv, ["bogc", "train", "recipes/quickstart.yaml", *TINY, *extra, "--out", str(out)]
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        finally:
            sys.argv = argv
    return out / "quickstart" / "synthetic"


def warm_recipe(stage_one, **warm):
    recipe = load_recipe("recipes/quickstart.yaml")
    data = recipe.to_dict()
    data["dataset"].update({"n_train": 120, "n_val": 40, "n_test": 40})
    data["method"] = {"name": "i2m2", "warm_start": warm}
    from bogc_cli.recipe import validate_recipe
    return resolved_recipe(validate_recipe(data))


def test_warm_start_loads_each_experts_weights_from_the_runs_best_checkpoint(stage_one):
    recipe = warm_recipe(stage_one, joint=str(stage_one / "joint" / "seed{seed}"),
                         audio=str(stage_one / "unimodal-audio" / "seed0"))
    parts = build_parts(recipe)
    model = parts.model
    fresh = {n: t.clone() for n, t in model.state_dict().items()}
    parts.method_cls.before_training(parts.options, model, recipe, parts.data.classes)
    mine = model.state_dict()
    joint = torch.load(stage_one / "joint" / "seed0" / "best.pt", weights_only=False)["model"]
    audio = torch.load(stage_one / "unimodal-audio" / "seed0" / "best.pt", weights_only=False)["model"]
    for name, value in mine.items():
        if name.startswith(("encoders.", "fusion_head.", "feature_mean_")):
            assert torch.equal(value, joint[name]), name              # the joint expert: the joint run's
        elif name.startswith("expert_encoders.audio."):
            assert torch.equal(value, audio["encoders." + name.removeprefix("expert_encoders.")]), name
        elif name.startswith(("expert_encoders.image.", "expert_encoders.vector.", "unimodal_heads.image",
                              "unimodal_heads.vector")):
            assert torch.equal(value, fresh[name]), name              # no warm start named: as built
    assert torch.equal(mine["unimodal_heads.audio.weight"], audio["fusion_head.net.weight"])  # its classifier
    assert torch.equal(mine["unimodal_heads.audio.bias"], audio["fusion_head.net.bias"])
    assert torch.equal(mine["expert_feature_mean_audio"], audio["feature_mean_audio"])
    audio_keys = [n.removeprefix("encoders.audio.") for n in mine if n.startswith("encoders.audio.")]
    assert any(not torch.equal(mine[f"encoders.audio.{k}"], mine[f"expert_encoders.audio.{k}"]) for k in audio_keys)


def test_warm_started_run_trains_from_those_weights(stage_one, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2", *TINY,
                             "--set", f"method.warm_start.joint={stage_one / 'joint' / 'seed{seed}'}",
                             "--set", f"method.warm_start.audio={stage_one / 'unimodal-audio' / 'seed0'}",
                             "--out", tmp_path)
    assert code == 0, out + err
    saved = (tmp_path / "quickstart" / "synthetic" / "i2m2" / "seed0" / "recipe.yaml").read_text()
    assert "warm_start" in saved and "unimodal-audio" in saved


def refused(capsys, tmp_path, *sets: str) -> str:
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2", *TINY,
                             *(x for s in sets for x in ("--set", s)), "--out", tmp_path / "out")
    assert code == 2, out + err
    assert not (tmp_path / "out").exists()  # nothing written
    return " ".join((out + err).split())


def test_warm_start_refusals_name_the_path_and_write_nothing(stage_one, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    msg = refused(capsys, tmp_path, f"method.warm_start.joint={missing}")
    assert str(missing) in msg and "does not exist" in msg

    unfinished = tmp_path / "unfinished"
    shutil.copytree(stage_one / "joint" / "seed0", unfinished)
    (unfinished / "eval.json").unlink()
    msg = refused(capsys, tmp_path, f"method.warm_start.joint={unfinished}")
    assert str(unfinished) in msg and "not a finished run" in msg and "--resume" in msg

    msg = refused(capsys, tmp_path, f"method.warm_start.joint={stage_one / 'joint' / 'seed0'}", "model.feature_dim=32")
    assert "does not match" in msg and str(stage_one / "joint" / "seed0") in msg

    msg = refused(capsys, tmp_path, f"method.warm_start.image={stage_one / 'unimodal-audio' / 'seed0'}")
    assert "not a unimodal run of 'image'" in msg

    msg = refused(capsys, tmp_path, f"method.warm_start.depth={stage_one / 'joint' / 'seed0'}")
    assert "'depth'" in msg and "joint, audio, image, vector" in msg

    msg = refused(capsys, tmp_path, "method.experts=shared",
                  f"method.warm_start.audio={stage_one / 'unimodal-audio' / 'seed0'}")
    assert "only 'joint'" in msg


def test_warm_start_refusal_through_the_real_entry_point(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bogc", "train", "recipes/quickstart.yaml", "--set", "method.name=i2m2",
                           "--set", f"method.warm_start.joint={tmp_path / 'missing' / 'seed{seed}'}",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert str(tmp_path / "missing" / "seed0") in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_load_warm_start_checks_every_entry_before_copying(stage_one):
    recipe = warm_recipe(stage_one)
    parts = build_parts(recipe)
    before = {n: t.clone() for n, t in parts.model.state_dict().items()}
    options = I2M2Options(warm_start={"joint": str(stage_one / "joint" / "seed0"), "image": "/nonexistent/run"})
    with pytest.raises(Exception, match="/nonexistent/run"):
        load_warm_start(options, parts.model, 0, parts.data.classes)
    assert all(torch.equal(t, before[n]) for n, t in parts.model.state_dict().items())  # the joint one not half-applied
