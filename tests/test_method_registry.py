"""Every method of the issue list is registered, documented and listed by `bogc list`."""

import importlib

import pytest

from bogc_cli.fusion import METHOD_MODULES, METHODS
from cli_helpers import run_cli

BASELINES = ["ogm_ge", "opm", "agm", "pmr", "mmpareto", "cggm", "gblending", "mla", "i2m2", "mimo",
             "lfm", "dimml", "mmcosine", "cml", "mbsd", "greedy", "amco",
             "reconboost", "relearning", "inforeg", "smv", "ume", "umt"]


def test_all_methods_registered():
    assert set(METHODS) == {"joint", "uniform", "unimodal", "bogc", *BASELINES}
    assert len(METHOD_MODULES) == len(METHODS)


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_cites_its_paper_and_lists_hyper_parameters(name):
    doc = importlib.import_module(f"bogc_cli.fusion.{name}").__doc__
    assert any(str(year) in doc for year in range(2019, 2027)), "paper year missing from the docstring"
    for option in METHODS[name].Options.model_fields:
        assert option in doc, f"{name}: option {option!r} is not described in the module docstring"
    assert METHODS[name].summary and METHODS[name].min_modalities >= 1


def test_list_shows_every_method_with_its_modality_rule(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in METHODS:
        assert name in out
    for name in BASELINES:
        if name != "mmpareto":  # pairs L_0 with each L_m: nothing to extend
            assert METHODS[name].modality_note, f"{name}: say in `bogc list` how the rule extends past M = 2"


@pytest.mark.parametrize("name", BASELINES)
def test_a_run_with_too_few_modalities_is_refused_before_anything_is_written(name, tmp_path, capsys):
    if METHODS[name].min_modalities < 2:
        pytest.skip(f"{name} runs on one modality")
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", f"method.name={name}",
                             "--set", "dataset.modalities=[audio]", "--out", tmp_path)
    assert code == 2 and f"method {name!r} needs at least 2 modalities" in out + err
    assert "Traceback" not in out + err and not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["joint", "uniform", "unimodal", "ogm_ge", "opm", "agm", "pmr", "mmpareto",
                                  "lfm", "dimml", "mmcosine", "cml", "mbsd", "greedy", "amco",
                                  "reconboost", "relearning", "inforeg", "smv", "ume", "umt"])
def test_list_names_the_reference_each_method_follows_and_its_deviations(name, capsys):
    """`bogc list` says which reference code a method's defaults follow; each deviation is in its docstring."""
    fidelity = METHODS[name].fidelity
    assert fidelity and ".py" in fidelity, f"{name}: name the reference file its defaults follow"
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and " ".join(out.split()).count(fidelity.split()[0]) >= 1


def test_every_baseline_says_what_its_defaults_follow():
    assert all(METHODS[name].fidelity for name in BASELINES)
