"""Epoch windows mean the same epochs as in each reference: every windowed method is driven through the engine's
hook sequence (on_epoch_start(e), then a training step) over our 1-based epochs, and the epochs in which it
modulates are counted from what it did, not from its options.

The references count: OGM-GE, OPM, PMR and G-Blending's super-epochs from 0 (``for epoch in range(E)``); AGM from
1 (``range(1, E + 1)``). ``Method.epoch_base`` states it, ``Method.in_epoch_window`` applies it.
"""

import copy

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import ModalitySpec, SplitArrays
from bogc_cli.data.loader import Batch, make_loader
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock

SPECS = {"a": ModalitySpec("vector", [6], "float32"), "b": ModalitySpec("vector", [5], "float32")}


def loader(n: int, seed: int):
    rng = np.random.default_rng(seed)
    split = SplitArrays({m: rng.standard_normal((n, *s.shape)).astype("float32") for m, s in SPECS.items()},
                        rng.integers(0, 3, n))
    return make_loader(split, batch_size=16, shuffle=False)


def modulated_epochs(name: str, epochs: int, detect, model_block: dict | None = None, prepare=None,
                     **options) -> list[int]:
    """Our epochs (from 1) in which ``detect(logs, method)`` says the method modulated its step; ``prepare(model)``:
    what ``before_training`` would do (e.g. lend UMT its teachers)."""
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", feature_dim=4, hidden_dim=8, **(model_block or {})), SPECS, 3)
    cls = METHODS[name]
    cls.adapt_model(cls.Options(**options), model)  # as the engine does: some methods change the model's heads
    if prepare is not None:
        prepare(model)
    ctx = StepContext(torch.device("cpu"), torch.optim.SGD(model.parameters(), lr=0.01),
                      train_eval=loader(32, 1), holdout=loader(16, 2))
    method = cls(cls.Options(**options), model, ctx)
    g = torch.Generator().manual_seed(3)
    found = []
    for epoch in range(1, epochs + 1):
        method.on_epoch_start(epoch)
        batch = Batch({m: torch.randn(16, *s.shape, generator=g) for m, s in SPECS.items()},
                      torch.randint(0, 3, (16,), generator=g), torch.arange(16))
        logs = method.step(batch).logs
        if detect({k: float(v) for k, v in logs.items()}, method):
            found.append(epoch)
        method.on_epoch_end(epoch)
    return found


def test_ogm_ge_modulates_51_epochs_as_the_references_0_to_50():
    found = modulated_epochs("ogm_ge", 53, lambda logs, _: "ogm.k.a" in logs, {"unimodal_logits": "fusion-slices"},
                             modulate="weights")
    assert found == list(range(1, 52))
    assert modulated_epochs("ogm_ge", 8, lambda logs, _: "ogm.k.a" in logs, {"unimodal_logits": "fusion-slices"},
                            modulate="weights", start_epoch=2, end_epoch=4) == [3, 4, 5]  # the reference's 2..4


def test_opm_warms_up_6_epochs_as_the_references_epoch_le_5():
    found = modulated_epochs("opm", 9, lambda logs, _: logs["opm.executed"] == 1.0,
                             {"unimodal_logits": "fusion-slices"}, p_exe=1.0)
    assert found == [7, 8, 9]


def test_agm_sets_coefficients_in_20_epochs_as_the_references_1_to_20():
    seen = []

    def sets_new(logs, method):  # the coefficients in force changed at this epoch's step
        now = (logs["agm.coeff.a"], logs["agm.coeff.b"])
        changed = now != (seen[-1] if seen else (1.0, 1.0))
        seen.append(now)
        return changed

    assert modulated_epochs("agm", 23, sets_new) == list(range(1, 21))


def test_pmr_applies_its_terms_in_71_epochs_as_the_references_0_to_70():
    found = modulated_epochs("pmr", 73, lambda logs, _: any(k.startswith("loss.pce:") for k in logs),
                             {"unimodal_logits": "fusion-slices"})
    assert found == list(range(1, 72))


def test_gblending_re_estimates_at_the_start_of_each_super_epoch():
    found = modulated_epochs("gblending", 25, lambda logs, method: "method.gblend.estimate_time_s" in method._epoch_logs,
                             super_epoch=10)
    assert found == [1, 11, 21]  # the reference's super-epochs start at epochs 0, 10, 20 counted from 0


def test_cml_and_mbsd_act_in_81_epochs_as_balancebenchmarks_0_to_80():
    assert modulated_epochs("cml", 83, lambda logs, _: "cml.penalty" in logs) == list(range(1, 82))
    assert modulated_epochs("mbsd", 83, lambda logs, _: "mbsd.kl" in logs) == list(range(1, 82))


def test_amco_co_optimises_in_81_epochs_as_balancebenchmarks_0_to_80():
    assert modulated_epochs("amco", 83, lambda logs, _: "loss.a" in logs) == list(range(1, 82))


def test_umt_distils_in_81_epochs_as_balancebenchmarks_0_to_80():
    from bogc_cli.fusion.umt import UnimodalTeachers, attach_teachers

    def lend_teacher(model):
        attach_teachers(model, UnimodalTeachers({"a": copy.deepcopy(model.encoders["a"])}))

    found = modulated_epochs("umt", 83, lambda logs, _: "umt.distill" in logs, prepare=lend_teacher,
                             teachers={"a": "runs/seed{seed}"})
    assert found == list(range(1, 82))


def test_dimml_contrasts_from_the_references_epoch_and_then_trains_stage_two():
    contrast = modulated_epochs("dimml", 7, lambda logs, _: "loss.contrast" in logs, contrast_start_epoch=2,
                                stage1_epochs=5)
    assert contrast == [3, 4, 5]  # the reference's `if epoch >= 2` of `range(5)`, counted from 0
    assert modulated_epochs("dimml", 7, lambda logs, _: "loss.stage2" in logs, stage1_epochs=5) == [6, 7]


def test_relearning_reinitialises_after_the_references_epochs_20_40_60():
    found = modulated_epochs("relearning", 64, lambda logs, method: "method.relearn.weight.a" in method._epoch_logs)
    assert found == [22, 42, 62]  # the reference re-initialises after its epochs 20, 40, 60 (from 0): before our next


def test_smv_resamples_after_five_warm_up_epochs():
    found = modulated_epochs("smv", 8, lambda logs, method: method.training_entries() is not None)
    assert found == [6, 7, 8]  # the reference's `epoch < warmup` (5, from 0) trains epochs 0-4 on the plain set


def test_reconboost_turns_last_a_stage_of_four_boosting_and_four_rectifying_epochs():
    def boosts(m):
        return lambda logs, method: method.turn().boosting and method.model.modalities[method.turn().active] == m

    assert modulated_epochs("reconboost", 20, boosts("a")) == [1, 2, 3, 4, 17, 18, 19, 20]
    assert modulated_epochs("reconboost", 20, boosts("b")) == [9, 10, 11, 12]


def test_inforeg_opens_its_window_in_the_first_epoch():
    found = modulated_epochs("inforeg", 3, lambda logs, method: method.rate == 1.0 and method.reference_epoch() == 0)
    assert found == [1]  # the reference's `if epoch == 0: k = 1`


@pytest.mark.parametrize("name, base", [("ogm_ge", 0), ("opm", 0), ("pmr", 0), ("gblending", 0), ("agm", 1),
                                        ("lfm", 0), ("dimml", 0), ("cml", 0), ("mbsd", 0), ("greedy", 1), ("amco", 0),
                                        ("reconboost", 0), ("relearning", 0), ("inforeg", 0), ("smv", 0),
                                        ("umt", 0)])
def test_each_windowed_method_states_its_references_count(name, base):
    assert METHODS[name].epoch_base == base
