"""OGM-GE's rule on hand-computable inputs and inside one step."""

import math

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.ogm_ge import OGMGE, OGMGEOptions, ogm_coefficients
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock


def test_coefficient_below_and_above_one():
    rho, k = ogm_coefficients({"audio": torch.tensor(30.0), "visual": torch.tensor(10.0)}, alpha=0.8)
    assert rho["audio"].item() == pytest.approx(3.0) and rho["visual"].item() == pytest.approx(1 / 3)
    assert k["audio"].item() == pytest.approx(1 - math.tanh(0.8 * 3.0), rel=1e-5)  # dominant: slowed down
    assert k["visual"].item() == 1.0                                      # weaker: untouched


def reference_coefficients(score_a: float, score_v: float, alpha: float) -> tuple[float, float]:
    """OGM-GE_CVPR2022 main.py's if/else, transcribed: (coeff_a, coeff_v) for audio (first) and visual."""
    ratio_v = score_v / score_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        return 1.0, 1 - math.tanh(alpha * max(ratio_v, 0.0))
    return 1 - math.tanh(alpha * max(ratio_a, 0.0)), 1.0


def test_a_score_tie_damps_the_first_modality_as_the_references_else_branch():
    rho, k = ogm_coefficients({"audio": torch.tensor(12.5), "visual": torch.tensor(12.5)}, alpha=0.8)
    assert rho["audio"].item() == rho["visual"].item() == 1.0
    assert k["audio"].item() == pytest.approx(1 - math.tanh(0.8), rel=1e-6)  # 0.336: the reference's else branch
    assert k["visual"].item() == 1.0


@pytest.mark.parametrize("s_a, s_v", [(30.0, 10.0), (10.0, 30.0), (7.0, 7.0), (1.0, 1.0 + 1e-6), (0.5, 63.5)])
def test_two_modalities_equal_the_reference_if_else(s_a, s_v):
    _, k = ogm_coefficients({"audio": torch.tensor(s_a, dtype=torch.float64),
                             "visual": torch.tensor(s_v, dtype=torch.float64)}, alpha=0.8)
    assert (k["audio"].item(), k["visual"].item()) == pytest.approx(reference_coefficients(s_a, s_v, 0.8), rel=1e-12)


def test_more_than_two_modalities_compare_with_the_weakest():
    rho, k = ogm_coefficients({"a": torch.tensor(4.0), "b": torch.tensor(2.0), "c": torch.tensor(1.0)}, alpha=0.5)
    assert [rho[m].item() for m in "abc"] == pytest.approx([4.0, 2.0, 1.0])
    assert k["a"].item() == pytest.approx(1 - math.tanh(2.0), rel=1e-5) and k["c"].item() == 1.0


def test_more_than_two_modalities_all_tied_damp_the_first_as_two_do():
    _, k = ogm_coefficients({"a": torch.tensor(2.0), "b": torch.tensor(2.0), "c": torch.tensor(2.0)}, alpha=0.5)
    assert k["a"].item() == pytest.approx(1 - math.tanh(0.5), rel=1e-6) and k["b"].item() == k["c"].item() == 1.0


def test_near_zero_denominator_is_guarded():
    rho, k = ogm_coefficients({"a": torch.tensor(5.0), "b": torch.tensor(0.0)}, alpha=0.8)
    assert math.isfinite(rho["a"].item()) and 0.0 <= k["a"].item() < 1e-6


SPECS = {"audio": ModalitySpec("audio", [1, 12, 12], "float32"), "image": ModalitySpec("image", [1, 10, 10], "uint8")}


def ogm_setup(options: dict, epoch: int = 1):
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="cnn-small", cnn_channels=[4, 8], feature_dim=8,
                                   unimodal_logits="fusion-slices"), SPECS, 3)
    method = OGMGE(OGMGEOptions(**options), model,
                   StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1), epoch=epoch))
    g = torch.Generator().manual_seed(1)
    batch = Batch({m: torch.randn(16, *s.shape, generator=g) for m, s in SPECS.items()},
                  torch.randint(0, 3, (16,), generator=g), torch.arange(16))
    return method, model, batch


def grads_before_and_after(options: dict, epoch: int = 1):
    return modulate(*ogm_setup(options, epoch))


def modulate(method, model, batch):
    """One backward and ``after_backward``: the gradients before and after it, and its logs."""
    model.zero_grad(set_to_none=True)
    out = model(batch.inputs)
    sum(method.losses(out, batch.labels).values()).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    logs = method.after_backward(out, batch)
    after = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return before, after, logs


def test_plain_ogm_scales_only_conv_kernels_of_each_encoder():
    before, after, logs = grads_before_and_after({"ge": False, "alpha": 0.8})
    for name, g in before.items():
        if name.startswith("encoders.") and g.dim() == 4:
            modality = name.split(".")[1]
            torch.testing.assert_close(after[name], g * logs[f"ogm.k.{modality}"])
        else:
            assert torch.equal(after[name], g), name  # BN, linear projections, fusion head: untouched
    assert min(logs["ogm.k.audio"].item(), logs["ogm.k.image"].item()) < 1  # one modality dominates


def test_ge_adds_noise_of_the_gradients_scale_and_window_is_respected():
    before, after, logs = grads_before_and_after({"ge": True})
    conv = [n for n, g in before.items() if n.startswith("encoders.") and g.dim() == 4]
    name = max(conv, key=lambda n: before[n].numel())
    k = logs[f"ogm.k.{name.split('.')[1]}"]
    noise = after[name] - before[name] * k
    assert noise.std().item() == pytest.approx(before[name].std().item(), rel=0.35)
    before, after, logs = grads_before_and_after({"ge": True, "start_epoch": 5}, epoch=1)
    assert logs == {} and all(torch.equal(after[n], g) for n, g in before.items())


def test_ge_noise_has_its_own_generator_whose_state_a_resumed_run_continues():
    method, model, batch = ogm_setup({"ge": True})
    _, first, _ = modulate(method, model, batch)
    saved = method.state_dict()
    _, second, _ = modulate(method, model, batch)  # the same gradients, the next noise
    twin, twin_model, _ = ogm_setup({"ge": True})
    torch.randn(100)  # the global generator plays no part
    _, fresh, _ = modulate(twin, twin_model, batch)
    twin.load_state_dict(saved)
    _, resumed, _ = modulate(twin, twin_model, batch)
    assert all(torch.equal(fresh[n], first[n]) for n in first)
    assert all(torch.equal(resumed[n], second[n]) for n in second)
    assert any(not torch.equal(second[n], first[n]) for n in first)


def test_needs_two_modalities():
    reason = METHODS["ogm_ge"].check_modalities(OGMGEOptions(), ["audio"])
    assert "at least 2 modalities" in reason


def test_conv_modulation_of_mlp_encoders_is_refused_before_training(tmp_path, capsys):
    from cli_helpers import run_cli

    code, out, err = run_cli(capsys, "train", "recipes/mfeat/ogm_ge.yaml", "--set", "method.modulate=conv",
                             "--out", tmp_path)
    assert code == 2 and "method.modulate: weights" in out + err and "Traceback" not in out + err
    assert not any(tmp_path.iterdir())
