"""AMCo's rule on hand-computable inputs (GeWu-Lab/BalanceBenchmark AMCo_trainer.py, BaseClassifierAMCoModel): the
mask ratio's schedule, the mask, the modalities' softmax shares, the linear_star head, masking at any batch size
(the reference's [2, C] mask runs only at batch 2), and a run through the CLI."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.fusion.amco import AMCo, AMCoOptions, StarConcatHead, draw_mask, mask_ratio, modality_shares
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_cli

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32"),
         "c": ModalitySpec("vector", [4], "float32")}


def small_model(names=("a", "b"), seed: int = 0, classes: int = 3):
    torch.manual_seed(seed)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=16), {m: SPECS[m] for m in names},
                        classes)
    AMCo.adapt_model(AMCoOptions(), model)
    return model.double()


def make_batch(seed: int, names=("a", "b"), n: int = 16, classes: int = 3) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch({m: torch.randn(n, *SPECS[m].shape, generator=g, dtype=torch.float64) for m in names},
                 torch.randint(0, classes, (n,), generator=g), torch.arange(n))


def make_method(model, epoch: int = 1, **options) -> AMCo:
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.1))
    method = AMCo(AMCoOptions(**options), model, ctx)
    method.on_epoch_start(epoch)
    return method


def test_defaults_are_the_references():
    o = AMCoOptions()
    assert (o.sigma, o.eps, o.start_epoch, o.end_epoch) == (0.5, 0.3, 0, 80)  # configs/trainer_config.yaml AMCo
    assert AMCo.epoch_base == 0 and "amco" in METHODS


def test_mask_ratio_by_hand():
    assert mask_ratio(0.0, 0.3) == 0.0
    assert mask_ratio(0.15, 0.3) == pytest.approx(math.sqrt(0.5))  # sin(pi/4)
    assert mask_ratio(0.1, 0.3) == pytest.approx(0.5)  # sin(pi/6)
    assert mask_ratio(0.3, 0.3) == 1.0 and mask_ratio(7.0, 0.3) == 1.0  # capped at eps


def test_mask_has_int_ratio_times_classes_zeros():
    g = torch.Generator().manual_seed(0)
    for ratio, zeros in [(0.0, 0), (0.5, 5), (0.75, 7), (0.999, 9), (1.0, 10)]:
        mask = draw_mask(10, ratio, g)
        assert mask.shape == (10,) and int((mask == 0).sum()) == zeros and int((mask == 1).sum()) == 10 - zeros
    # the positions are drawn: not always the same ones
    assert len({tuple(draw_mask(10, 0.5, g).tolist()) for _ in range(20)}) > 1


def test_shares_by_hand():
    # one row: [log 3, 0 | 0, 0] -> softmax [3, 1, 1, 1] / 6: a holds 4/6, b 2/6
    a = torch.tensor([[math.log(3.0), 0.0]])
    b = torch.zeros(1, 2)
    torch.testing.assert_close(modality_shares([a, b]), torch.tensor([4 / 6, 2 / 6]))
    # mean over the rows: a second row with the roles swapped gives 1/2 each
    torch.testing.assert_close(modality_shares([torch.cat([a, b]), torch.cat([b, a])]), torch.tensor([0.5, 0.5]))


def test_star_head_is_linear_star_over_the_summed_slices():
    model = small_model(("a", "b", "c"))
    head = model.fusion_head
    assert isinstance(head, StarConcatHead) and head.star.weight.shape == (3, 3)
    feats = model.encode(make_batch(0, ("a", "b", "c")).inputs)
    ordered = [feats[m] for m in model.modalities]
    slices = head.slice_logits(ordered)
    torch.testing.assert_close(torch.stack(slices).sum(0), head.net(torch.cat(ordered, 1)))  # sum o_m = concat head
    torch.testing.assert_close(model(make_batch(0, ("a", "b", "c")).inputs).fused_logits,
                               head.star(head.net(torch.cat(ordered, 1))))


def test_first_epoch_never_masks_and_marks_the_modality_whose_share_exceeds_sigma():
    model = small_model()
    method = make_method(model, epoch=1)  # the reference's epoch 0: l_t stays 0, so p_t = 0
    batch = make_batch(1)
    with torch.no_grad():
        feats = model.encode(batch.inputs)
        slices = model.fusion_head.slice_logits([feats[m] for m in model.modalities])
    shares = modality_shares(slices)
    result = method.step(batch)
    assert method.progress == 0.0 and result.logs["amco.mask_ratio"] == 0.0
    assert {k for k in result.logs if k.startswith("loss.") and ":" not in k} == {"loss.fused", "loss.a", "loss.b"}
    assert method.dependent == {"a": bool(shares[0] > 0.5), "b": bool(shares[1] > 0.5)}
    assert sum(method.dependent.values()) == 1  # two modalities: the shares sum to 1, one is above 1/2
    torch.testing.assert_close(torch.stack([result.logs["amco.share.a"], result.logs["amco.share.b"]]),
                               shares.to(result.logs["amco.share.a"].dtype))


def test_progress_grows_by_epoch_over_ten_per_step_and_resets_each_epoch():
    model = small_model()
    method = make_method(model, epoch=3)  # the reference's epoch 2: l_t += 0.2 per step
    ratios = []
    for i in range(3):
        ratios.append(mask_ratio(method.progress, 0.3))
        method.step(make_batch(i))
    assert ratios == [0.0, pytest.approx(math.sin(math.pi / 3)), 1.0]  # l_t = 0, 0.2, 0.4 (capped at 0.3)
    method.on_epoch_start(4)
    assert method.progress == 0.0 and method.dependent == {"a": False, "b": False}


def test_a_full_mask_cuts_the_dependent_modality_off_at_any_batch_size():
    """p_t = 1: every class of the dependent modality's slice is zeroed, so neither the fused loss nor its own
    reaches its encoder; batches of 1, 3 and 16 rows all run (the reference's [2, C] mask broadcasts only at 2)."""
    for rows in (1, 3, 16):
        model = small_model()
        method = make_method(model, epoch=2)
        method.progress, method.dependent = 0.3, {"a": True, "b": False}
        before = copy.deepcopy(model.state_dict())
        batch = make_batch(2, n=rows)
        with torch.no_grad():
            feats = model.encode(batch.inputs)
            o_b = model.fusion_head.slice_logits([feats[m] for m in model.modalities])[1]
            fused = model.fusion_head.star(o_b)  # a's slice masked to zeros
        result = method.step(batch)
        assert result.fused_logits.shape == (rows, 3)
        torch.testing.assert_close(result.fused_logits, fused)
        assert result.logs["loss.a"].item() == pytest.approx(math.log(3))  # CE of all-zero logits
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.a."))
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.b."))


def test_partial_mask_matches_the_reference_product_and_losses():
    model = small_model(classes=5)
    method = make_method(model, epoch=2)  # l_t += 0.1 per step
    method.progress, method.dependent = 0.1, {"a": False, "b": True}  # p_t = 1/2: int(2.5) = 2 of 5 zeros
    twin = copy.deepcopy(method.generator)
    mask = draw_mask(5, 0.5, twin)
    assert int((mask == 0).sum()) == 2
    batch = make_batch(3, classes=5)
    with torch.no_grad():
        feats = model.encode(batch.inputs)
        o_a, o_b = model.fusion_head.slice_logits([feats[m] for m in model.modalities])
        o_b = o_b * mask
        fused = model.fusion_head.star(o_a + o_b)
    result = method.step(batch)
    torch.testing.assert_close(result.fused_logits, fused)
    torch.testing.assert_close(result.logs["loss.fused"], F.cross_entropy(fused.float(), batch.labels))
    torch.testing.assert_close(result.logs["loss.b"], F.cross_entropy(o_b.float(), batch.labels))
    assert result.logs["amco.masked.b"] == 1.0 and result.logs["amco.masked.a"] == 0.0
    assert method.progress == pytest.approx(0.2)


def test_outside_the_window_only_the_fused_loss_and_no_mask():
    model = small_model()
    method = make_method(model, epoch=2, start_epoch=5)
    method.progress, method.dependent = 0.3, {"a": True, "b": False}
    result = method.step(make_batch(4))
    assert {k for k in result.logs if k.startswith("loss.")} == {"loss.fused", "loss.probe:a", "loss.probe:b"}
    assert result.logs["amco.masked.a"] == 0.0 and method.dependent == {"a": True, "b": False}


def test_state_round_trip_continues_the_same_masks():
    model = small_model(classes=5)
    method = make_method(model, epoch=2)
    method.step(make_batch(0, classes=5))
    saved = copy.deepcopy(method.state_dict())
    twin = make_method(copy.deepcopy(model), epoch=2)
    twin.load_state_dict(saved)
    assert twin.progress == method.progress and twin.dependent == method.dependent
    assert torch.equal(draw_mask(5, 0.5, twin.generator), draw_mask(5, 0.5, method.generator))


def test_a_head_that_is_not_a_linear_concat_is_refused_with_exit_2(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=amco",
                             "--set", "model.fusion=sum", "--out", tmp_path)
    assert code == 2 and "model.fusion: concat" in out + err and "Traceback" not in out + err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # the default run trains amco through the CLI in test_in_step_methods.py
def test_trains_through_the_cli_and_masks_from_the_second_epoch(capsys, tmp_path):
    import json

    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "method.name=amco",
                             "--set", "train.epochs=2", "--set", "method.sigma=0.34", "--set", "dataset.n_train=192",
                             "--set", "dataset.n_val=48", "--set", "dataset.n_test=48", "--set", "train.batch_size=32",
                             "--out", tmp_path)
    assert code == 0, out + err
    run = next(tmp_path.rglob("eval.json")).parent
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["method.amco.mask_ratio"] == 0.0  # epoch 0 in the reference's count: l_t stays 0
    # epoch 1: some step masked a dependent modality (three modalities: sigma 0.34 is just above an even share)
    assert rows[1]["method.amco.mask_ratio"] > 0
    assert math.isfinite(json.loads((run / "eval.json").read_text())["accuracy"])
