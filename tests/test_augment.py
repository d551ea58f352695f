"""`train.augment`: random resized crops and flips of frames and SpecAugment masks, drawn per sample on the
device from a generator of their own, so a run stopped mid-epoch resumes bitwise."""

from __future__ import annotations


import pytest
import torch

from bogc_cli.data.augment import DeviceAugment, crop_flip_grid, spec_masks
from bogc_cli.data.loader import Batch
from bogc_cli.recipe import AugmentBlock
from cli_helpers import run_cli, run_results, stopped_and_resumed

CPU = torch.device("cpu")


def _batch(**inputs) -> Batch:
    n = next(iter(inputs.values())).shape[0]
    return Batch(inputs, torch.zeros(n, dtype=torch.long), torch.arange(n))


def _ramp(n: int, size: int = 32) -> torch.Tensor:
    """Images ``[n, 1, size, size]`` whose value is the pixel centre's x in [-1, 1] normalised coordinates."""
    x = (torch.arange(size) + 0.5) / size * 2 - 1
    return x.expand(n, 1, size, size).clone()


def test_no_crop_and_no_flip_is_the_identity():
    theta = crop_flip_grid(4, None, (0.75, 4 / 3), False, torch.Generator().manual_seed(0), CPU)
    assert torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))


def test_flip_mirrors_about_half_of_the_frames_exactly():
    images = torch.rand(200, 3, 8, 8)
    aug = DeviceAugment(AugmentBlock(flip=True), {"image": "image"}, seed=0, device=CPU)
    out = aug(_batch(image=images)).inputs["image"]
    same = torch.isclose(out, images, atol=1e-6).flatten(1).all(1)
    mirrored = torch.isclose(out, images.flip(-1), atol=1e-6).flatten(1).all(1)
    assert bool((same ^ mirrored).all())  # each frame is one or the other
    assert 70 < int(mirrored.sum()) < 130


def test_crops_cover_the_asked_fraction_of_the_frame():
    # a fixed area of 1/4 and square crops: every crop spans half the width, so the ramp's slope halves
    # and the crop's x range lies inside the frame
    aug = DeviceAugment(AugmentBlock(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0)), {"image": "image"}, 0, CPU)
    out = aug(_batch(image=_ramp(64))).inputs["image"][:, 0, 0]                    # [64, 32] one row each
    slope = (out[:, -1] - out[:, 0]) / (_ramp(1)[0, 0, 0, -1] - _ramp(1)[0, 0, 0, 0])
    assert torch.allclose(slope, torch.full_like(slope, 0.5), atol=1e-4)
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    assert float(out[:, 0].std()) > 0.05  # the crops are placed at random

    wide = DeviceAugment(AugmentBlock(crop_scale=(0.08, 1.0)), {"image": "image"}, 0, CPU)
    spans = wide(_batch(image=_ramp(400))).inputs["image"][:, 0, 0]
    fraction = (spans[:, -1] - spans[:, 0]) / (_ramp(1)[0, 0, 0, -1] - _ramp(1)[0, 0, 0, 0])
    assert float(fraction.min()) < 0.35 and float(fraction.max()) > 0.9 and float(fraction.max()) <= 1 + 1e-5


def test_a_clip_keeps_one_crop_for_all_its_frames():
    frame = torch.rand(6, 1, 3, 16, 16)
    video = frame.expand(6, 4, 3, 16, 16).contiguous()                              # 4 identical frames per clip
    aug = DeviceAugment(AugmentBlock(crop_scale=(0.1, 0.5), flip=True), {"visual": "video"}, 0, CPU)
    out = aug(_batch(visual=video)).inputs["visual"]
    assert out.shape == video.shape
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert not torch.allclose(out[0, 0], out[1, 0])  # but clips differ


def test_per_frame_crops_differ_within_a_clip():
    video = torch.rand(1, 1, 3, 16, 16).expand(6, 4, 3, 16, 16).contiguous()
    aug = DeviceAugment(AugmentBlock(crop_scale=(0.1, 0.5), per_frame=True), {"visual": "video"}, 0, CPU)
    out = aug(_batch(visual=video)).inputs["visual"]
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_spec_masks_zero_whole_bands_no_wider_than_asked():
    x = torch.ones(300, 1, 40, 50)
    out = spec_masks(x, freq=7, time=9, count=2, generator=torch.Generator().manual_seed(1))
    zero = out == 0
    rows = zero.all(dim=3)[:, 0]                                                      # [B, F] fully zeroed bins
    cols = zero.all(dim=2)[:, 0]                                                      # [B, T] fully zeroed frames
    # every zero lies in a fully zeroed bin or frame: masks are bands, not scattered points
    assert torch.equal(zero[:, 0], rows[:, :, None] | cols[:, None, :])
    assert int(rows.sum(1).max()) <= 14 and int(cols.sum(1).max()) <= 18
    assert float(rows.float().sum(1).mean()) > 2  # and they are drawn, per sample
    assert len({tuple(r.nonzero().flatten().tolist()) for r in rows[:20]}) > 10


def test_same_seed_same_draws_and_state_restores_them():
    block = AugmentBlock(crop_scale=(0.08, 1.0), flip=True, freq_mask=5, time_mask=5)
    kinds = {"image": "image", "audio": "audio"}
    batch = _batch(image=torch.rand(8, 3, 12, 12), audio=torch.rand(8, 1, 20, 20))
    a, b = DeviceAugment(block, kinds, 3, CPU), DeviceAugment(block, kinds, 3, CPU)
    assert all(torch.equal(a(batch).inputs[m], b(batch).inputs[m]) for m in kinds)
    saved = a.state_dict()
    first = a(batch)
    a.load_state_dict(saved)
    again = a(batch)
    assert all(torch.equal(first.inputs[m], again.inputs[m]) for m in kinds)
    assert not torch.equal(first.inputs["image"], a(batch).inputs["image"])


@pytest.mark.parametrize("bad, key", [("{crop_scale: [0.5, 0.1]}", "crop_scale"), ("{crop_scale: [0.1, 2]}", "crop_scale"),
                                      ("{flips: true}", "flips"), ("{freq_mask: -1}", "freq_mask")])
def test_bad_augment_settings_are_refused_with_the_key(capsys, tmp_path, bad, key):
    code, out, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--out", tmp_path,
                             "--set", f"train.augment={bad}")
    assert code == 2 and key in err and not tmp_path.joinpath("quickstart").exists()


def test_an_augmented_run_stopped_mid_epoch_resumes_bitwise(capsys, tmp_path, monkeypatch, reliability):
    args = ["train", "recipes/quickstart.yaml", "--set", "train.epochs=3", "--set", "dataset.n_train=160",
            "--set", "dataset.n_val=48", "--set", "dataset.n_test=48", "--set", "train.batch_size=32",
            "--set", "train.augment={crop_scale: [0.3, 1.0], flip: true, freq_mask: 6, time_mask: 6}"]
    expected = stopped_and_resumed(capsys, monkeypatch, tmp_path, args, step=3)
    reliability("interrupted runs resumed and checked bitwise equal to an uninterrupted run")
    # and the augmentation changed training: the same run without it ends elsewhere
    assert run_cli(capsys, *args[:-2], "--out", tmp_path / "plain")[0] == 0  # without --set train.augment=...
    assert run_results(tmp_path / "plain")[0] != expected[0]



def test_processes_holding_parts_of_a_batch_augment_and_drop_as_one_process_does():
    # data-parallel, each process draws for the global batch and keeps its rows' draws
    from bogc_cli.engine.modality_dropout import ModalityDropout

    block = AugmentBlock(crop_scale=(0.2, 1.0), flip=True, per_frame=True, freq_mask=5, time_mask=5)
    kinds = {"visual": "video", "audio": "audio"}
    full = _batch(visual=torch.rand(9, 3, 3, 12, 12), audio=torch.rand(9, 1, 20, 20))
    one = ModalityDropout({"visual": 0.4, "audio": 0.4}, list(kinds), 0)(DeviceAugment(block, kinds, 0, CPU)(full))
    for start, stop in ((0, 5), (5, 9)):  # two processes' shards, each with its own equally seeded copies
        part = Batch({m: x[start:stop] for m, x in full.inputs.items()}, full.labels[start:stop], full.index[start:stop])
        where = (start, stop, len(full))
        mine = ModalityDropout({"visual": 0.4, "audio": 0.4}, list(kinds), 0)(
            DeviceAugment(block, kinds, 0, CPU)(part, where), where)
        for m in kinds:
            assert torch.equal(mine.inputs[m], one.inputs[m][start:stop]), m
