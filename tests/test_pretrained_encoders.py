"""Pretrained encoders from local files: torchvision state dicts and timm checkpoints load exactly, frozen blocks
stay bit-identical through training (BatchNorm statistics too), optim.backbone_lr gives them their own learning
rate, environment.json records each file's sha256, and every wrong weights file is one clear error (exit 2)
before anything is written."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import EncoderSpec
from bogc_cli.models.encoders import build_encoder
from bogc_cli.models.pretrained.base import PretrainedEncoder
from bogc_cli.models.pretrained.weights import adapt_input_conv
from bogc_cli.recipe import ModelBlock, OptimBlock
from cli_helpers import run_bogc, run_cli

IMAGE = ModalitySpec("image", [3, 32, 32], "uint8")
CFG = ModelBlock()


def _resnet18_file(path: Path, seed: int = 0, head: bool = True) -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict with seeded weights and non-default BatchNorm statistics, saved to ``path``."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(7)
    state = net.state_dict()
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(state, path)
    return state


def _build(spec: ModalitySpec, **choice) -> torch.nn.Module:
    return build_encoder(EncoderSpec(**choice), spec, CFG, True, "model.encoders.image")


# ------------------------------------------------------------------ torchvision


def test_a_resnet18_state_dict_loads_exactly_with_or_without_its_classifier(tmp_path):
    for head in (True, False):
        state = _resnet18_file(tmp_path / f"r18-{head}.pt", head=head)
        enc = _build(IMAGE, name="resnet18", weights=str(tmp_path / f"r18-{head}.pt"))
        own = enc.backbone.state_dict()
        assert set(own) == {k for k in state if not k.startswith("fc.")}
        assert all(torch.equal(own[k], state[k]) for k in own)
        assert enc.out_dim == 512 and enc(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_pretrained_inputs_are_standardised_with_imagenet_statistics(tmp_path):
    _resnet18_file(tmp_path / "r18.pt")
    enc = _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt")).eval()
    plain = _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt"), normalize=False).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(enc(x), plain((x - mean) / std), atol=1e-6)


def test_a_one_channel_input_sums_the_pretrained_rgb_kernels(tmp_path):
    state = _resnet18_file(tmp_path / "r18.pt")
    enc = _build(ModalitySpec("audio", [1, 40, 40], "float16"), name="resnet18", weights=str(tmp_path / "r18.pt"))
    assert torch.equal(enc.backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert not enc.standardise  # ImageNet statistics are for RGB only
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1)  # by hand: timm's rule
    assert adapt_input_conv(w, 1).flatten().tolist() == [0 + 1 + 2, 3 + 4 + 5]
    assert torch.allclose(adapt_input_conv(w, 2), w[:, :2] * 1.5)


def test_freeze_n_counts_the_stem_and_the_four_stages_of_a_resnet(tmp_path):
    _resnet18_file(tmp_path / "r18.pt")
    for n, frozen in ((0, []), (1, ["conv1", "bn1"]), (3, ["conv1", "bn1", "layer1", "layer2"])):
        enc = _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt"), freeze=n)
        off = {name.split(".")[0] for name, p in enc.backbone.named_parameters() if not p.requires_grad}
        assert off == set(frozen)
        assert sorted(enc.frozen_modules) == sorted(frozen)
    enc = _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt"), freeze=True)
    assert not any(p.requires_grad for p in enc.parameters()) and enc.frozen_modules == [""]
    with pytest.raises(UserError, match="model.encoders.image.freeze: 6, but torchvision's resnet18 has 5 blocks"):
        _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt"), freeze=6)


def test_frozen_modules_stay_in_eval_mode_when_the_model_trains(tmp_path):
    _resnet18_file(tmp_path / "r18.pt")
    enc = _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt"), freeze=2)
    outer = torch.nn.ModuleDict({"image": enc}).train()  # as MultimodalModel.train() reaches it
    assert not enc.backbone.bn1.training and not enc.backbone.layer1[0].bn1.training
    assert enc.backbone.layer2[0].bn1.training and enc.training
    before = enc.backbone.layer1[0].bn1.running_mean.clone()
    enc(torch.rand(4, 3, 32, 32))
    assert torch.equal(enc.backbone.layer1[0].bn1.running_mean, before)
    outer.eval()
    assert not enc.backbone.layer2[0].bn1.training


def test_backbone_lr_puts_the_pretrained_parameters_in_a_group_of_their_own(tmp_path):
    from bogc_cli.engine.optim import build_optimizer
    from bogc_cli.models.multimodal import MultimodalModel

    _resnet18_file(tmp_path / "r18.pt")
    specs = {"image": IMAGE, "vector": ModalitySpec("vector", [5], "float32")}
    model = MultimodalModel(specs, 3, {"image": EncoderSpec(name="resnet18", weights=str(tmp_path / "r18.pt"),
                                                            freeze=1), "vector": "mlp"}, CFG)
    opt = build_optimizer(model.parameters(), OptimBlock(lr=1e-3, backbone_lr=1e-5), backbone=model.backbone_parameters())
    named = {g["name"]: g for g in opt.param_groups}
    assert named["model"]["lr"] == 1e-3 and named["backbone"]["lr"] == 1e-5
    backbone = {id(p) for p in model.encoders["image"].backbone.parameters() if p.requires_grad}
    assert {id(p) for p in named["backbone"]["params"]} == backbone
    assert not any(id(p) in backbone for p in named["model"]["params"])
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and not any(p is q for g in opt.param_groups for p in g["params"] for q in frozen)
    # G-Blending's estimation copies train with the same groups: the backbone at its own rate, frozen blocks out
    from bogc_cli.fusion.gblending import twin_optimizer

    twin = __import__("copy").deepcopy(model)
    copy_opt = twin_optimizer(opt, model, twin)
    assert [g["lr"] for g in copy_opt.param_groups] == [1e-3, 1e-5]
    twin_backbone = {id(p) for p in twin.encoders["image"].backbone.parameters() if p.requires_grad}
    assert {id(p) for p in copy_opt.param_groups[1]["params"]} == twin_backbone
    assert sum(len(g["params"]) for g in copy_opt.param_groups) == sum(p.requires_grad for p in twin.parameters())
    scratch = MultimodalModel(specs, 3, {"image": "cnn-small", "vector": "mlp"}, CFG)
    with pytest.raises(UserError, match="optim.backbone_lr is set, but no pretrained encoder"):
        build_optimizer(scratch.parameters(), OptimBlock(backbone_lr=1e-5), backbone=scratch.backbone_parameters())


def _image_folder(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
        images[labels == 1, :, 8:24, 8:24] = 220  # a bright square: class 1
        (root / split).mkdir(parents=True)
        np.save(root / split / "image.npy", images)
        np.save(root / split / "labels.npy", labels)
    return root


def test_resnet18_weights_train_with_frozen_blocks_bit_identical_and_their_sha256_recorded(tmp_path, capsys):
    state = _resnet18_file(tmp_path / "r18.pt")
    data = _image_folder(tmp_path / "images")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"experiment: pre\ndataset: {{name: arrays, root: {data}}}\n"
                      f"model:\n  encoders:\n    image: {{name: resnet18, weights: {tmp_path / 'r18.pt'}, freeze: 3}}\n"
                      "optim: {lr: 0.01, backbone_lr: 0.001, weight_decay: 0.01}\n"
                      f"train: {{epochs: 1, batch_size: 8}}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    code, out, err = run_cli(capsys, "train", recipe)
    assert code == 0, out + err
    run = next((tmp_path / "out").rglob("eval.json")).parent
    trained = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    prefix = "encoders.image.backbone."
    frozen = [k for k in state if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    assert all(torch.equal(trained[prefix + k], state[k]) for k in frozen)  # weights and BN statistics alike
    assert not torch.equal(trained[prefix + "layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert not torch.equal(trained[prefix + "layer4.1.bn2.running_mean"], state["layer4.1.bn2.running_mean"])
    env = json.loads((run / "environment.json").read_text())["encoders"]["image"]
    assert env["sha256"] == hashlib.sha256((tmp_path / "r18.pt").read_bytes()).hexdigest()
    assert env["family"] == "torchvision" and env["arch"] == "resnet18" and env["freeze"] == 3
    assert env["weights"] == str((tmp_path / "r18.pt").resolve())
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["lr"] == 0.01 and record["lr_backbone"] == 0.001
    # eval rebuilds the architecture without reading the weights file: the checkpoint holds the weights
    (tmp_path / "r18.pt").unlink()
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, out + err


def _resnet34_stem(path: Path) -> None:
    """The stem and layer1 of a ResNet-34 (three blocks in layer1 where ResNet-18 has two): another architecture's
    weights, in a file of 1 MB rather than 87."""
    state = torchvision.models.resnet34(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith(("conv1.", "bn1.", "layer1."))}, path)


def _wrong_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the message must hold)."""
    _resnet34_stem(tmp_path / "resnet34.pt")
    wide = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    wide["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(wide, tmp_path / "shape.pt")
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "dict.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a pickle at all" * 10)
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "bad.safetensors").write_bytes(b"\x00not a safetensors file" * 8)
    return {
        "missing": (tmp_path / "nope.pt", "does not exist"),
        "folder": (tmp_path / "folder.pt", "is a folder"),
        "another architecture": (tmp_path / "resnet34.pt", "unexpected key(s) (layer1.2.conv1.weight"),
        "another shape": (tmp_path / "shape.pt", "layer1.0.conv1.weight [64, 64, 5, 5] in the file, [64, 64, 3, 3]"),
        "a list": (tmp_path / "list.pt", "holds list, not a state dict"),
        "a dict of numbers": (tmp_path / "dict.pt", "not a state dict"),
        "not a weights file": (tmp_path / "garbage.pt", "is not a readable weights file"),
        "a Git LFS pointer": (tmp_path / "lfs.pt", "git lfs pull"),
        "a corrupt safetensors file": (tmp_path / "bad.safetensors", "is not a readable weights file (SafetensorError"),
    }


def test_every_wrong_weights_file_is_one_error_naming_it_and_what_was_expected(tmp_path):
    for case, (path, words) in _wrong_files(tmp_path).items():
        with pytest.raises(UserError) as info:
            _build(IMAGE, name="resnet18", weights=str(path))
        message = str(info.value)
        assert str(path) in message and words in message, (case, message)
        assert message.startswith("model.encoders.image:"), (case, message)


@pytest.mark.parametrize("process", ["in-process", pytest.param("new process", marks=pytest.mark.slow)])
def test_a_wrong_weights_file_stops_bogc_train_with_exit_2_before_anything_is_written(tmp_path, capsys, process):
    """Through the CLI in this process, and (under -m slow: a new process imports torch, ~4 s of CPU) through the
    installed console script's entry point."""
    _resnet34_stem(tmp_path / "resnet34.pt")
    data = _image_folder(tmp_path / "images", 8, 4)
    out = tmp_path / "out"
    args = ("train", "recipes/quickstart.yaml", "--set", "dataset.name=arrays", "--set", f"dataset.root={data}",
            "--set", f"model.encoders={{image: {{name: resnet18, weights: {tmp_path / 'resnet34.pt'}}}}}",
            "--set", "train.epochs=1", "--out", out)
    if process == "new process":
        proc = run_bogc(*args)
        code, err = proc.returncode, proc.stderr
    else:
        code, _, err = run_cli(capsys, *args)
    message = " ".join(err.split())
    assert code == 2, err
    assert f"model.encoders.image: {tmp_path / 'resnet34.pt'} does not hold weights of torchvision's resnet18" in message
    assert not out.exists()


def test_torchvision_arch_names_any_classification_model(tmp_path):
    net = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(net.state_dict(), tmp_path / "mnv3.pt")
    enc = _build(IMAGE, name="torchvision:mobilenet_v3_small", weights=str(tmp_path / "mnv3.pt"), freeze=2)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, enc.out_dim) and enc.out_dim == 1024
    assert {n.split(".")[1] for n, p in enc.backbone.named_parameters() if not p.requires_grad
            and n.startswith("features.")} == {"0", "1"}
    with pytest.raises(UserError, match="torchvision has no classification model 'resnet19'"):
        _build(IMAGE, name="torchvision:resnet19")


# ------------------------------------------------------------------ timm


def test_a_timm_model_loads_a_local_checkpoint_and_never_downloads(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")  # the optional extra `pretrained` (in `dev`, so CI runs this)

    torch.manual_seed(1)
    net = timm.create_model("test_resnet", pretrained=False)  # with its classifier, as checkpoints come
    torch.save(net.state_dict(), tmp_path / "test_resnet.pth")

    def no_download(*args, **kwargs):
        raise AssertionError("timm was asked to download")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_download)
    enc = _build(IMAGE, name="timm:test_resnet", weights=str(tmp_path / "test_resnet.pth"), freeze=2)
    own, file = enc.backbone.state_dict(), net.state_dict()
    assert set(own) == {k for k in file if not k.startswith("fc.")}
    assert all(torch.equal(own[k], file[k]) for k in own)
    assert enc.out_dim == net.num_features and enc(torch.rand(2, 3, 32, 32)).shape == (2, net.num_features)
    groups = timm.models.group_parameters(net, net.group_matcher(coarse=True))
    first_two = {n for g in sorted(groups)[:2] for n in groups[g]}
    assert {n for n, p in enc.backbone.named_parameters() if not p.requires_grad} == first_two
    assert enc.source["sha256"] == hashlib.sha256((tmp_path / "test_resnet.pth").read_bytes()).hexdigest()
    mono = _build(ModalitySpec("audio", [1, 16, 16], "float32"), name="timm:test_resnet",
                  weights=str(tmp_path / "test_resnet.pth"))
    assert torch.equal(mono.backbone.conv1[0].weight, file["conv1.0.weight"].sum(dim=1, keepdim=True))
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(UserError, match="does not hold weights of timm's test_resnet"):
        _build(IMAGE, name="timm:test_resnet", weights=str(tmp_path / "effnet.pth"))
    with pytest.raises(UserError, match="timm has no model 'no_such_net'"):
        _build(IMAGE, name="timm:no_such_net")


def test_a_missing_optional_package_is_one_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, as when it is not installed
    with pytest.raises(UserError) as info:
        _build(IMAGE, name="timm:test_resnet")
    assert "needs the Python package 'timm', which is not installed" in str(info.value)
    assert 'pip install -e ".[pretrained]"' in str(info.value)


def test_the_encoder_block_is_checked_at_recipe_validation():
    from bogc_cli.recipe import validate_recipe

    cases = {
        "hf needs path": {"text": {"name": "hf"}},
        "'mlp' is trained from scratch and takes no weights": {"audio": {"name": "mlp", "weights": "w.pt"}},
        "freeze keeps pretrained weights fixed, but this encoder has none": {"audio": {"name": "resnet18",
                                                                                        "freeze": True}},
        "did you mean model.encoders.audio.weights?": {"audio": {"name": "resnet18", "wieghts": "w.pt"}},
        "missing required key 'model.encoders.audio.name'": {"audio": {"weights": "w.pt"}},
        "model.encoders.audio.freeze: expected true or false or an integer >= 0": {
            "audio": {"name": "resnet18", "weights": "w.pt", "freeze": -1}},
    }
    for words, encoders in cases.items():
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace("?", r"\?")):
            validate_recipe({"dataset": {"name": "synthetic"}, "model": {"encoders": encoders}})
    recipe = validate_recipe({"dataset": {"name": "synthetic"}, "model": {"encoders": {
        "audio": {"name": "resnet18", "weights": "w.pt", "freeze": 2}, "image": "mlp"}}})
    assert recipe.to_dict()["model"]["encoders"] == {"audio": {"name": "resnet18", "weights": "w.pt", "freeze": 2},
                                                     "image": "mlp"}
    assert isinstance(recipe.model.encoders["image"], EncoderSpec) and recipe.model.encoders["image"].name == "mlp"


def test_bogc_list_shows_the_encoders_with_their_options(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    flat = " ".join(out.split())
    for words in ("text-transformer", "torchvision:<arch>", "timm:<arch>", "hf", "backbone_lr", "pooling: mean",
                  "freeze: true | N"):
        assert words in flat, words
    assert flat.count(".[pretrained]") == 2  # the install command of the extra, not eaten as rich markup


def test_pretrained_encoder_is_a_module_with_its_source():
    assert issubclass(type(_build(IMAGE, name="torchvision:resnet18")), PretrainedEncoder)


def test_every_method_reads_encoder_blocks_in_its_recipe_checks():
    """Methods' recipe checks read model.encoders as names and blocks alike (dimml hashed the entries, greedy
    compared them with names): each one validates or gives a UserError, never another exception."""
    from bogc_cli.fusion import METHODS
    from bogc_cli.recipe import validate_recipe

    encoders = {"audio": {"name": "transformer"}, "image": {"name": "resnet18", "weights": "w.pt"}, "vector": "mlp"}
    refused = {}
    for name in METHODS:
        try:
            validate_recipe({"dataset": {"name": "synthetic"}, "method": {"name": name}, "model": {"encoders": encoders}})
        except UserError as exc:
            refused[name] = str(exc)
    assert "transformer encoders do not have" in refused["greedy"]  # the block's name is read
    assert "resnet18 gives 512" in refused["dimml"] and "resnet18" in refused["mla"]


def test_backbone_lr_without_a_pretrained_encoder_stops_train_before_anything_is_written(tmp_path, capsys):
    data = _image_folder(tmp_path / "images", 8, 4)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "train", "recipes/quickstart.yaml", "--set", "dataset.name=arrays", "--set",
                           f"dataset.root={data}", "--set", "optim.backbone_lr=0.001", "--out", out)
    assert code == 2 and "optim.backbone_lr is set, but no pretrained encoder" in " ".join(err.split())
    assert not out.exists()  # no half-begun run to --overwrite


def test_relearning_soft_reinit_leaves_frozen_blocks_bit_identical(tmp_path):
    """relearning writes w * initial + (1 - w) * p into encoders; for a frozen p (p == initial) that mix is not
    bit-identical in floating point (0.3 a + 0.7 a != a), so frozen parameters are skipped."""
    from bogc_cli.fusion.relearning import soft_reinit

    _resnet18_file(tmp_path / "r18.pt")
    enc = _build(IMAGE, name="resnet18", weights=str(tmp_path / "r18.pt"), freeze=1)
    initial = {k: v.detach().clone() for k, v in enc.named_parameters()}
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.5)  # training moved every weight (the frozen ones only here, to show they are skipped)
    before = {k: v.detach().clone() for k, v in enc.named_parameters()}
    soft_reinit(enc, initial, 0.3)
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, 0.3 * initial[name] + 0.7 * before[name])
        else:
            assert torch.equal(p, before[name]), name
