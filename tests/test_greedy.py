"""The greedy learner's rule on hand-computable inputs (nyukat/greedy_multimodal_learning callbacks.py,
balanced_mmtm.py), the MMTMs inside the encoders, one step and the curation schedule, and the refusals."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.greedy import Greedy, GreedyOptions, balance, caring_modality, square_sums
from bogc_cli.models.build import build_model
from bogc_cli.models.encoders import build_encoder
from bogc_cli.models.late_fusion import UnimodalMean
from bogc_cli.models.mmtm import MMTM, MMTMCoupling, squeeze_map, staged
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli


def test_balance_and_caring_modality_by_hand():
    bdr = balance([2.0, 1.0], [1.0, 1.0])
    assert bdr == pytest.approx([math.log10(2), 0.0])
    assert caring_modality(bdr, 0.01) == 0          # BDR_0 > BDR_1: care for modality 0
    assert caring_modality(bdr[::-1], 0.01) == 1
    assert caring_modality([0.3, 0.295], 0.01) is None  # |d| <= epsilon
    assert caring_modality([0.1, 0.5, 0.2], 0.01) == 1  # M = 3: the largest BDR when the spread exceeds epsilon
    assert caring_modality([0.1, 0.105, 0.1], 0.01) is None
    assert balance([0.0, 1.0], [1.0, 0.0]) == [-math.inf, math.inf]  # numpy's log10(0) and x/0
    assert caring_modality(balance([0.0, 1.0], [1.0, 1.0]), 0.01) == 1
    assert caring_modality([math.nan, 0.0], 0.01) is None


def test_square_sums_by_hand():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([1.0, 2.0])
    q = torch.nn.Parameter(torch.tensor([1.0]))  # no gradient: left out
    assert square_sums([p, q]).tolist() == [5.0, 25.0]


@pytest.mark.parametrize("name, kind, shape, rows", [
    ("resnet18", "image", [1, 32, 32], 2), ("cnn-small", "audio", [1, 12, 20], 2),
    ("mlp", "vector", [7], 2), ("cnn-small", "video", [3, 3, 16, 16], 2)])
def test_staged_encoders_give_the_encoders_own_features(name, kind, shape, rows):
    cfg = ModelBlock(cnn_channels=[8, 16, 32], feature_dim=16, hidden_dim=32)
    torch.manual_seed(0)
    enc = build_encoder(name, ModalitySpec(kind, shape, "float32"), cfg).eval()
    x = torch.randn(rows, *shape)
    view = staged(enc)
    h = x.flatten(0, 1) if view.frames else x
    for stage in view.stages:
        h = stage(h)
    z = view.tail(h)
    z = z.view(rows, -1, z.shape[-1]).mean(1) if view.frames else z
    torch.testing.assert_close(z, enc(x))
    assert len(view.channels) == len(view.stages)


def test_mmtm_forward_by_hand():
    torch.manual_seed(0)
    mmtm = MMTM([2, 3], ratio=4)  # squeeze width int(2 * 5 / 4) = 2, as the reference's dim_out
    assert mmtm.fc_squeeze.out_features == 2
    a = torch.randn(4, 2, 3, 3)
    b = torch.randn(4, 3)
    sa, sb = a.mean(dim=(2, 3)), b
    torch.testing.assert_close(squeeze_map(a, 4), sa)
    hidden = torch.relu(mmtm.fc_squeeze(torch.cat([sa, sb], 1)))
    ea, eb = torch.sigmoid(mmtm.fc_excite[0](hidden)), torch.sigmoid(mmtm.fc_excite[1](hidden))
    mmtm.eval()
    out = mmtm([a, b], rows=4)
    torch.testing.assert_close(out[0], a * ea.view(4, 2, 1, 1))
    torch.testing.assert_close(out[1], b * eb)
    assert int(mmtm.averaged) == 0  # eval forwards leave the running averages alone


def test_running_averages_curation_and_absent_modalities():
    torch.manual_seed(1)
    mmtm = MMTM([2, 2])
    x1, x2 = [torch.randn(3, 2), torch.randn(3, 2)], [torch.randn(5, 2), torch.randn(5, 2)]
    with torch.no_grad():
        e1 = [torch.sigmoid(fc(torch.relu(mmtm.fc_squeeze(torch.cat(x1, 1))))) for fc in mmtm.fc_excite]
        e2 = [torch.sigmoid(fc(torch.relu(mmtm.fc_squeeze(torch.cat(x2, 1))))) for fc in mmtm.fc_excite]
    mmtm.train()
    with torch.enable_grad():
        mmtm(x1, rows=3)
        out = mmtm(x2, rows=5, caring=1)
    assert int(mmtm.averaged) == 2
    avg1 = (e1[1].mean(0) + e2[1].mean(0)) / 2  # the cumulative mean over batches, this batch's included
    torch.testing.assert_close(mmtm.avg_excitation_1, avg1)
    torch.testing.assert_close(mmtm.avg_squeeze_0, (x1[0].mean(0) + x2[0].mean(0)) / 2)
    torch.testing.assert_close(out[1], x2[1] * avg1)      # the caring modality: its average excitation
    torch.testing.assert_close(out[0], x2[0] * e2[0])     # the other: its own, from both inputs
    # an absent modality's squeeze is its running average: changing its input changes nothing for the other
    mmtm.eval()
    absent = torch.tensor([False] * 5)
    one = mmtm([x2[0], x2[1]], rows=5, present=[None, absent])
    two = mmtm([x2[0], 100 * x2[1]], rows=5, present=[None, absent])
    torch.testing.assert_close(one[0], two[0])


def test_non_finite_batches_leave_the_averages_alone():
    mmtm = MMTM([2, 2]).train()
    with torch.enable_grad():
        mmtm([torch.ones(2, 2), torch.ones(2, 2)], rows=2)
        before = mmtm.avg_excitation_0.clone()
        mmtm([torch.full((2, 2), float("nan")), torch.ones(2, 2)], rows=2)
    assert torch.equal(mmtm.avg_excitation_0, before) and int(mmtm.averaged) == 1


SPECS = {"a": ModalitySpec("image", [1, 12, 12], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders={"a": "cnn-small", "b": "mlp"}, cnn_channels=[4, 8, 8], feature_dim=8,
                                   hidden_dim=8, mlp_layers=3), SPECS, 3)
    Greedy.adapt_model(GreedyOptions(), model)
    return model.double()


def make_batch(seed: int, n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *s.shape, generator=g, dtype=torch.float64) for m, s in SPECS.items()},
                 torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def make_method(model, lr=0.1, **options) -> Greedy:
    return Greedy(GreedyOptions(**options), model,
                  StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=lr)))


def test_adapted_model_couples_the_last_stages_and_predicts_the_branch_mean():
    model = small_model()
    assert isinstance(model.coupling, MMTMCoupling) and isinstance(model.fusion_head, UnimodalMean)
    assert model.coupling.positions == 2  # cnn-small 3 blocks, mlp 3 layers: after the last two of each
    assert [m.dims for m in model.coupling.mmtm] == [[8, 8], [8, 8]]
    assert "coupling" in {g.name for g in model.param_groups()}
    out = model(make_batch(0).inputs)
    torch.testing.assert_close(out.fused_logits, (out.unimodal_logits["a"] + out.unimodal_logits["b"]) / 2)
    two = build_model(ModelBlock(encoders="resnet18"), {m: ModalitySpec("image", [1, 32, 32], "float32")
                                                       for m in ("x", "y")}, 3)
    Greedy.adapt_model(GreedyOptions(), two)
    assert [m.dims for m in two.coupling.mmtm] == [[128, 128], [256, 256], [512, 512]]  # after layer2-layer4


def test_one_step_is_sgd_on_the_sum_of_branch_losses():
    model = small_model()
    twin = copy.deepcopy(model)
    method = make_method(model)
    method.on_epoch_start(1)
    batch = make_batch(1)
    method.step(batch)
    out = twin(batch.inputs)
    sum(F.cross_entropy(out.unimodal_logits[m], batch.labels) for m in SPECS).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * q.grad, msg=name)


def test_speeds_are_the_gradient_to_weight_ratios_of_bypass_and_main_parameters():
    model = small_model()
    method = make_method(model)
    out = model(make_batch(2).inputs)
    sum(F.cross_entropy(out.unimodal_logits[m], make_batch(2).labels) for m in SPECS).backward()
    bypass, main = method.speeds()
    squeeze = [p for mm in model.coupling.mmtm for p in mm.fc_squeeze.parameters()]
    excite_b = [p for mm in model.coupling.mmtm for p in mm.fc_excite[1].parameters()]
    g, w = square_sums(excite_b + squeeze).tolist()
    assert bypass[1] == pytest.approx(g / w)
    g, w = square_sums(list(model.encoders["a"].parameters()) + list(model.unimodal_heads["a"].parameters())).tolist()
    assert main[0] == pytest.approx(g / w)


def test_curation_schedule_follows_bias_mitigation_strong(monkeypatch):
    model = small_model()
    method = make_method(model, lr=0.0, window=3)
    seen = []
    real_forward = MMTMCoupling.forward

    def spy(self, *args):
        seen.append(self.caring)
        return real_forward(self, *args)

    monkeypatch.setattr(MMTMCoupling, "forward", spy)
    speeds = iter([([2.0, 1.0], [1.0, 1.0])] * 100)
    monkeypatch.setattr(Greedy, "speeds", lambda self: next(speeds))
    batch = make_batch(3)
    method.on_epoch_start(1)  # before start_epoch 2: measure and accumulate, never curate
    for _ in range(2):
        method.step(batch)
    assert method.curating is None and method.bypass_speed == [4.0, 2.0] and method.main_speed == [2.0, 2.0]
    method.on_epoch_start(2)
    method.step(batch)  # measures: BDR_0 = log10(6/3) > BDR_1 = log10(3/3): modality 0 curated next
    assert method.curating == 0 and method.bypass_speed == [6.0, 3.0]
    for _ in range(3):  # window 3: three curated steps, no measuring
        method.step(batch)
    assert method.bypass_speed == [6.0, 3.0] and method.curating is None
    method.step(batch)
    assert seen == [None, None, None, "a", "a", "a", None]
    assert model.coupling.caring is None  # never left set for validation or eval


def test_random_selection_draws_among_none_and_each_modality(monkeypatch):
    model = small_model()
    method = make_method(model, lr=0.0, selection="random")
    monkeypatch.setattr(Greedy, "speeds", lambda self: pytest.fail("random selection measures nothing"))
    method.on_epoch_start(2)
    picks = set()
    for _ in range(20):
        method.step(make_batch(4))
        picks.add(method.curating)
    assert picks == {None, 0, 1}


def test_state_round_trip():
    model = small_model()
    method = make_method(model)
    method.on_epoch_start(2)
    for _ in range(3):
        method.step(make_batch(5))
    clone = make_method(copy.deepcopy(model))
    clone.load_state_dict(method.state_dict())
    assert (clone.bypass_speed, clone.main_speed, clone.curating, clone.curation_step) == \
        (method.bypass_speed, method.main_speed, method.curating, method.curation_step)


def test_defaults_and_registration():
    o = GreedyOptions()
    assert (o.epsilon, o.window, o.start_epoch, o.selection, o.ratio) == (0.01, 5, 2, "guided", 4)
    assert METHODS["greedy"] is Greedy and Greedy.epoch_base == 1


def test_refusals(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=greedy",
                             "--set", "model.mlp_layers=1", "--out", tmp_path)
    assert code == 2 and "two stages" in out + err and "model.mlp_layers" in out + err
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=greedy",
                             "--set", "model.unimodal_logits=fusion-slices", "--out", tmp_path)
    assert code == 2 and "model.unimodal_logits: heads" in out + err
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=greedy",
                             "--set", "model.encoders=transformer", "--out", tmp_path)
    assert code == 2 and "transformer" in out + err
    assert not any(tmp_path.iterdir())
