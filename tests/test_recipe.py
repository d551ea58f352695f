"""Recipe validation: every mistake names its key and what is valid."""

import pytest

from bogc_cli.errors import UserError
from bogc_cli.recipe import apply_overrides, load_recipe, parse_overrides

BASE = {"dataset": {"name": "synthetic"}}


def load(overrides=(), raw=None):
    return load_recipe(None, list(overrides), raw=raw if raw is not None else BASE)


def test_defaults_and_overrides_are_typed():
    r = load(["train.epochs=3", "optim.lr=1e-3", "model.fusion=sum", "seeds=[1,2]"])
    assert r.train.epochs == 3 and isinstance(r.optim.lr, float) and r.optim.lr == 1e-3
    assert r.model.fusion == "sum"
    assert r.run_seeds() == [1, 2]
    assert r.for_seed(2).seed == 2 and r.for_seed(2).seeds is None


def test_override_creates_nested_blocks_and_parses_yaml_values():
    data = apply_overrides({}, parse_overrides(["dataset.specs.audio.snr=2", "a=[1, 2]", "b=text"]))
    assert data == {"dataset": {"specs": {"audio": {"snr": 2}}}, "a": [1, 2], "b": "text"}


@pytest.mark.parametrize("override, words", [
    (["model.fuson=concat"], ["model.fuson", "did you mean model.fusion", "valid keys"]),
    (["train.epochs=abc"], ["train.epochs", "integer"]),
    (["train.epochs=0"], ["--set train.epochs=0: train.epochs: expected an integer > 0, got 0"]),
    (["model.fusion=attention"], ["model.fusion", "'concat'", "'gated'"]),
    (["optim.name=rmsprop"], ["optim.name", "'sgd'"]),
    (["method.name=nope"], ["method.name", "'nope'", "joint", "uniform"]),
    (["method.alpha=1"], ["method.alpha", "joint", "valid keys"]),
    (["dataset.name=cifar"], ["dataset.name", "'cifar'", "mfeat"]),
    (["dataset.n_trian=5"], ["dataset.n_trian", "did you mean dataset.n_train"]),
    (["dataset.preset=weak3"], ["dataset.preset", "synthetic has no view presets"]),
    (["method.name=unimodal"], ["method.modality", "missing"]),
    (["seeds=[1,1]"], ["seeds must be distinct"]),
    (["nonsense=1"], ["unknown key 'nonsense'"]),
    (["train"], ["--set 'train'", "key.sub=value"]),
])
def test_invalid_recipes_name_the_key(override, words):
    with pytest.raises(UserError) as info:
        load(override)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_mfeat_view_presets_are_checked():
    r = load_recipe(None, [], raw={"dataset": {"name": "mfeat", "preset": "weak3"}})
    assert r.dataset_label() == "mfeat-weak3"
    with pytest.raises(UserError, match="all6, weak3"):
        load_recipe(None, [], raw={"dataset": {"name": "mfeat", "preset": "weak4"}})


def test_recipe_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_recipe(bad)
    bad.write_text("model: {}\n")
    with pytest.raises(UserError, match="missing required key 'dataset'"):
        load_recipe(bad)


def test_resolved_recipe_is_valid_again(tmp_path):
    from bogc_cli.engine.setup import resolved_recipe
    from bogc_cli.recipe import validate_recipe

    r = load(["method.name=unimodal", "method.modality=audio"])
    resolved = resolved_recipe(r)
    assert resolved.dataset_options()["n_train"] == 3000  # defaults filled in
    again = validate_recipe(resolved.to_dict())
    assert again.to_dict() == resolved.to_dict()


def test_nested_synthetic_keys_are_named_and_merged():
    with pytest.raises(UserError, match=r"dataset.specs.audio.snrr.*did you mean dataset.specs.audio.snr.*"
                                        r"valid keys here: kind, shape, informative, snr"):
        load(["dataset.specs.audio.snrr=3"])
    from bogc_cli.data.synthetic import SyntheticOptions

    specs = SyntheticOptions.model_validate(load(["dataset.specs.audio.snr=3"]).dataset_options()).specs
    assert specs["audio"].snr == 3.0 and specs["audio"].shape == [1, 32, 32]  # other fields keep defaults
    assert set(specs) == {"audio", "image", "vector"}
