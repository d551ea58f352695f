"""The paper tables' two protocols: main.yaml runs each method's own reference recipe ("as published"),
common.yaml every method on one shared base keeping only its rule's keys; every cell's resolved recipe
records its protocol; the sweep format refuses what would mislabel a protocol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bogc_cli.recipe import load_recipe
from bogc_cli.sweep.plan import make_plan
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "recipes" / "paper"
AV = ("cremad", "kinetics_sounds")


def _one_per_method(plan):
    return [c for c in plan.cells if c.seed == plan.sweep.seeds[0]]


def _listed_cells(path: Path) -> int:
    """Cells a sweep file lists, counted from the file alone: each method entry on each of its datasets,
    times the seeds (so adding a method to a paper sweep needs no edit here)."""
    sweep = yaml.safe_load(path.read_text())
    per_seed = sum(len(m.get("datasets") or sweep["datasets"]) if isinstance(m, dict) else len(sweep["datasets"])
                   for m in sweep["methods"])
    return per_seed * len(sweep["seeds"])


def test_dry_runs_of_main_and_common_list_their_cells_with_their_protocols(capsys, tmp_path):
    code, out, err = run_cli(capsys, "reproduce", PAPER / "main.yaml", "--dry-run", "--out", tmp_path)
    out = " ".join(out.split())
    assert code == 0, err
    # as of writing: CREMA-D, Kinetics-Sounds 24 entries (22 methods + 2 unimodal); BraTS grade 26 (22 + 4 unimodal)
    assert _listed_cells(PAPER / "main.yaml") >= 370  # x 5 seeds
    assert f"{_listed_cells(PAPER / 'main.yaml')} of {_listed_cells(PAPER / 'main.yaml')} cells to run" in out
    assert "as-published" in out and "common" in out and "mimo" not in out
    assert "after" in out and out.index("unimodal-visual") < out.index("i2m2")  # rows in run order
    code, out, err = run_cli(capsys, "reproduce", PAPER / "common.yaml", "--dry-run", "--out", tmp_path)
    out = " ".join(out.split())
    assert code == 0, err
    n = _listed_cells(PAPER / "common.yaml")
    assert n >= 385 and f"{n} of {n} cells to run" in out and "mimo" in out and "as-published" not in out
    # umt on BraTS grade, after its four unimodal teachers (method.teachers is optional, so the cell plans)
    assert "brats_grade umt common 0,1,2,3,4 unimodal-t1, unimodal-t1ce, unimodal-t2, unimodal-flair" in \
        out.replace(" │ ", " ").replace("│", "")
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_every_cell_of_main_and_common_records_its_protocol_in_its_resolved_recipe(tmp_path):
    main = make_plan(PAPER / "main.yaml", tmp_path)
    for cell in _one_per_method(main):
        resolved = cell.resolved()
        want = "common" if cell.dataset == "brats_grade" else "as-published"
        assert cell.protocol == resolved.protocol == want, cell.name
        assert f"protocol: {want}" in resolved.to_yaml()
    common = make_plan(PAPER / "common.yaml", tmp_path)
    assert {c.resolved().protocol for c in _one_per_method(common)} == {"common"}


FILLED_BY_NEEDS = {"warm_start", "teachers"}  # method keys a cell's needs fill: I2M2/ReconBoost warm starts, UMT teachers


def test_as_published_cells_are_each_methods_own_recipe_unchanged(tmp_path):
    plan = make_plan(PAPER / "main.yaml", tmp_path)
    for cell in _one_per_method(plan):
        if cell.dataset not in AV:
            continue
        assert cell.recipe.parent.name == cell.dataset and cell.recipe.stem in cell.method, cell.name
        own = load_recipe(cell.recipe).to_dict()
        mine = load_recipe(cell.recipe, cell.overrides).to_dict()
        for block in ("dataset", "model", "optim", "train"):
            assert mine[block] == own[block], (cell.name, block)
        extra = {k: v for k, v in mine["method"].items() if own["method"].get(k) != v}
        assert set(extra) <= FILLED_BY_NEEDS, (cell.name, extra)  # only needs fill a key


def _cells(plan, dataset):
    return {c.method: c for c in plan.cells if c.dataset == dataset and c.seed == 1}


def test_common_cells_are_the_shared_base_with_the_methods_block_and_only_its_kept_keys(tmp_path):
    plan = make_plan(PAPER / "common.yaml", tmp_path)
    cells = _cells(plan, "cremad")
    base = load_recipe(ROOT / "recipes/cremad/joint.yaml").to_dict()
    for method, cell in cells.items():
        mine = load_recipe(cell.recipe, cell.overrides).to_dict()
        assert mine["dataset"] == base["dataset"], method
        own = ROOT / "recipes" / "cremad" / f"{method}.yaml"
        if own.is_file():  # its hyper-parameters as its own recipe sets them
            assert {k: v for k, v in mine["method"].items() if k not in FILLED_BY_NEEDS} == \
                {k: v for k, v in load_recipe(own).to_dict()["method"].items() if k not in FILLED_BY_NEEDS}, method
    # the shared protocol: OGM-GE's set-up, whatever the method's reference uses
    recipe = {m: load_recipe(c.recipe, c.overrides) for m, c in cells.items()}
    for method in ("mmpareto", "opm", "cggm", "i2m2", "gblending", "pmr", "agm"):
        r = recipe[method]
        assert (r.optim.name, r.optim.lr, r.optim.schedule, r.train.epochs, r.train.batch_size) == \
            ("sgd", 0.001, "step", 100, 64), method
    assert recipe["cggm"].optim.grad_clip == 0.8 and recipe["cggm"].method_options()["lam"] == 0.05
    assert recipe["i2m2"].optim.grad_clip is None  # clip 8 is its training script's, not the rule's
    assert recipe["mla"].train.eval_batch_size == 64 and recipe["joint"].train.eval_batch_size == 256
    for method in ("ogm_ge", "opm", "gblending"):
        assert recipe[method].model.unimodal_logits == "fusion-slices", method
    for method in ("joint", "agm", "pmr", "mmpareto", "cggm", "mla", "i2m2", "mimo"):
        assert recipe[method].model.unimodal_logits == "heads", method
    assert recipe["agm"].optim.grad_clip is None and recipe["mmpareto"].optim.grad_clip is None
    warm = recipe["i2m2"].method_options()["warm_start"]
    assert warm == {"joint": str(cells["joint"].run_dir), "audio": str(cells["unimodal-audio"].run_dir),
                    "visual": str(cells["unimodal-visual"].run_dir)}
    assert cells["joint"].run_dir.name == "seed1"  # the same seed's runs


def test_the_paper_sweeps_keep_the_same_keys_for_a_method_and_local_runs_its_folders_recipes(tmp_path):
    keeps: dict[str, dict] = {}
    for path in sorted(PAPER.glob("*.yaml")):
        for method, keys in (yaml.safe_load(path.read_text()).get("keep") or {}).items():
            assert keeps.setdefault(method, keys) == keys, (path.name, method)
    from bogc_cli.engine.setup import resolved_recipe

    plan = make_plan(PAPER / "local.yaml", tmp_path)
    assert {c.protocol for c in plan.cells} == {"common"}
    for cell in _one_per_method(plan):
        folder = "avdigits" if cell.dataset == "avdigits" else "mfeat"
        method = cell.method.removesuffix("-moddrop")
        sets = ["model.fill=zero-input", "experiment=paper-local", f"output.dir={tmp_path}"]
        if cell.method.endswith("moddrop"):
            sets += ["train.modality_dropout=0.3", "method.tag=moddrop"]
        own = resolved_recipe(load_recipe(ROOT / "recipes" / folder / f"{method}.yaml", sets).for_seed(0)).to_dict()
        mine = cell.resolved().to_dict()
        assert own.pop("protocol") == "custom" and mine.pop("protocol") == "common"
        assert mine == own, cell.name  # the same runs as before the protocol was named


def test_robustness_uses_the_common_protocol():
    plan = make_plan(PAPER / "robustness.yaml")
    assert len(plan.cells) == 105 and {c.protocol for c in plan.cells} == {"common"}


# ------------------------------------------------------------------ refusals
def _write(tmp_path, **change) -> Path:
    sweep = {"experiment": "x", "out": str(tmp_path / "r"), "seeds": [0],
             "datasets": {"cremad": str(ROOT / "recipes/cremad")}, "methods": ["joint"], **change}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


REFUSED = [
    ({"protocol": "as-published", "datasets": {"cremad": {"base": str(ROOT / "recipes/cremad/joint.yaml")}}},
     "as-published cells run each method's own recipe"),
    ({"protocol": "common"}, "the common protocol is one shared recipe: give base"),
    ({"protocol": "as-published", "methods": ["joint", "mimo"]}, "does not declare protocol: as-published"),
    ({"protocol": "published"}, "protocol"),
    ({"keep": {"cggm": {"optim.grad_clip": 1.0}}, "methods": ["cggm"]},
     "keep.cggm.optim.grad_clip is 1.0 but"),
    ({"keep": {"cggm": {"method.lam": 0.1}}}, "keep holds keys outside the method block"),
    ({"keep": {"cgm": {"optim.grad_clip": 0.8}}}, "keep.cgm: not a method"),
    ({"keep": {"cggm": {"optim.grad_clp": 0.8}}, "methods": ["cggm"]}, "keep.cggm.optim.grad_clp: no such recipe key"),
    ({"methods": [{"recipe": "i2m2", "needs": {"method.warm_start.joint": "joint"}}]},
     "needs 'joint' (for method.warm_start.joint), but the sweep has no such cell on cremad seed 0"),
    ({"methods": [{"recipe": "i2m2", "tag": "a", "needs": {"method.warm_start.joint": "i2m2-b"}},
                  {"recipe": "i2m2", "tag": "b", "needs": {"method.warm_start.joint": "i2m2-a"}}]},
     "form a cycle: cremad/i2m2-a/seed0 -> cremad/i2m2-b/seed0 -> cremad/i2m2-a/seed0"),
    ({"methods": [{"recipe": "joint", "datasets": ["crema"]}]}, "datasets ['crema'] are not in this sweep"),
    ({"methods": ["joint", {"recipe": "i2m2", "needs": {"method.warm_start.jont": "joint"}}]},
     "'jont' is neither 'joint' nor a modality of dataset 'cremad'; valid keys: joint, audio, visual"),
    ({"methods": ["joint", {"recipe": "joint", "tag": "x", "needs": {"train.epochs": "joint"}}]},
     "with the run directories it needs"),
]


@pytest.mark.parametrize("change,message", REFUSED, ids=[m[:30] for _, m in REFUSED])
def test_sweep_mistakes_about_protocols_and_needs_are_refused_before_anything_runs(capsys, tmp_path, change,
                                                                                   message):
    code, out, err = run_cli(capsys, "reproduce", _write(tmp_path, **change))
    assert code == 2 and message in " ".join(err.split()), err
    assert not (tmp_path / "r").exists()


def test_a_mislabelled_protocol_is_refused_through_the_real_entry_point(tmp_path):
    path = _write(tmp_path, protocol="as-published", methods=["mimo"])
    done = subprocess.run([sys.executable, "-m", "bogc_cli", "reproduce", str(path), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "mimo.yaml does not declare protocol: as-published" in " ".join(done.stderr.split())


def test_show_prints_one_cells_resolved_recipe_and_names_a_wrong_cell(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "reproduce", PAPER / "common.yaml", "--show", "cremad/cggm/seed3",
                           "--out", tmp_path)
    assert code == 0
    shown = yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("#")))
    assert shown["protocol"] == "common" and shown["seed"] == 3 and shown["optim"]["grad_clip"] == 0.8
    assert shown["method"]["classifier_lr"] == 0.0005  # method defaults filled in, as recipe.yaml will have
    code, _, err = run_cli(capsys, "reproduce", PAPER / "common.yaml", "--show", "cremad/cgm/seed3")
    assert code == 2 and "no such cell" in err and "--dry-run lists them" in " ".join(err.split())
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ the report names the protocol
def _run(root: Path, dataset: str, method: str, seed: int, accuracy: float, protocol: str | None,
         recipe_protocol: str | None = None) -> Path:
    import json

    run_dir = root / "paper-main" / dataset / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    record = {"experiment": "paper-main", "dataset": dataset, "method": method, "seed": seed, "accuracy": accuracy,
              "n": 100, **({"protocol": protocol} if protocol else {})}
    (run_dir / "eval.json").write_text(json.dumps(record))
    if recipe_protocol:
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump({"experiment": "paper-main", "protocol": recipe_protocol}))
    return run_dir


def test_report_names_the_protocol_in_every_table_and_never_mixes_two(tmp_path):
    from io import StringIO

    from rich.console import Console

    from bogc_cli.report import run_report

    for seed, (a, b) in enumerate([(0.70, 0.60), (0.72, 0.62)]):
        _run(tmp_path, "cremad", "joint", seed, a, "as-published")
        _run(tmp_path, "cremad", "ogm_ge", seed, b, "as-published")
        _run(tmp_path, "brats_grade", "joint", seed, a - 0.1, None, recipe_protocol="common")  # older eval.json
    result = run_report(tmp_path, plots=False)  # figures: the test below
    names = {t.name for t in result.tables}
    assert {"accuracy_as-published", "accuracy_common"} <= names and "accuracy" not in names
    for table in result.tables:
        protocol = table.name.rsplit("_", 1)[1]
        assert f"protocol: {protocol.replace('as-published', 'as published')}" in table.heading
    published = next(t for t in result.tables if t.name == "accuracy_as-published")
    assert set(published.stats["dataset"]) == {"cremad"}  # brats_grade's common runs are not in it
    common = next(t for t in result.tables if t.name == "accuracy_common")
    assert set(common.stats["dataset"]) == {"brats_grade"} and common.stats["mean"].iloc[0] == pytest.approx(0.61)
    assert any("2 protocols" in w and "_as-published" in w for w in result.warnings)
    tables = tmp_path / "tables"
    assert "protocol: as published" in (tables / "accuracy_as-published.md").read_text().splitlines()[0]
    assert "protocol: common" in (tables / "accuracy_common.tex").read_text().splitlines()[0]
    rich_out = StringIO()
    Console(file=rich_out, width=300).print(published.to_rich())
    assert "protocol: as published" in rich_out.getvalue()


def test_one_protocol_keeps_the_plain_table_names_and_an_unlabelled_run_is_custom(tmp_path):
    from bogc_cli.report import run_report
    from bogc_cli.report.aggregate import find_runs

    _run(tmp_path, "cremad", "joint", 0, 0.7, None)  # neither eval.json nor recipe.yaml names one
    assert find_runs(tmp_path)["protocol"].tolist() == ["custom"]
    result = run_report(tmp_path, plots=False)
    assert "accuracy" in {t.name for t in result.tables} and not result.warnings
    assert all(t.heading.endswith("protocol: custom (each recipe's own set-up)") for t in result.tables)


def test_a_run_resumes_whatever_protocol_label_it_was_started_under_but_not_under_another_setup(tmp_path):
    from bogc_cli.engine.resume import check_same_recipe
    from bogc_cli.errors import UserError

    cell = next(c for c in make_plan(PAPER / "local.yaml", tmp_path).cells if c.method == "ogm_ge")
    current = cell.resolved().to_dict()
    assert current["protocol"] == "common"
    check_same_recipe({k: v for k, v in current.items() if k != "protocol"}, current, cell.run_dir)  # older
    check_same_recipe({**current, "protocol": "custom"}, current, cell.run_dir)  # the same set-up, relabelled
    with pytest.raises(UserError, match="optim.lr"):
        check_same_recipe({**current, "optim": {**current["optim"], "lr": 0.1}}, current, cell.run_dir)


def test_robustness_tables_and_comparison_figures_never_mix_protocols_on_one_dataset(tmp_path, monkeypatch):
    """One experiment, one dataset, two protocols (as main.yaml would be if BraTS grade shared CREMA-D's name):
    the missing-modality tables and the method-comparison figures are drawn per protocol, each naming it."""
    import json

    import pandas as pd

    from bogc_cli.report import comparison_plots, run_report
    from bogc_cli.report.aggregate import find_missing, find_runs

    figures = {}  # drawn, not written: the figures' content is what is checked
    monkeypatch.setattr(comparison_plots, "save_figure", lambda fig, path, pdf=True: figures.setdefault(
        Path(path).name, fig) and [])
    want = {"as-published": {"joint", "ogm_ge"}, "common": {"uniform", "bogc"}}
    for protocol, methods in want.items():
        for method in methods:
            for seed in (0, 1):
                accuracy = 0.8 if protocol == "as-published" else 0.6  # a mixed mean would be 0.7
                run_dir = _run(tmp_path, "cremad", method, seed, accuracy, protocol)
                pd.DataFrame([{"missing": m, "rate": r, "fill": "zero-input", "accuracy": accuracy - r / 4}
                              for m in ("audio", "visual") for r in (0.0, 0.5, 1.0)]).to_csv(
                    run_dir / "missing_modality.csv", index=False)
                (run_dir / "metrics.jsonl").write_text("".join(json.dumps(
                    {"epoch": e, "val_accuracy": accuracy, "val_unimodal_accuracy.audio": accuracy,
                     "val_unimodal_accuracy.visual": accuracy / 2}) + "\n" for e in (1, 2)))
    tables = {t.name: t for t in run_report(tmp_path, "md", plots=False).tables}
    runs = find_runs(tmp_path)
    comparison_plots.write_comparison_plots(runs, find_missing(tmp_path, runs=runs), tmp_path / "plots", [])
    for protocol, methods in want.items():
        robust = tables[f"robustness_cremad_{protocol}"]
        assert set(robust.stats["method"]) == methods and f"protocol: {protocol.replace('-', ' ')}" in robust.heading
        mean = 0.8 if protocol == "as-published" else 0.6
        at_zero = robust.stats[robust.stats["rate"].astype(str) == "0.0"]
        assert at_zero["mean"].tolist() == pytest.approx([mean] * len(at_zero)) and len(at_zero) == 4
        for kind in ("compare_missing", "compare_unimodal"):
            fig = figures.pop(f"{kind}_cremad_{protocol}.png")
            assert f"cremad ({protocol})" in fig._suptitle.get_text()
            assert {line.get_label() for ax in fig.axes for line in ax.get_lines()
                    if not line.get_label().startswith("_")} == methods
    assert "robustness_cremad" not in tables and not [n for n in figures if n.startswith("compare_")]


@pytest.mark.parametrize("sweep", ["main.yaml", "common.yaml"])
def test_umt_cells_distil_from_the_unimodal_cells_of_their_dataset_and_seed(sweep, tmp_path):
    plan = make_plan(PAPER / sweep, tmp_path)
    umt = [c for c in plan.cells if c.method == "umt"]
    # brats_grade too: its cell plans from joint.yaml since method.teachers is optional (needs: fills it)
    assert {c.dataset for c in umt} == {*AV, "brats_grade"}
    for cell in umt:
        runs = {c.method: c.run_dir for c in plan.cells if c.dataset == cell.dataset and c.seed == cell.seed}
        teachers = cell.resolved().method_options()["teachers"]
        modalities = ("t1", "t1ce", "t2", "flair") if cell.dataset == "brats_grade" else ("audio", "visual")
        assert teachers == {m: str(runs[f"unimodal-{m}"]) for m in modalities}, cell.name
        assert {d.method for d in cell.needs} == {f"unimodal-{m}" for m in modalities}
