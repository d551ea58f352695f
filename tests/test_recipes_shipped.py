"""Every recipe in recipes/ validates against the current schema, and names data that exists."""

import json
from pathlib import Path

import pytest

from bogc_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "recipes" / "paper").glob("*.yaml"))  # sweep files, not recipes
SPACES = sorted((ROOT / "recipes" / "tune").glob("*.yaml"))  # bogc tune's search spaces (tests/test_tune.py)
RECIPES = sorted(set((ROOT / "recipes").rglob("*.yaml")) - set(SWEEPS) - set(SPACES))


def test_there_are_recipes():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    assert {"quickstart.yaml", "avdigits/joint.yaml", "avdigits/unimodal-audio.yaml",
            "avdigits/unimodal-image.yaml", "mfeat/joint.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.train.epochs > 0


@pytest.mark.slow
def test_avdigits_joint_fuses_better_than_either_probe(shared_data, tmp_path, capsys):
    """Real data end to end: prepare FSDD + MNIST, train joint briefly, fused beats each modality's head."""
    from cli_helpers import run_cli

    code, _, err = run_cli(capsys, "prepare", "avdigits", "--raw", shared_data, "--out", tmp_path / "av")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", ROOT / "recipes/avdigits/joint.yaml", "--seeds", "0", "--out",
                           tmp_path / "res", "--set", f"dataset.root={tmp_path / 'av'}", "--set", "train.epochs=4")
    assert code == 0, err
    ev = json.loads((tmp_path / "res/avdigits/avdigits/joint/seed0/eval.json").read_text())
    assert ev["accuracy"] > max(ev["unimodal_accuracy"].values())


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_plans(path, tmp_path):
    """Every paper sweep plans: its recipes exist and every cell's recipe validates (no data needed)."""
    from bogc_cli.sweep.plan import make_plan

    plan = make_plan(path, tmp_path)
    sweep = plan.sweep
    per_seed = sum(len(m.datasets) if getattr(m, "datasets", None) else len(sweep.datasets) for m in sweep.methods)
    assert len(plan.cells) == per_seed * len(sweep.seeds)  # a method entry runs on its `datasets:` (default all)
    assert all(c.status == "todo" for c in plan.cells)


PROTOCOL = {  # the reference file each "as published" recipe names, and where it departs from the method defaults
    "ogm_ge": ("OGM-GE_CVPR2022 main.py", {}), "opm": ("BML_TPAMI2024 code/scripts/train_opm.sh", {}),
    "agm": ("AGM_ICCV2023 run/CREMAD_main.py", {}), "pmr": ("Modal-Imbalance-PMR main_Prototype_grad.py", {}),
    "mmpareto": ("MMPareto_ICML2024 code/MMPareto.py", {}),
    # issue 20's in-step methods
    "lfm": ("NeurIPS24-LFM Crema_epoch.py", {}), "dimml": ("DI-MML main_CFT.py", {"temperature": 50.0}),
    "mmcosine": ("MMCosine_ICASSP23 main_CD.py", {}), "cml": ("BalanceBenchmark balancemm/trainer/CML_trainer.py", {}),
    "mbsd": ("BalanceBenchmark balancemm/trainer/MBSD_trainer.py", {}),
    "amco": ("BalanceBenchmark balancemm/trainer/AMCo_trainer.py", {}),
    "greedy": ("greedy_multimodal_learning configs/training_guided.gin", {}),
    # issue 20's methods acting at epoch starts
    "reconboost": ("ReconBoost train.py", {}), "relearning": ("Diagnosing_Relearning_ECCV2024 code/ours.py", {}),
    "inforeg": ("InfoReg_CVPR2025 main.py", {}), "smv": ("Valuate-and-Enhance-Multimodal-Cooperation code/sample_level.py", {}),
    "uniform": ("MMPareto_ICML2024 code/uniform_baseline.py", {}),
    # issue 20's unimodal-model methods
    "ume": ("BalanceBenchmark balancemm/trainer/unimodal_trainer.py", {}),
    "umt": ("BalanceBenchmark balancemm/trainer/UMT_trainer.py", {}),
}
RUN_DIRECTORIES = {"teachers"}  # options naming other runs (per dataset), not hyper-parameters
KS_OGM = ("BML_TPAMI2024 code/scripts/train_ogm.sh", {"start_epoch": 6, "end_epoch": 60})  # its KS script


@pytest.mark.parametrize("dataset", ["cremad", "kinetics_sounds"])
@pytest.mark.parametrize("method", sorted(PROTOCOL))
def test_reference_protocol_recipes_name_their_script_and_keep_the_reference_defaults(dataset, method):
    from bogc_cli.fusion import METHODS

    path = ROOT / "recipes" / dataset / f"{method}.yaml"
    source, changed = KS_OGM if (dataset, method) == ("kinetics_sounds", "ogm_ge") else PROTOCOL[method]
    comment = " ".join(line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#"))
    repo, script = source.split(" ")
    assert repo in comment and script in comment, f"{path.name}: name the reference script it follows"
    recipe = load_recipe(path)
    assert "unimodal_logits" in recipe.model.model_fields_set  # the scoring is part of the protocol: explicit
    assert recipe.train.epochs and recipe.train.batch_size and recipe.optim.name
    defaults = METHODS[method].Options().model_dump()
    shipped = METHODS[method].Options(**recipe.method_options()).model_dump()
    assert {k: v for k, v in shipped.items() if k not in RUN_DIRECTORIES} == \
        {k: v for k, v in {**defaults, **changed}.items() if k not in RUN_DIRECTORIES}
