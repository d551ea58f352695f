"""UMT (Du et al., ICML 2023; GeWu-Lab/BalanceBenchmark UMT_trainer.py): CE of the fused logits plus scaling x the
MSE between each encoder's features and a frozen unimodal teacher's, teachers loaded from finished unimodal runs (or,
none named, trained first inside the run); pinned on hand-computable inputs, one real step, the teacher checks, and
CLI runs."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import yaml
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.engine.checkpoint import save_checkpoint
from bogc_cli.errors import UserError
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.umt import UMT, attach_teachers, distillation_loss, load_teachers
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock, load_recipe, validate_recipe
from cli_helpers import run_bogc, run_cli, run_results, signal_during_step, write_unimodal_run

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
BLOCK = ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, dropout=0.0)
CLASSES = ["x", "y", "z"]
TINY = ["--set", "dataset.n_train=96", "--set", "dataset.n_val=32", "--set", "dataset.n_test=32",
        "--set", "train.batch_size=32"]


def test_distillation_is_the_sum_over_teachers_of_the_elementwise_mse():
    student = {"a": torch.tensor([[1.0, 2.0]], requires_grad=True), "b": torch.tensor([[3.0]], requires_grad=True)}
    teacher = {"a": torch.tensor([[0.0, 0.0]], requires_grad=True), "b": torch.tensor([[1.0]])}
    loss = distillation_loss(student, teacher)
    assert loss.item() == pytest.approx((1 + 4) / 2 + 4)  # MSE over a's 1 x 2 elements, plus b's
    loss.backward()
    assert student["a"].grad.tolist() == [[1.0, 2.0]]  # d/dz mean((z - t)^2) = 2 (z - t) / 2
    assert teacher["a"].grad is None  # the teacher is a fixed target
    only_a = distillation_loss(student, {"a": teacher["a"]})  # a modality without a teacher is not distilled
    assert only_a.item() == pytest.approx(2.5)


def _unimodal_run(tmp_path, modality: str, classes=CLASSES, block=BLOCK) -> torch.nn.Module:
    """A finished `unimodal` run directory of ``modality`` (best.pt + eval.json) with a recognisable encoder."""
    torch.manual_seed(7)
    solo = build_model(block, {modality: SPECS[modality]}, 3).double()
    write_unimodal_run(tmp_path, modality, solo, classes)
    return solo


def _student(tmp_path, **options):
    torch.manual_seed(0)
    model = build_model(BLOCK, SPECS, 3).double()
    opts = UMT.Options(teachers={"a": str(tmp_path / "uni-a" / "seed{seed}")}, **options)
    recipe = load_recipe("recipes/quickstart.yaml").model_copy(update={"seed": 0})
    UMT.before_training(opts, model, recipe, CLASSES)
    return model, opts


def _batch(seed: int, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def _sgd(model):
    return StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1))


def test_teachers_are_the_unimodal_runs_encoders_and_stay_out_of_the_student(tmp_path):
    solo = _unimodal_run(tmp_path, "a")
    model, _ = _student(tmp_path)
    before = copy.deepcopy(model.state_dict())
    teacher = model.umt_teachers[0].encoders["a"]
    for (k, v), w in zip(teacher.state_dict().items(), solo.encoders["a"].state_dict().values()):
        assert torch.equal(v, w), k
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the student is not warm-started
    assert not any("teacher" in k for k in model.state_dict())  # nor are the teachers checkpointed with it
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())


def test_one_step_is_sgd_on_fused_ce_plus_scaled_feature_mse(tmp_path):
    _unimodal_run(tmp_path, "a")
    model, opts = _student(tmp_path)
    twin = copy.deepcopy(model)
    teacher = copy.deepcopy(model.umt_teachers[0].encoders["a"])
    method = UMT(opts, model, _sgd(model))
    method.on_epoch_start(1)
    batch = _batch(1)
    logs = method.step(batch).logs
    out = twin(batch.inputs)
    with torch.no_grad():
        target = teacher(batch.inputs["a"])
    mse = ((out.features["a"] - target) ** 2).mean()
    total = F.cross_entropy(out.fused_logits, batch.labels) + 10.0 * mse  # scaling 10, the reference's
    total += sum(F.cross_entropy(twin.unimodal_heads[m](out.features[m].detach()), batch.labels) for m in SPECS)
    total.backward()  # (+ the separate heads' probes on detached features, as joint's)
    assert logs["umt.distill"].item() == pytest.approx(mse.item())
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, msg=name)


def test_outside_the_window_it_is_joint(tmp_path):
    _unimodal_run(tmp_path, "a")
    model, opts = _student(tmp_path, end_epoch=3)
    twin = copy.deepcopy(model)
    method = UMT(opts, model, _sgd(model))
    method.on_epoch_start(5)  # the reference's epoch 4
    batch = _batch(2)
    assert "umt.distill" not in method.step(batch).logs
    METHODS["joint"](METHODS["joint"].Options(), twin, _sgd(twin)).step(batch)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_teacher_runs_are_checked_before_anything_is_built(tmp_path):
    _unimodal_run(tmp_path, "b")
    recipe = load_recipe("recipes/quickstart.yaml").model_copy(update={"seed": 0})
    model = build_model(BLOCK, SPECS, 3).double()
    for runs, needle in (({"a": str(tmp_path / "uni-b" / "seed0")}, "method.teachers.a: .* not a unimodal run of 'a'"),
                         ({"c": str(tmp_path / "uni-b" / "seed0")}, "method.teachers: 'c' is not a modality"),
                         ({"b": str(tmp_path / "nope")}, "method.teachers.b: .* does not exist.*correct the path")):
        with pytest.raises(UserError, match=needle):
            load_teachers(runs, model, recipe.seed, CLASSES)
    with pytest.raises(UserError, match="method.teachers.b: .* trained on classes"):
        load_teachers({"b": str(tmp_path / "uni-b" / "seed0")}, model, 0, ["p", "q", "r"])
    wide = build_model(ModelBlock(encoders="mlp", feature_dim=6, hidden_dim=8), SPECS, 3).double()
    with pytest.raises(UserError, match="method.teachers.b: the model in .* does not match"):
        load_teachers({"b": str(tmp_path / "uni-b" / "seed0")}, wide, 0, CLASSES)


def test_recipe_checks_and_defaults():
    recipe = load_recipe("recipes/quickstart.yaml")
    assert UMT.check_config(UMT.Options(), recipe) is None  # no teachers named: the run trains them first
    assert "{seed}" in UMT.check_config(UMT.Options(teachers={"audio": "runs/{epoch}"}), recipe)
    o = UMT.Options(teachers={"audio": "runs/seed{seed}"})
    assert UMT.check_config(o, recipe) is None
    assert (o.scaling, o.start_epoch, o.end_epoch, o.teacher_mode) == (10.0, 0, 80, "train")  # trainer_config.yaml
    assert METHODS["umt"] is UMT and UMT.epoch_base == 0


def test_teacher_mode_chooses_batch_or_running_statistics_for_the_teachers_batch_norm(tmp_path):
    specs = {"a": ModalitySpec("image", [1, 8, 8], "float32"), "b": SPECS["b"]}
    block = dict(cnn_channels=[4], feature_dim=4, hidden_dim=8)
    torch.manual_seed(7)
    solo = build_model(ModelBlock(encoders={"a": "cnn-small"}, **block), {"a": specs["a"]}, 3)
    solo.encoders["a"].features[1].running_mean.fill_(5.0)  # eval mode normalises with this; train mode by the batch
    run = tmp_path / "uni-a" / "seed0"
    run.mkdir(parents=True)
    save_checkpoint(run / "best.pt", model=solo, recipe={"method": {"name": "unimodal", "modality": "a"}},
                    epoch=1, val={}, data={"classes": CLASSES})
    (run / "eval.json").write_text("{}")
    batch = Batch({"a": torch.randn(8, 1, 8, 8), "b": torch.randn(8, 5)}, torch.zeros(8, dtype=torch.long),
                  torch.arange(8))
    distilled = {}
    for mode in ("train", "eval"):
        torch.manual_seed(0)
        model = build_model(ModelBlock(encoders={"a": "cnn-small", "b": "mlp"}, **block), specs, 3)
        attach_teachers(model, load_teachers({"a": str(run)}, model, 0, CLASSES))
        method = UMT(UMT.Options(teachers={"a": str(run)}, teacher_mode=mode), model,
                     StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.0)))
        method.on_epoch_start(1)
        student = copy.deepcopy(model.encoders["a"]).train()
        teacher = copy.deepcopy(solo.encoders["a"]).train(mode == "train")
        with torch.no_grad():
            expected = F.mse_loss(teacher(batch.inputs["a"]), student(batch.inputs["a"])).item()
        distilled[mode] = method.step(batch).logs["umt.distill"].item()
        assert distilled[mode] == pytest.approx(expected, rel=1e-5)
    assert distilled["train"] != pytest.approx(distilled["eval"], rel=1e-3)  # the modes give other targets


def test_cli_distils_in_the_window_from_a_real_unimodal_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set",
                           "method.name=unimodal", "--set", "method.modality=audio", "--set", "train.epochs=1", *TINY)
    assert code == 0, err[-2000:]
    teacher = tmp_path / "quickstart" / "synthetic" / "unimodal-audio" / "seed{seed}"
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path, "--set", "method.name=umt",
                           "--set", f"method.teachers.audio={teacher}", "--set", "method.end_epoch=0",
                           "--set", "train.epochs=2", *TINY)
    assert code == 0, err[-2000:]
    records, _, weights = run_results(tmp_path / "quickstart" / "synthetic" / "umt")
    assert records[0]["method.umt.distill"] > 0 and "method.umt.distill" not in records[1]  # epoch 0 only
    assert records[0]["method.loss.distill"] == pytest.approx(10 * records[0]["method.umt.distill"])
    assert not any("teacher" in k for k in weights)


def test_without_teachers_one_unimodal_run_per_modality_of_the_same_recipe_is_planned():
    recipe = load_recipe("recipes/quickstart.yaml", ["method.name=umt", "seed=3", "train.epochs=2",
                                                     "output.trackers=[tensorboard]"])
    runs = UMT.prerequisite_runs(UMT.Options(), recipe, ["audio", "image"])
    assert list(runs) == ["teachers/audio", "teachers/image"]
    for m, data in zip(("audio", "image"), runs.values()):
        sub = validate_recipe(data)
        assert sub.method.name == "unimodal" and sub.method_options() == {"modality": m}
        assert (sub.seed, sub.train, sub.optim, sub.model, sub.dataset) == \
            (recipe.seed, recipe.train, recipe.optim, recipe.model, recipe.dataset)
        assert sub.output.trackers == []
    assert UMT.prerequisite_runs(UMT.Options(teachers={"audio": "r"}), recipe, ["audio", "image"]) == {}
    tmp = Path("/x/{y}/teachers/audio")
    done = UMT.with_prerequisites(UMT.Options(), {"teachers/audio": tmp})
    assert done.teachers == {"audio": "/x/{{y}}/teachers/audio"}  # '{seed}' formatting gives the path back
    assert done.teachers["audio"].format(seed=0) == str(tmp)


def test_without_teachers_the_real_entry_point_trains_them_first_and_distils(tmp_path, capsys):
    """`bogc train recipes/quickstart.yaml --set method.name=umt --set train.epochs=1` (tiny data): the teachers are
    ordinary runs inside the run, said in the log, recorded in environment.json and left out of the report."""
    done = run_bogc("train", "recipes/quickstart.yaml", "--set", "method.name=umt", "--set", "train.epochs=1", *TINY,
                    "--out", tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = " ".join(done.stdout.split())
    run = tmp_path / "quickstart" / "synthetic" / "umt" / "seed0"
    assert "the recipe names none of the runs it needs" in log and "training teachers/audio" in log
    env = json.loads((run / "environment.json").read_text())
    assert env["prerequisites"] == {f"teachers/{m}": str(run / "teachers" / m) for m in ("audio", "image", "vector")}
    for m in ("audio", "image", "vector"):
        teacher = yaml.safe_load((run / "teachers" / m / "recipe.yaml").read_text())
        assert teacher["method"] == {"name": "unimodal", "tag": None, "modality": m} and teacher["seed"] == 0
        assert json.loads((run / "teachers" / m / "eval.json").read_text())["method"] == f"unimodal-{m}"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["method.umt.distill"] > 0
    code, out, _ = run_cli(capsys, "report", tmp_path / "quickstart")
    assert code == 0 and "umt" in out and "unimodal" not in out  # the teachers are the run's, not rows


@pytest.mark.slow
def test_a_stop_while_a_teacher_trains_resumes_to_the_run_that_names_the_same_teachers(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the first teacher's second epoch; --resume finishes it, trains the others and the student, which
    ends bitwise as a student trained from the same (finished) teachers named in its recipe."""
    args = ["train", "recipes/quickstart.yaml", "--set", "method.name=umt", "--set", "train.epochs=2", *TINY]
    with monkeypatch.context() as patch:
        signal_during_step(patch, signal.SIGINT, epoch=2, step=2)
        code, out, err = run_cli(capsys, *args, "--out", tmp_path / "cut")
    run = tmp_path / "cut" / "quickstart" / "synthetic" / "umt" / "seed0"
    assert code == 130 and (run / "teachers" / "audio" / "last.pt").is_file() and not (run / "eval.json").exists()
    code, out, err = run_cli(capsys, *args, "--out", tmp_path / "cut", "--resume")
    assert code == 0, out + err
    assert "resuming" in out
    assert all((run / "teachers" / m / "eval.json").is_file() for m in ("audio", "image", "vector"))
    named = [f"--set=method.teachers.{m}={run / 'teachers' / m}" for m in ("audio", "image", "vector")]
    code, out, err = run_cli(capsys, *args, *named, "--out", tmp_path / "named")
    assert code == 0, out + err
    records, result, weights = run_results(run)
    again, result_named, weights_named = run_results(tmp_path / "named" / "quickstart" / "synthetic" / "umt")
    assert records == again and result == result_named
    assert all(torch.equal(weights[k], weights_named[k]) for k in weights)


def test_a_missing_teacher_is_refused_naming_the_key_before_anything_is_written(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path / "out", "--set",
                             "method.name=umt", "--set", f"method.teachers.image={tmp_path / 'none'}", *TINY)
    assert code == 2 and "method.teachers.image:" in err and "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_real_entry_point_refuses_a_missing_teacher_naming_the_key(tmp_path):
    proc = run_bogc("train", "recipes/quickstart.yaml", "--out", tmp_path / "out", "--set", "method.name=umt",
                    "--set", f"method.teachers.image={tmp_path / 'none'}", "--set", "train.epochs=1", *TINY)
    assert proc.returncode == 2
    assert "method.teachers.image:" in proc.stderr and "train the unimodal (image) run first" in proc.stderr
    assert not (tmp_path / "out").exists()
