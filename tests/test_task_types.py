"""Task types (issue 21 item 4): multilabel and regression metrics against values computed by hand, the task
losses, model selection's direction, the refusals at recipe validation, and one tiny end-to-end run per task
through the real ``bogc`` entry point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bogc_cli.tasks import TaskSpec
from bogc_cli.tasks.losses import batch_hits, task_loss
from bogc_cli.tasks.metrics import multilabel_metrics, regression_metrics
from cli_helpers import run_bogc, run_cli

# ------------------------------------------------------------------ metrics, by hand

ML_LABELS = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.uint8)
ML_LOGITS = np.array([[2.0, -1.0, -0.5], [0.5, 1.0, -2.0], [1.5, -0.2, 0.3], [-1.0, -3.0, 0.0]])


def test_multilabel_f1s_and_map_by_hand():
    """Predicted (sigmoid > 0.5, so logit 0 is not a prediction): [1,0,0] [1,1,0] [1,0,1] [0,0,0].
    Per label (TP, FP, FN): 0: (2, 1, 0) F1 4/5; 1: (1, 0, 1) F1 2/3; 2: (0, 1, 1) F1 0.
    micro: TP 3, FP 2, FN 2 -> 6/10; macro: (4/5 + 2/3 + 0)/3; weighted by positives (2, 2, 1):
    (2*4/5 + 2*2/3)/5; samples: rows 2/3, 2/3, 2/4 and 0 (nothing true, nothing predicted) -> mean.
    AP: label 0 and 1 rank both positives first (1, 1); label 2's one positive (p = sigmoid(-0.5)) is ranked
    third, below sigmoid(0.3) and sigmoid(0) = 0.5: precision 1/3 -> mAP (1 + 1 + 1/3)/3."""
    got = multilabel_metrics(ML_LABELS, ML_LOGITS)
    assert got["n"] == 4
    assert got["micro_f1"] == pytest.approx(0.6)
    assert got["macro_f1"] == pytest.approx((4 / 5 + 2 / 3) / 3)
    assert got["weighted_f1"] == pytest.approx((2 * 4 / 5 + 2 * 2 / 3) / 5)
    assert got["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 0) / 4)
    assert got["map"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert got["subset_accuracy"] == pytest.approx(1 / 4)  # only the empty row is all right


def test_map_leaves_out_a_label_without_positives():
    labels = ML_LABELS.copy()
    labels[:, 2] = 0  # label 2 has no positive in the split: no precision-recall curve
    assert multilabel_metrics(labels, ML_LOGITS)["map"] == pytest.approx(1.0)
    assert math.isnan(multilabel_metrics(np.zeros((4, 3), np.uint8), ML_LOGITS)["map"])


Y = np.array([-2.4, 0.0, 1.2, 0.5, -0.6, 0.0])
YHAT = np.array([-1.9, 0.3, 2.6, -0.2, -0.5, -0.1])


def test_regression_metrics_by_hand():
    """MAE: (0.5 + 0.3 + 1.4 + 0.7 + 0.1 + 0.1)/6.
    Acc-2 negative / non-negative (all rows; >= 0): truth F T T T F T, prediction F T T F F F -> 4/6;
    weighted F1: non-negative (4 rows) TP 2 FN 2 -> 2/3, negative (2) TP 2 FP 2 -> 2/3.
    Acc-2 negative / positive without the two zero-labelled rows: truth F T T F, prediction F T F F -> 3/4;
    weighted F1: positive (2) TP 1 FN 1 -> 2/3; negative (2) TP 2 FP 1 -> 4/5 -> (2/3 + 4/5)/2.
    Acc-7 (clip to [-3, 3], round half to even): truth -2 0 1 0 -1 0, prediction -2 0 3 -0 -0 -0 -> 4/6."""
    got = regression_metrics(Y, YHAT.reshape(-1, 1))  # a regression head's [N, 1] output
    assert got["n"] == 6
    assert got["mae"] == pytest.approx(3.1 / 6)
    dx, dy = YHAT - YHAT.mean(), Y - Y.mean()
    assert got["corr"] == pytest.approx((dx * dy).sum() / math.sqrt((dx ** 2).sum() * (dy ** 2).sum()))
    assert got["corr"] == pytest.approx(0.880617, abs=1e-6)
    assert got["acc2_has0"] == pytest.approx(4 / 6)
    assert got["f1_has0"] == pytest.approx(2 / 3)
    assert got["acc2_non0"] == pytest.approx(3 / 4)
    assert got["f1_non0"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert got["acc7"] == pytest.approx(4 / 6)


def test_regression_corr_of_constant_predictions_is_nan_and_selection_skips_it():
    assert math.isnan(regression_metrics(Y, np.zeros(6))["corr"])
    spec = TaskSpec("regression", select_metric="corr")
    assert spec.better(float("nan"), None)  # the first epoch is kept even so: a run always has a best epoch
    assert not spec.better(float("nan"), 0.1) and spec.better(0.2, float("nan"))


def test_every_selection_metric_is_in_the_tables():
    from bogc_cli.tasks import SELECTION
    from bogc_cli.tasks.metrics import METRIC_TITLES, TABLE_METRICS

    for task, selection in SELECTION.items():
        assert set(selection.metrics) <= set(TABLE_METRICS[task]) <= set(METRIC_TITLES)
        assert selection.default in selection.metrics


def test_selection_metric_and_direction_per_task():
    assert (TaskSpec().metric, TaskSpec("multilabel").metric, TaskSpec("regression").metric) == \
        ("accuracy", "micro_f1", "mae")
    mae = TaskSpec("regression")
    assert mae.better(0.7, 0.8) and not mae.better(0.8, 0.7) and not mae.better(0.7, 0.7)  # tie: the earlier
    acc2 = TaskSpec("regression", select_metric="acc2_non0")
    assert acc2.better(0.8, 0.7) and not acc2.better(0.7, 0.8)


def test_tune_maximises_the_selection_metric_signed():
    from bogc_cli.tasks import record_score

    assert record_score({"val_accuracy": 0.7, "val_macro_f1": 0.6}) == 0.7
    assert record_score({"val_accuracy": 0.7, "val_macro_f1": 0.6}, "macro_f1") == 0.6
    assert record_score({"val_micro_f1": 0.4, "val_macro_f1": 0.3}) == 0.4
    assert record_score({"val_mae": 0.8, "val_corr": 0.5}) == -0.8  # lower MAE is better: maximise -MAE
    assert record_score({"val_mae": 0.8, "val_corr": 0.5}, "corr") == 0.5


# ------------------------------------------------------------------ losses


def test_task_losses_by_hand():
    out = torch.tensor([[1.0], [-1.0]])
    y = torch.tensor([0.5, 0.0])
    assert task_loss(TaskSpec("regression"), out, y).item() == pytest.approx((0.5 + 1.0) / 2)
    assert task_loss(TaskSpec("regression", "mse"), out, y).item() == pytest.approx((0.25 + 1.0) / 2)
    assert task_loss(TaskSpec("regression"), out, y, reduction="none").tolist() == pytest.approx([0.5, 1.0])
    bce = task_loss(TaskSpec("multilabel"), torch.tensor([[0.0, 2.0]]), torch.tensor([[1, 0]], dtype=torch.uint8))
    assert bce.item() == pytest.approx((math.log(2) + math.log(1 + math.e ** 2)) / 2)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    assert task_loss(TaskSpec(), logits, labels).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item())


def test_training_hits_per_task():
    assert batch_hits(TaskSpec("regression"), torch.tensor([[0.2], [-0.1], [0.0]]), torch.tensor([1.0, 0.5, 0.0])) == 2
    assert batch_hits(TaskSpec("multilabel"), torch.tensor([[1.0, -1.0], [1.0, 1.0]]),
                      torch.tensor([[1, 0], [1, 0]], dtype=torch.uint8)) == 1


def test_contribution_value_functions_per_task_by_hand():
    """Per row: multilabel, labels right at sigmoid 0.5 and the mean probability of each label's true state;
    regression, minus the absolute error and the sign (>= 0) right."""
    from bogc_cli.engine.contribution import row_values

    right, prob = row_values("multilabel", torch.tensor([[0.0, 2.0], [1.0, -1.0]]),
                             torch.tensor([[1, 0], [1, 0]], dtype=torch.uint8))
    s2 = 1 / (1 + math.exp(-2.0))
    s1 = 1 / (1 + math.exp(-1.0))
    assert right.tolist() == [0.0, 1.0]  # logit 0 is not a prediction; row 1 both right
    assert prob.tolist() == pytest.approx([(0.5 + (1 - s2)) / 2, (s1 + s1) / 2])
    err, sign = row_values("regression", torch.tensor([[0.5], [-1.0], [0.0]]), torch.tensor([1.5, 0.0, -0.2]))
    assert err.tolist() == pytest.approx([-1.0, -1.0, -0.2]) and sign.tolist() == [1.0, 0.0, 0.0]


def test_cggm_accuracy_for_regression_is_the_references_sign_accuracy():
    """zrguo/CGGM train_eval_senti: (prediction > 0) == (truth > 0), zero-labelled rows included."""
    from bogc_cli.fusion.cggm import batch_accuracy

    got = batch_accuracy(torch.tensor([[0.3], [-0.2], [0.1], [0.0]]), torch.tensor([1.0, 0.0, -0.5, 0.0]), "regression")
    # prediction > 0: T F T F; truth > 0: T F F F (a zero target is "not positive") -> rows 0, 1, 3 right
    assert got.item() == pytest.approx(3 / 4)


# ------------------------------------------------------------------ tiny caches, refusals, end to end


def write_task_cache(root: Path, task: str, n: int = 24) -> Path:
    """A two-modality vector cache of ``task`` (its storage form, data/cache.py) with a learnable target."""
    from bogc_cli.data.cache import SplitArrays, write_cache

    rng = np.random.default_rng(0)

    def split(rows: int) -> SplitArrays:
        a = rng.normal(size=(rows, 6)).astype(np.float32)
        b = rng.normal(size=(rows, 4)).astype(np.float32)
        if task == "regression":
            y = np.clip(1.5 * a[:, 0] + b[:, 0], -3, 3).astype(np.float32)
            y[:2] = 0.0  # zero-labelled rows, which one form of Acc-2 leaves out
        elif task == "multilabel":
            y = np.stack([a[:, 0] > 0, b[:, 0] > 0, a[:, 1] + b[:, 1] > 0], axis=1).astype(np.uint8)
        else:
            y = (a[:, 0] > 0).astype(np.int64)
        return SplitArrays({"a": a, "b": b}, y)

    classes = {"regression": ["sentiment"], "multilabel": ["x", "y", "z"], "classification": ["neg", "pos"]}[task]
    write_cache(root, dataset="arrays", classes=classes, kinds={"a": "vector", "b": "vector"},
                splits={"train": split(n), "val": split(12), "test": split(12)}, task=task)
    return root


TINY = ["--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "model.hidden_dim=16",
        "--set", "model.feature_dim=8", "--set", "train.conflict_every=0"]


def _train_args(cache: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["train", "recipes/quickstart.yaml", "--set", "dataset.name=arrays", "--set", f"dataset.root={cache}",
            "--set", f"method.name={method}", "--out", str(out), *TINY, *extra]


@pytest.mark.parametrize("overrides, words", [
    (["dataset.name=mosi", "dataset.task=regression", "method.name=ogm_ge"],
     ["method.name", "'ogm_ge' is defined for classification only, not for regression", "cggm", "joint"]),
    (["dataset.name=cremad", "dataset.task=multilabel"], ["dataset.task", "cremad data is classification"]),
    (["dataset.name=cremad", "train.select_metric=mae"], ["train.select_metric", "'mae' is not a classification"]),
    (["dataset.name=mosi", "train.select_metric=f1"], ["train.select_metric", "not a metric of any task"]),
    (["dataset.name=mosi", "dataset.task=regression", "method.name=cggm", "method.direction=gradients"],
     ["direction: gradients", "softmax", "Methods defined for regression"]),
    (["dataset.name=mosi", "dataset.task=regression", "method.name=bogc", "method.moments=laplace"],
     ["moments: laplace", "microbatch"]),
    (["dataset.name=arrays", "dataset.task=ranking"], ["dataset.task", "classification", "regression"]),
])
def test_recipe_validation_refuses_what_the_task_does_not_allow(capsys, tmp_path, overrides, words):
    args = [a for o in overrides for a in ("--set", o)]
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", *args, "--out", tmp_path / "r")
    assert code == 2, out + err
    message = " ".join(err.split())
    for word in words:
        assert word in message, message
    assert not (tmp_path / "r").exists()


def test_a_recipe_cannot_turn_a_caches_task_into_another(capsys, tmp_path):
    cache = write_task_cache(tmp_path / "cls", "classification")
    code, out, err = run_cli(capsys, *_train_args(cache, tmp_path / "r", "joint", "--set", "dataset.task=regression"))
    message = " ".join(err.split())
    assert code == 2 and "holds classification targets" in message and "--preset regression" in message, out + err
    assert not (tmp_path / "r").exists()
    reg = write_task_cache(tmp_path / "reg", "regression")  # the method is refused once the manifest tells the task
    code, out, err = run_cli(capsys, *_train_args(reg, tmp_path / "r", "ogm_ge"))
    message = " ".join(err.split())
    assert code == 2 and "is regression data" in message and "defined for classification only" in message
    assert not (tmp_path / "r").exists()


def test_multilabel_end_to_end_through_the_real_entry_point(capsys, tmp_path):
    """joint on a multilabel cache: C independent logits, BCE, selection on validation micro-F1; eval,
    missing-modality and report show the multilabel metrics. (The regression run end to end, CGGM on a
    CMU-MOSI-style cache prepared with --preset regression: tests/test_prepare_mosei.py.)"""
    import pandas as pd

    cache = write_task_cache(tmp_path / "ml", "multilabel")
    done = run_bogc(*_train_args(cache, tmp_path / "r", "joint"), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "selected on validation micro_f1" in " ".join(done.stdout.split())
    assert "train exact-match" in done.stdout and "train acc " not in done.stdout  # the tally named for its task
    run = tmp_path / "r/quickstart/arrays/joint/seed0"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["task"] == "multilabel" and ev["select_metric"] == "micro_f1" and ev["n"] == 12
    for key in ("micro_f1", "macro_f1", "weighted_f1", "samples_f1", "map", "val_micro_f1"):
        assert 0.0 <= ev[key] <= 1.0, key
    assert set(ev["unimodal_micro_f1"]) == {"a", "b"} and "accuracy" not in ev
    assert ev["linear_probe"]["not_applicable"].startswith("multilabel run")
    shapley = ev["contribution"]["label_accuracy"]  # the task's value functions (engine/contribution.py)
    assert sum(shapley["shapley"].values()) == pytest.approx(shapley["full"] - shapley["empty"])
    assert 0 <= ev["contribution"]["true_label_probability"]["full"] <= 1
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["val_micro_f1"] == ev["val_micro_f1"] and "val_accuracy" not in record
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0 and "Micro-F1 (selection metric)" in out and "mAP" in out, out + err
    assert json.loads((run / "eval.json").read_text())["map"] == pytest.approx(ev["map"], abs=1e-6)
    code, out, err = run_cli(capsys, "missing-modality", run, "--rates", "0,1")
    assert code == 0 and "missing-modality micro_f1" in " ".join(out.split()), out + err
    rows = pd.read_csv(run / "missing_modality.csv")
    assert set(rows["metric"]) == {"micro_f1"}
    assert rows.loc[rows["rate"] == 0, "score"].iloc[0] == pytest.approx(ev["micro_f1"], abs=1e-6)
    code, out, err = run_cli(capsys, "report", tmp_path / "r")
    text = " ".join(out.split())
    assert code == 0 and "Test Micro-F1" in text and "Test mAP" in text and "AUC: area under micro_f1" in text, \
        out + err
    assert "Shapley contribution of each modality to the fraction of labels right" in text


# ------------------------------------------------------------------ every method that declares a task trains on it


def _declared() -> list[tuple[str, str]]:
    from bogc_cli.fusion import METHODS

    return [(name, task) for name, cls in METHODS.items() for task in cls.tasks if task != "classification"]


@pytest.mark.parametrize("name, task", _declared())
def test_every_method_declaring_a_task_steps_on_it(name, task):
    """A method that declares multilabel or regression takes finite steps that lower the task's loss on a
    fixed batch, with heads of the task's width (C logits, or one value)."""
    from bogc_cli.data.cache import ModalitySpec
    from bogc_cli.data.loader import Batch
    from bogc_cli.fusion import METHODS, StepContext
    from bogc_cli.models.build import build_model
    from bogc_cli.recipe import ModelBlock

    torch.manual_seed(0)
    specs = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}
    spec = TaskSpec(task)
    cls = METHODS[name]
    options = cls.Options.model_validate({"modality": "a"} if name == "unimodal" else {})
    chosen = cls.used_modalities(options, list(specs))
    model = build_model(ModelBlock(encoders="mlp", feature_dim=8, hidden_dim=16), {m: specs[m] for m in chosen}, 3,
                        task=spec)
    cls.adapt_model(options, model)
    assert model.fusion_head(  # the heads' width follows the task
        [torch.zeros(2, model.encoders[m].out_dim) for m in model.modalities]).shape[1] == (1 if task == "regression"
                                                                                        else 3)
    method = cls(options, model, StepContext(torch.device("cpu"), torch.optim.Adam(model.parameters(), lr=1e-2)))
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(32, *specs[m].shape, generator=g) for m in model.modalities}
    y = (torch.randn(32, generator=g).clamp(-3, 3) if task == "regression"
         else (torch.rand(32, 3, generator=g) > 0.5).to(torch.uint8))
    batch = Batch(x, y, torch.arange(32))
    method.on_epoch_start(1)

    def fused_loss() -> float:
        with torch.no_grad():
            return task_loss(spec, model(x).fused_logits, y).item()

    before = fused_loss()
    for _ in range(20):
        result = method.step(batch)
        assert torch.isfinite(result.loss) and not method.ctx.skipped_step
    assert fused_loss() < before


# ------------------------------------------------------------------ your own arrays: dataset.task says how labels read


def _raw_arrays(root: Path, labels: dict[str, np.ndarray]) -> Path:
    rng = np.random.default_rng(0)
    for split, y in labels.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        np.save(root / split / "a.npy", rng.normal(size=(len(y), 4)).astype(np.float32))
        np.save(root / split / "labels.npy", y)
    return root


def test_arrays_folder_read_as_each_task(tmp_path):
    from bogc_cli.data.arrays import read_arrays_folder

    values = {"train": np.linspace(-2, 2, 20), "test": np.array([0.5, -1.0, 0.0])}
    root = _raw_arrays(tmp_path / "reg", values)
    manifest, splits = read_arrays_folder(root, task="regression", val_fraction=0.25)
    assert manifest.task == "regression" and manifest.classes == ["target"] and manifest.class_counts["test"] == {}
    assert splits["test"].labels.dtype == np.float32 and splits["test"].labels.tolist() == [0.5, -1.0, 0.0]
    assert len(splits["val"]) == 5 and len(splits["train"]) == 15  # seeded, unstratified carve-out
    rows = {"train": np.array([[1, 0, 1], [0, 1, 0]] * 5), "test": np.array([[1, 1, 0], [0, 0, 1]])}
    root = _raw_arrays(tmp_path / "ml", rows)
    (root / "classes.txt").write_text("drama\ncomedy\nhorror\n")
    manifest, splits = read_arrays_folder(root, task="multilabel")
    assert manifest.classes == ["drama", "comedy", "horror"] and splits["test"].labels.dtype == np.uint8
    assert sum(manifest.class_counts[s]["drama"] for s in ("train", "val")) == 5  # positives per label


@pytest.mark.parametrize("task, labels, words", [
    ("classification", np.linspace(-1, 1, 6), ["dtype float64", "dataset.task: regression"]),
    ("classification", np.ones((6, 2), np.int64), ["labels must be 1-D", "dataset.task: multilabel"]),
    ("multilabel", np.full((6, 2), 2), ["values other than 0 and 1"]),
    ("regression", np.array([0.0, 1.0, np.nan, 2.0, 1.0, 0.5]), ["NaN or infinite"]),
])
def test_arrays_labels_that_do_not_fit_the_task_are_refused(tmp_path, task, labels, words):
    from bogc_cli.data.arrays import read_arrays_folder
    from bogc_cli.errors import UserError

    root = _raw_arrays(tmp_path / "d", {"train": labels, "test": labels})
    with pytest.raises(UserError) as exc:
        read_arrays_folder(root, task=task)
    for word in words:
        assert word in str(exc.value)


def test_prepare_arrays_task_option(capsys, tmp_path):
    root = _raw_arrays(tmp_path / "raw", {"train": np.linspace(-2, 2, 12), "test": np.array([0.5, -1.0])})
    code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "c", "--task",
                             "regression")
    assert code == 0, out + err
    from bogc_cli.data.cache import read_manifest

    assert read_manifest(tmp_path / "c").task == "regression"
    code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", root, "--out", tmp_path / "d", "--task", "ranking")
    assert code == 2 and "--task 'ranking': valid are classification, multilabel, regression" in err
    code, out, err = run_cli(capsys, "prepare", "mosi", "--raw", root, "--out", tmp_path / "e", "--task", "regression")
    assert code == 2 and "--task is for `bogc prepare arrays`" in err and "preset" in err


def _cell(lines: list[str], name: str, column: int) -> str:
    """The text of ``column`` in the row of a rich table whose first cell is ``name`` (folded lines joined)."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"│ {name} "))
    parts = []
    for line in lines[start:]:
        cells = line.split("│")[1:-1]
        if line is not lines[start] and (len(cells) <= column or cells[0].strip()):
            break
        parts.append(cells[column].strip())
    return " ".join(p for p in parts if p)


def test_list_shows_task_types_per_dataset_and_method(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert _cell(lines, "mosi", 2) == "classification, regression"
    assert _cell(lines, "cremad", 2) == "classification"
    assert _cell(lines, "ogm_ge", 3) == "classification"
    assert _cell(lines, "cggm", 3).startswith("classification, regression; regression as the reference's")
    assert _cell(lines, "bogc", 3).startswith("classification, multilabel, regression;")
