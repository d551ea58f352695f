"""The text modality: tokenised at `bogc prepare` time (a local Hugging Face tokenizer, or a word vocabulary of
the train split), stored as [N, 2, L] int32 ids + mask, learnt by the from-scratch text-transformer or by a
local transformers model (tiny BERT built from a config here: nothing is downloaded); missing text is all
padding; wrong tokenizer and model directories are refused with exit 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bogc_cli.data.arrays import read_arrays_folder
from bogc_cli.data.cache import ModalitySpec, read_manifest
from bogc_cli.errors import UserError
from bogc_cli.models.encoder_options import EncoderSpec
from bogc_cli.models.encoders import TextTransformer, build_encoder
from bogc_cli.recipe import ModelBlock
from cli_helpers import run_bogc, run_cli
from data_prep.text import PretrainedTokenizer, WordTokenizer, encode_texts
from pretrained_helpers import text_arrays_folder, tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")  # the optional extra `pretrained` (in `dev`, so CI runs these)
    return tiny_bert(tmp_path_factory.mktemp("models") / "bert")


def _recipe(tmp_path: Path, root: Path, encoders: str = "", extra: str = "", epochs: int = 1) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"experiment: text\ndataset: {{name: arrays, root: {root}}}\n"
                    f"model: {{feature_dim: 16, hidden_dim: 64, mlp_layers: 1{encoders}}}\n{extra}"
                    f"train: {{epochs: {epochs}, batch_size: 16}}\noutput: {{dir: {tmp_path / 'out'}}}\n")
    return path


# ------------------------------------------------------------------ tokenisers


def test_the_word_vocabulary_comes_from_train_and_encodes_by_hand():
    tok = WordTokenizer.fit(["b a a", "C, c"])
    assert tok.vocabulary == ["[PAD]", "[UNK]", ",", "a", "b", "c"]  # 0 pad, 1 unknown, then sorted tokens
    ids, mask = tok.encode(["a B zebra , c c", ""], max_length=4)
    assert ids.tolist() == [[3, 4, 1, 2], [0, 0, 0, 0]] and mask.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    both = encode_texts(["c"], tok, 3)
    assert both.dtype == np.int32 and both.tolist() == [[[5, 0, 0], [1, 0, 0]]]
    with pytest.raises(UserError, match="hold no word"):
        WordTokenizer.fit(["", "  "])


def test_a_local_tokenizer_encodes_as_transformers_does(bert):
    tok = PretrainedTokenizer(bert)
    ids, mask = tok.encode(["the movie was good", "bad"], max_length=6)
    vocab = (bert / "vocab.txt").read_text().split()
    assert [vocab[i] for i in ids[0]] == ["[CLS]", "the", "movie", "was", "good", "[SEP]"]
    assert [vocab[i] for i in ids[1][:3]] == ["[CLS]", "bad", "[SEP]"] and mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    described = tok.describe(6)
    assert described["vocab_size"] == len(vocab) and described["pad_id"] == 0
    assert described["files_sha256"]["vocab.txt"] == hashlib.sha256((bert / "vocab.txt").read_bytes()).hexdigest()


def test_wrong_tokenizer_directories_are_one_error_each(tmp_path, bert, capsys):
    raw = text_arrays_folder(tmp_path / "raw", 12, 6, with_image=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "model_only").mkdir()
    shutil.copy(bert / "config.json", tmp_path / "model_only" / "config.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    cases = {
        tmp_path / "nope": "does not exist",
        bert / "vocab.txt": "is a file",
        tmp_path / "empty": "holds no tokenizer",
        tmp_path / "model_only": "holds no tokenizer",  # transformers would make a 5-token BERT tokenizer of it
        tmp_path / "broken": "transformers cannot read a tokenizer there",
    }
    for i, (directory, words) in enumerate(cases.items()):
        code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", raw, "--out", tmp_path / f"c{i}",
                                 "--tokenizer", directory)
        assert code == 2 and str(directory) in err and words in " ".join(err.split()), (directory, err)
        assert not (tmp_path / f"c{i}").exists()
    code, out, err = run_cli(capsys, "prepare", "mfeat", "--raw", raw, "--out", tmp_path / "m", "--tokenizer", bert)
    assert code == 2 and "--tokenizer is for datasets with text" in err


def test_a_wrong_tokenizer_directory_is_refused_by_the_real_entry_point(tmp_path):
    raw = text_arrays_folder(tmp_path / "raw", 12, 6, with_image=False)
    (tmp_path / "empty").mkdir()
    proc = run_bogc("prepare", "arrays", "--raw", raw, "--out", tmp_path / "cache", "--tokenizer", tmp_path / "empty")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--tokenizer {tmp_path / 'empty'} holds no tokenizer" in " ".join(proc.stderr.split())
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ the arrays format carries text


def test_arrays_text_comes_as_lines_or_strings_and_is_tokenised_after_the_carve_out(tmp_path):
    root = tmp_path / "raw"
    for split, texts in (("train", ["good film", "bad film", "good plot", "bad plot", "fine", "poor"]),
                         ("test", ["good", "awful"])):
        (root / split).mkdir(parents=True)
        np.save(root / split / "labels.npy", np.array([1, 0] * (len(texts) // 2)))
        if split == "train":
            (root / split / "review.txt").write_text("\n".join(texts) + "\n")
        else:
            np.save(root / split / "review.npy", np.array(texts))
    manifest, splits = read_arrays_folder(root, val_fraction=0.34, seed=0, max_length=3)
    spec = manifest.modalities["review"]
    assert spec.kind == "text" and spec.shape == [2, 3] and spec.dtype == "int32"
    assert spec.tokenizer["kind"] == "word" and (splits["val"].inputs["review"][:, 0] == 1).any()  # [UNK]
    train_rows = [int(i.split(":")[1]) for i in splits["train"].ids]
    kept_words = {w for r in train_rows for w in ["good film", "bad film", "good plot", "bad plot", "fine",
                                                   "poor"][r].split()}
    assert spec.tokenizer["vocab_size"] == 2 + len(kept_words)  # built from the rows left in train only
    assert splits["test"].inputs["review"][1].tolist() == [[1, 0, 0], [1, 0, 0]]  # "awful": unknown, then padding


def test_arrays_text_mistakes_are_one_message_each(tmp_path):
    def folder(name: str, train_text, kinds=None, numeric_text=False):
        root = tmp_path / name
        for split in ("train", "test"):
            (root / split).mkdir(parents=True)
            np.save(root / split / "labels.npy", np.array([0, 1, 0, 1]))
        np.save(root / "test" / "t.npy", np.zeros((4, 3), np.float32) if numeric_text else np.array(["a"] * 4))
        train_text(root / "train")
        return root

    both = folder("both", lambda d: ((d / "t.txt").write_text("a\nb\nc\nd\n"), np.save(d / "t.npy", np.array(["a"] * 4))))
    with pytest.raises(UserError, match="has both t.npy and t.txt"):
        read_arrays_folder(both)
    short = folder("short", lambda d: (d / "t.txt").write_text("a\nb\n"))
    with pytest.raises(UserError, match="has 2 samples but the labels have 4"):
        read_arrays_folder(short)
    mixed = folder("mixed", lambda d: (d / "t.txt").write_text("a\nb\nc\nd\n"), numeric_text=True)
    with pytest.raises(UserError, match="one holds text, the other numbers"):
        read_arrays_folder(mixed)
    latin = folder("latin", lambda d: (d / "t.txt").write_bytes("caf\u00e9\nb\nc\nd\n".encode("latin-1")))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_arrays_folder(latin)
    good = folder("good", lambda d: (d / "t.txt").write_text("a\nb\nc\nd\n"))
    with pytest.raises(UserError, match="holds text, but kind 'vector' is given"):
        read_arrays_folder(good, kinds={"t": "vector"})
    with pytest.raises(UserError, match="--max-length 0"):
        read_arrays_folder(good, max_length=0)
    numbers = tmp_path / "numbers"
    for split in ("train", "test"):
        (numbers / split).mkdir(parents=True)
        np.save(numbers / split / "labels.npy", np.array([0, 1, 0, 1]))
        np.save(numbers / split / "x.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(UserError, match="holds numbers, but kind text is given"):
        read_arrays_folder(numbers, kinds={"x": "text"})
    with pytest.raises(UserError, match="has no text modality to tokenise"):
        read_arrays_folder(numbers, tokenizer=tmp_path)


# ------------------------------------------------------------------ encoders


def test_the_text_transformer_ignores_padding_and_gives_missing_text_one_feature():
    torch.manual_seed(0)
    enc = TextTransformer(vocab_size=30, steps=6, feature_dim=8, d_model=16, layers=1).eval()
    x = torch.tensor([[[5, 6, 7, 0, 0, 0], [1, 1, 1, 0, 0, 0]]], dtype=torch.float32)
    noisy = x.clone()
    noisy[0, 0, 3:] = 29  # other ids where the mask says padding
    missing = torch.zeros(2, 2, 6)  # zero-input fill, modality dropout: ids 0, mask 0
    missing[1, 0] = 9  # ids without mask are padding too
    with torch.no_grad():
        assert torch.allclose(enc(x), enc(noisy), atol=1e-6)
        empty = enc(missing)
        assert torch.isfinite(empty).all() and torch.allclose(empty[0], empty[1])
        assert not torch.allclose(enc(x)[0], empty[0])


def test_the_default_encoder_of_text_learns_from_a_word_vocabulary(tmp_path, capsys):
    """Text + image (noise) prepared without a pretrained model, trained by the real `bogc` entry point."""
    raw = text_arrays_folder(tmp_path / "raw", 96, 40)
    code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", raw, "--out", tmp_path / "cache", "--max-length", "8")
    assert code == 0, out + err
    assert (tmp_path / "cache" / "tokenizers" / "text" / "vocab.txt").read_text().split()[:2] == ["[PAD]", "[UNK]"]
    recipe = _recipe(tmp_path, tmp_path / "cache", ", cnn_channels: [4]", "optim: {lr: 0.005}\n", epochs=12)
    proc = run_bogc("train", recipe)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = next((tmp_path / "out").rglob("eval.json")).parent
    assert json.loads((run / "eval.json").read_text())["accuracy"] >= 0.85  # one sentiment word decides the label
    env = json.loads((run / "environment.json").read_text())["encoders"]["text"]
    assert env == {"family": "scratch", "class": "TextTransformer"}


def test_a_tiny_bert_tokenises_at_prepare_time_and_trains_as_the_text_encoder(tmp_path, bert, capsys):
    raw = text_arrays_folder(tmp_path / "raw", 32, 12)
    code, out, err = run_cli(capsys, "prepare", "arrays", "--raw", raw, "--out", tmp_path / "cache", "--tokenizer",
                             bert, "--max-length", "12")
    assert code == 0, out + err
    spec = read_manifest(tmp_path / "cache").modalities["text"]
    assert spec.kind == "text" and spec.shape == [2, 12] and spec.tokenizer["kind"] == "pretrained"
    ids = np.load(tmp_path / "cache" / "train" / "text.npy")
    assert (ids[:, 0, 0] == 2).all() and (ids[:, 1, 0] == 1).all()  # [CLS] first, kept by the mask
    # the cache round-trips: test's rows are the model's tokenizer on the raw lines, and so is the copy kept in the cache
    lines = (raw / "test" / "text.txt").read_text().splitlines()
    cached = np.load(tmp_path / "cache" / "test" / "text.npy")
    assert np.array_equal(cached, encode_texts(lines, PretrainedTokenizer(bert), 12))
    assert np.array_equal(cached, encode_texts(lines, PretrainedTokenizer(tmp_path / "cache" / "tokenizers" / "text"), 12))
    state = {k: v.clone() for k, v in __import__("transformers").AutoModel.from_pretrained(bert).state_dict().items()}
    encoders = f", encoders: {{text: {{name: hf, path: {bert}, freeze: 2}}, image: cnn-small}}, cnn_channels: [4]"
    recipe = _recipe(tmp_path, tmp_path / "cache", encoders, "optim: {backbone_lr: 0.0001}\n")
    code, out, err = run_cli(capsys, "train", recipe)
    assert code == 0, out + err
    run = next((tmp_path / "out").rglob("eval.json")).parent
    trained = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    prefix = "encoders.text.backbone."
    frozen = [k for k in state if k.startswith(("embeddings.", "encoder.layer.0."))]
    assert frozen and all(torch.equal(trained[prefix + k], state[k]) for k in frozen)  # embeddings + layer 0
    assert not torch.equal(trained[prefix + "encoder.layer.1.output.dense.weight"],
                           state["encoder.layer.1.output.dense.weight"])
    env = json.loads((run / "environment.json").read_text())["encoders"]["text"]
    assert env["family"] == "transformers" and env["pooling"] == "mean" and env["path"] == str(bert.resolve())
    assert env["weights_sha256"] == {"model.safetensors": hashlib.sha256(
        (bert / "model.safetensors").read_bytes()).hexdigest()}
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["lr_backbone"] == 0.0001
    code, out, err = run_cli(capsys, "missing-modality", run, "--fill", "zero-input", "--rates", "0,1")
    assert code == 0, out + err


def test_the_hf_encoder_pools_over_the_mask_and_a_missing_text_is_zero(bert):
    spec = ModalitySpec("text", [2, 8], "int32", {"kind": "pretrained", "vocab_size": 27, "pad_id": 0})
    enc = build_encoder(EncoderSpec(name="hf", path=str(bert)), spec, ModelBlock()).eval()
    x = torch.tensor([[[2, 5, 9, 3, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]], dtype=torch.float32)
    with torch.no_grad():
        h = enc.backbone(input_ids=x[:, 0].long(), attention_mask=x[:, 1].long()).last_hidden_state
        assert torch.allclose(enc(x), h[:, :4].mean(dim=1), atol=1e-6)
        assert torch.equal(enc(torch.zeros(2, 2, 8)), torch.zeros(2, 16))
    cls = build_encoder(EncoderSpec(name="hf", path=str(bert), pooling="cls"), spec, ModelBlock()).eval()
    with torch.no_grad():
        assert torch.allclose(cls(x), h[:, 0], atol=1e-6)


def test_wrong_model_directories_and_mismatched_text_are_refused(tmp_path, bert):
    spec = ModalitySpec("text", [2, 8], "int32", {"kind": "pretrained", "vocab_size": 27, "pad_id": 0})
    (tmp_path / "no_config").mkdir()
    shutil.copy(bert / "model.safetensors", tmp_path / "no_config")
    (tmp_path / "no_weights").mkdir()
    shutil.copy(bert / "config.json", tmp_path / "no_weights")
    three = tiny_bert(tmp_path / "three", layers=3, tokenizer=False)
    shutil.copy(bert / "model.safetensors", three / "model.safetensors")  # 2 layers of weights for a 3-layer config
    wide = tiny_bert(tmp_path / "wide", hidden=24, tokenizer=False)
    shutil.copy(bert / "model.safetensors", wide / "model.safetensors")
    corrupt, truncated, pickle_dir, pointer = (tmp_path / n for n in ("corrupt", "truncated", "pickle", "pointer"))
    for folder in (corrupt, truncated, pickle_dir, pointer):
        folder.mkdir()
        shutil.copy(bert / "config.json", folder)
    (corrupt / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 8)
    (truncated / "model.safetensors").write_bytes((bert / "model.safetensors").read_bytes()[:2000])
    (pickle_dir / "pytorch_model.bin").write_bytes(b"\x00not a pickle" * 8)
    (pointer / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    cases = [
        (EncoderSpec(name="hf", path=str(tmp_path / "nope")), spec, "does not exist"),
        (EncoderSpec(name="hf", path=str(tmp_path / "no_config")), spec, "has no config.json"),
        (EncoderSpec(name="hf", path=str(tmp_path / "no_weights")), spec, "has config.json but no weights"),
        (EncoderSpec(name="hf", path=str(three)), spec, "encoder.layer.2."),
        (EncoderSpec(name="hf", path=str(wide)), spec, "cannot be loaded as its config.json describes"),
        (EncoderSpec(name="hf", path=str(corrupt)), spec, "SafetensorError"),
        (EncoderSpec(name="hf", path=str(truncated)), spec, "a weights file there is corrupt, truncated"),
        (EncoderSpec(name="hf", path=str(pickle_dir)), spec, "cannot be loaded as its config.json describes"),
        (EncoderSpec(name="hf", path=str(pointer)), spec, "git lfs pull"),
        (EncoderSpec(name="hf", path=str(bert)), ModalitySpec("text", [2, 8], "int32", {"kind": "word", "vocab_size": 9}),
         "tokenised with the word vocabulary"),
        (EncoderSpec(name="hf", path=str(bert)), ModalitySpec("text", [2, 8], "int32", {"kind": "pretrained",
                                                                                       "vocab_size": 500}),
         "has 500 tokens, more than the 27"),
        (EncoderSpec(name="hf", path=str(bert)), ModalitySpec("text", [2, 100], "int32", spec.tokenizer),
         "takes at most 64"),
        (EncoderSpec(name="hf", path=str(bert)), ModalitySpec("image", [3, 8, 8], "uint8"), "holds a text model"),
        (EncoderSpec(name="mlp"), spec, "cannot encode text inputs"),
    ]
    for choice, data, words in cases:
        with pytest.raises(UserError) as info:
            build_encoder(choice, data, ModelBlock(), what="model.encoders.text")
        assert words in str(info.value) and str(info.value).startswith("model.encoders.text"), (words, info.value)


def test_a_wrong_model_directory_stops_training_with_exit_2_and_writes_nothing(tmp_path, bert, capsys, monkeypatch):
    raw = text_arrays_folder(tmp_path / "raw", 12, 6, with_image=False)
    assert run_cli(capsys, "prepare", "arrays", "--raw", raw, "--out", tmp_path / "cache", "--tokenizer", bert)[0] == 0
    (tmp_path / "no_config").mkdir()
    code, out, err = run_cli(capsys, "train", _recipe(tmp_path, tmp_path / "cache",
                                                      f", encoders: {{text: {{name: hf, path: {tmp_path / 'no_config'}}}}}"))
    assert code == 2 and f"{tmp_path / 'no_config'} has no config.json" in " ".join(err.split())
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "transformers", None)  # as when the optional extra is not installed
    code, out, err = run_cli(capsys, "train", _recipe(tmp_path, tmp_path / "cache",
                                                      f", encoders: {{text: {{name: hf, path: {bert}}}}}"))
    assert code == 2 and "needs the Python package 'transformers'" in err and ".[pretrained]" in err


def test_a_tiny_hf_vision_model_encodes_images(tmp_path):
    transformers = pytest.importorskip("transformers")
    ViTConfig, ViTModel = transformers.ViTConfig, transformers.ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8)).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3,
                                                                            "image_std": [0.5] * 3}))
    enc = build_encoder(EncoderSpec(name="hf", path=str(tmp_path / "vit"), freeze=1),
                        ModalitySpec("image", [3, 16, 16], "uint8"), ModelBlock()).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        h = enc.backbone(pixel_values=(x - 0.5) / 0.5).last_hidden_state
        assert torch.allclose(enc(x), h.mean(dim=1), atol=1e-6)
    assert {n.split(".")[0] for n, p in enc.backbone.named_parameters() if not p.requires_grad} == {"embeddings"}
