"""The synthetic set's imbalance option: the modalities' SNRs follow the ratio, the fused optimum does not."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from bogc_cli.data.synthetic import SyntheticImbalance, SyntheticOptions, generate

ROOT = Path(__file__).resolve().parents[1]
TWO = {"a": {"kind": "vector", "shape": [64], "informative": 1.0},
       "b": {"kind": "vector", "shape": [64], "informative": 1.0}}


def _options(ratio: float, snr: float = 0.25, **extra) -> SyntheticOptions:
    return SyntheticOptions.model_validate({"specs": TWO, "imbalance": {"ratio": ratio, "strong": "a", "weak": "b",
                                                                         "snr": snr}, **extra})


@pytest.mark.parametrize("ratio", [1.0, 2.0, 4.0, 7.5])
def test_snrs_follow_the_ratio_at_a_fixed_root_mean_square(ratio):
    snrs = SyntheticImbalance(ratio=ratio, strong="a", weak="b", snr=0.25).snrs()
    assert snrs["a"] / snrs["b"] == pytest.approx(ratio, rel=1e-12)
    assert math.sqrt((snrs["a"] ** 2 + snrs["b"] ** 2) / 2) == pytest.approx(0.25, rel=1e-12)


def test_hand_computed_values():
    assert SyntheticImbalance(ratio=1, snr=0.5).snrs() == {"audio": 0.5, "image": 0.5}
    snrs = SyntheticImbalance(ratio=4, strong="a", weak="b", snr=0.25).snrs()  # 0.25 * sqrt(2/17) * (4, 1)
    assert snrs["a"] == pytest.approx(0.3429971703, abs=1e-9) and snrs["b"] == pytest.approx(0.0857492926, abs=1e-9)


def test_the_option_sets_the_specs_and_leaves_everything_else_alone():
    opts = _options(3.0)
    implied = SyntheticImbalance(ratio=3.0, strong="a", weak="b", snr=0.25).snrs()
    assert opts.specs["a"].snr == implied["a"] and opts.specs["b"].snr == implied["b"]
    assert opts.specs["a"].informative == 1.0 and opts.specs["vector"].snr == 0.5  # untouched default
    again = SyntheticOptions.model_validate(opts.model_dump(mode="json"))  # what a run directory stores
    assert again == opts
    plain = SyntheticOptions.model_validate({})
    assert plain.imbalance is None and {m: s.snr for m, s in plain.specs.items()} == {"audio": 0.5, "image": 0.5,
                                                                                       "vector": 0.5}


def _snr_estimates(split, modality: str, classes: int) -> float:
    """SNR read back from data: the class means' mean square, less the noise's share 1 / n_class."""
    x, y = split.inputs[modality].reshape(len(split.labels), -1).astype(np.float64), split.labels
    power = [((x[y == c].mean(axis=0)) ** 2).mean() - 1.0 / (y == c).sum() for c in range(classes)]
    return math.sqrt(np.mean(power))


@pytest.mark.parametrize("ratio", [1.0, 4.0])
def test_generated_data_carry_the_stated_snrs(ratio):
    manifest, splits = generate(_options(ratio, n_train=6000, n_val=10, n_test=10))
    implied = SyntheticImbalance(ratio=ratio, strong="a", weak="b", snr=0.25).snrs()
    for m in ("a", "b"):
        assert _snr_estimates(splits["train"], m, 10) == pytest.approx(implied[m], rel=0.1)
    assert manifest.params["specs"]["a"]["snr"] == implied["a"] and manifest.params["imbalance"]["ratio"] == ratio


def _nearest_mean_accuracy(train, test, modalities: list[str]) -> float:
    """The plug-in Bayes rule for unit Gaussian noise: nearest class mean, squared distances summed over modalities."""
    dist = 0.0
    for m in modalities:
        xtr = train.inputs[m].reshape(len(train.labels), -1).astype(np.float64)
        means = np.stack([xtr[train.labels == c].mean(axis=0) for c in range(10)])
        xte = test.inputs[m].reshape(len(test.labels), -1).astype(np.float64)
        dist = dist + ((xte[:, None, :] - means[None]) ** 2).sum(-1)
    return float((dist.argmin(axis=1) == test.labels).mean())


def test_the_ratio_moves_information_between_modalities_without_changing_the_fused_optimum():
    acc = {}
    for ratio in (1.0, 2.0, 4.0):
        _, splits = generate(_options(ratio, n_train=4000, n_val=10, n_test=4000))
        acc[ratio] = {key: _nearest_mean_accuracy(splits["train"], splits["test"], mods)
                      for key, mods in (("a", ["a"]), ("b", ["b"]), ("fused", ["a", "b"]))}
    assert acc[1.0]["a"] == pytest.approx(acc[1.0]["b"], abs=0.04)  # balanced
    assert acc[1.0]["a"] < acc[2.0]["a"] < acc[4.0]["a"] and acc[1.0]["b"] > acc[2.0]["b"] > acc[4.0]["b"]
    gap = [acc[r]["a"] - acc[r]["b"] for r in (1.0, 2.0, 4.0)]
    assert gap[0] < gap[1] < gap[2] and gap[2] > 0.4
    fused = [acc[r]["fused"] for r in (1.0, 2.0, 4.0)]
    assert max(fused) - min(fused) < 0.03  # the same optimum at every ratio ...
    assert min(fused) > max(acc[r]["a"] for r in acc) + 0.01  # ... and above the better modality


def test_contradictions_and_unknown_names_are_refused():
    with pytest.raises(ValidationError, match="specs.a.snr is 3"):
        SyntheticOptions.model_validate({"specs": {**TWO, "a": {**TWO["a"], "snr": 3}},
                                         "imbalance": {"ratio": 2, "strong": "a", "weak": "b"}})
    with pytest.raises(ValidationError, match=r"imbalance\n.*names modality 'zzz', which is not in specs"):
        SyntheticOptions.model_validate({"imbalance": {"ratio": 2, "strong": "zzz"}})
    with pytest.raises(ValidationError, match="both 'audio'"):
        SyntheticOptions.model_validate({"imbalance": {"ratio": 2, "weak": "audio"}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SyntheticOptions.model_validate({"imbalance": {"ratio": 0.5}})


def test_cli_refuses_a_bad_imbalance_with_one_message(tmp_path):
    recipe = tmp_path / "r.yaml"
    data = yaml.safe_load((ROOT / "recipes" / "synthetic-imbalance" / "joint.yaml").read_text())
    data["dataset"]["imbalance"]["weak"] = "nope"
    recipe.write_text(yaml.safe_dump(data))
    command = [shutil.which("bogc")] if shutil.which("bogc") else [sys.executable, "-m", "bogc_cli"]
    proc = subprocess.run([*command, "train", str(recipe), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "dataset.imbalance" in proc.stderr and "names modality 'nope'" in proc.stderr
    assert not (tmp_path / "out").exists()
