"""The benchmark scripts print the tables docs/performance.md quotes, on the CPU too: step time per method
(ratio to joint like 1.52x), throughput with the busy share, and the reference-style loop's ratio."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_step_time_table_format(capsys):
    import step_time

    assert step_time.main(["--steps", "1", "--rounds", "1", "--warmup", "1",
                           "--methods", "joint,uniform,bogc,bogc-ema,pmr,gblending"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if re.match(r"^(joint|uniform|bogc|pmr|gblending)", line)}
    assert set(rows) == {"joint", "uniform", "bogc", "bogc-ema", "pmr", "gblending"}
    assert re.search(r"\s1\.00x\s", rows["joint"])
    for line in rows.values():
        assert re.search(r"\s\d+\.\d\dx\s", line), line
    assert step_time.main(["--methods", "nope"]) == 2


def test_step_time_mfeat_preset_new_options_and_cpu_clock(capsys):
    import step_time

    assert step_time.main(["--preset", "mfeat-cpu", "--clock", "cpu", "--steps", "2", "--rounds", "1", "--warmup", "1",
                           "--methods", "joint,bogc,bogc-laplace,bogc-laplace-modality-precision"]) == 0
    out = capsys.readouterr().out
    assert "(cpu clock), preset mfeat-cpu" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("joint", "bogc"))}
    assert set(rows) == {"joint", "bogc", "bogc-laplace", "bogc-laplace-modality-precision"}
    assert all(re.search(r"\s\d+\.\d\dx\s", line) for line in rows.values())


def test_bogc_floor_rows_apply_the_same_update_and_print_ratios(capsys):
    """The floor rows differ in cost only: the two-backward row and the moments row apply the same plain sum of
    the losses' gradients (the chunk mean is the batch gradient), and the table prints one ratio per row."""
    import torch

    import bogc_floor
    from step_time import PRESETS, make_batch, make_method

    preset = PRESETS["mfeat-cpu"]
    batch = make_batch(preset, torch.device("cpu"))
    bogc = make_method("bogc", {}, preset, torch.device("cpu"), "fp32", batch)
    bogc.model.eval()  # no dropout: both rows see the same forward
    for group in bogc.ctx.optimizer.param_groups:
        group["lr"] = 0.0
    bogc_floor.two_backward_step(bogc, batch)
    plain = [p.grad.clone() for p in bogc.model.parameters()]
    bogc_floor.moments_step(bogc, batch)
    for a, p in zip(plain, bogc.model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)
    assert bogc_floor.main(["--steps", "1", "--rounds", "1", "--warmup", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.search(r"\s\d+\.\d\dx$", line)]
    assert [r.split("  ")[0] for r in rows] == ["joint", "two backward passes", "+ microbatch moments",
                                                 "+ calibration (bogc)"]


def test_laplace_curvature_table(capsys):
    """Our closed form always; each library where it is installed (else 'not installed'), with its difference."""
    import laplace_curvature

    assert laplace_curvature.main(["--dims", "8", "--calls", "2", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = next(line for line in lines if line.startswith("ours"))
    assert re.search(r"ours\s+8\s+\d+\.\d+\s+1\.0x\s+0\.0e\+00", ours), ours
    for name in ("backpack DiagGGNExact", "laplace-torch BackPackGGN", "curvlinops GGN @ I"):
        line = next(x for x in lines if x.startswith(name))
        if "not installed" not in line:
            assert float(line.split()[-1]) < 1e-4, line  # the same diagonal


def test_throughput_and_reference_tables(capsys, tmp_path):
    # real 2-epoch runs on CREMA-D-shaped clips (small preset): samples/s, busy share, and the reference ratio
    import reference_compare
    import throughput

    work = ["--samples", "48", "--work", str(tmp_path)]
    assert throughput.main([*work, "--methods", "joint,bogc", "--variants", "fast"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("joint", "bogc"))]
    assert [r[0] for r in rows] == ["joint", "bogc"]
    for r in rows:  # method variant settings... workers samples/s epoch-s busy input-wait
        busy, wait = float(r[-2].rstrip("%")), float(r[-1].rstrip("%"))
        assert 0 < busy <= 100 and busy + wait == pytest.approx(100, abs=0.11) and float(r[-4]) > 0
    assert reference_compare.main(work) == 0  # reuses the clips throughput.py made in the same folder
    out = capsys.readouterr().out
    ratio = re.search(r"ratio \(reference / bogc\): (\d+\.\d\d)x", out)
    assert ratio and float(ratio.group(1)) > 0 and "reference style" in out


def test_balance_cost_tables(capsys, tmp_path):
    """benchmarks/eval_cost.py and conflict_overhead.py run real (tiny) quickstart trainings and print their
    tables: the end-of-training parts against the run, and conflict sampling's predicted and measured share."""
    import conflict_overhead
    import eval_cost

    tiny = ["--set", "dataset.n_train=192", "--set", "dataset.n_val=64", "--set", "dataset.n_test=64",
            "--set", "model.cnn_channels=[8,16]"]
    assert eval_cost.main([*tiny, "--set", "train.epochs=1", "--repeats", "1", "--work", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    added = re.search(r"added by the balance metrics .*?\s(-?\d+\.\d\d)\s+(-?\d+\.\d)%", out)
    assert added and "linear probes (3 x 4 C)" in out and "subsets' predictions (2^3)" in out
    assert conflict_overhead.main([*tiny, "--every", "0,2,50", "--epochs", "1", "--rounds", "1", "--repeats", "2",
                                   "--work", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().startswith(("off", "2 "))}
    assert rows["off"][2:5] == ["0.0%", "0.0%", "1.000"]
    assert float(rows["2"][1]) == 1.5 and float(rows["2"][3].rstrip("%")) > 0  # 3 steps an epoch, sampled
    assert float(rows["2"][4]) == pytest.approx(1 + float(rows["2"][3].rstrip("%")) / 100, abs=1e-3)
    # the default (50) samples the first step of the run: its on/off ratio is the last line's verdict
    verdict = re.search(r"conflict_every=50: joint with conflict sampling on / off = (\d\.\d{3}) \(.*limit 1\.05: "
                        r"(within|ABOVE)\)", out)
    assert verdict and float(verdict.group(1)) > 1


def _fake_ablation(root: Path, shift: dict[str, float]) -> None:
    """Run directories of recipes/paper/ablation.yaml with known accuracies: uniform's seeds s get
    0.80 + 0.01 s (+ a per-dataset offset), every other method the same plus ``shift[method]`` and a little noise."""
    import json

    import numpy as np

    import ablation_tables

    rng = np.random.default_rng(0)
    for d, dataset in enumerate(ablation_tables.DATASETS):
        for method in ablation_tables.METHODS:
            for seed in range(5):
                acc = 0.80 + 0.01 * seed + 0.001 * d + shift.get(method, 0.0) + (
                    0 if method == "uniform" else float(rng.normal(0, 0.001)))
                run = root / dataset / method / f"seed{seed}"
                run.mkdir(parents=True)
                heads = {"audio": acc, "image": acc, "mor": acc, "a": acc, "b": acc}
                (run / "eval.json").write_text(json.dumps({
                    "experiment": "ablation18", "dataset": dataset, "method": method, "seed": seed,
                    "accuracy": acc, "val_accuracy": acc, "unimodal_accuracy": heads}))
                (run / "metrics.jsonl").write_text(json.dumps({"method.bogc.weight_mean.fused": 0.5,
                                                               "method.bogc.weight_std.fused": 0.25}) + "\n")


def test_ablation_tables_mark_and_pool_the_paired_t_test(tmp_path, capsys):
    """A method 2 points above uniform on every seed is marked † on every dataset and pooled at +2 points;
    one within 0.1 points of noise is not marked; a missing run exits 2 and names the file."""
    import ablation_tables

    _fake_ablation(tmp_path, {"mmpareto": 0.02})
    assert ablation_tables.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    test = out.split("**Test accuracy**")[1].split("**Each")[0]
    mmpareto = next(line for line in test.splitlines() if line.startswith("| mmpareto |"))
    assert mmpareto.count("†") == 5 and re.search(r"\+(1\.99|2\.00|2\.01) pts, p = 0\.000 \|$", mmpareto)
    joint = next(line for line in test.splitlines() if line.startswith("| joint |"))
    assert "†" not in joint.split("|")[2]
    assert "| bogc-dims | fused 0.50 (spread 0.25)" in out
    (tmp_path / "mfeat-weak3" / "joint" / "seed3" / "eval.json").unlink()
    assert ablation_tables.main([str(tmp_path)]) == 2
    assert "mfeat-weak3/joint/seed3/eval.json is missing" in capsys.readouterr().err
