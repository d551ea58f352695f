"""Image + text datasets: UPMC Food-101 (csv release and CGGM's json) and MVSA-Single (the standard label
cleaning, a seeded 8:1:1 split), prepared from tiny trees in their real formats (JPEGs written with PIL);
bad files skipped and reported, unfamiliar layouts refused with exit 2, and one training epoch on the
prepared food101 cache with a tiny BERT's tokenizer and encoder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bogc_cli.data.cache import load_split, read_manifest
from bogc_cli.errors import UserError
from cli_helpers import run_bogc, run_cli
from data_prep import food101, mvsa_single
from data_prep.imagetext import read_image
from data_prep.mvsa_single import clean_label
from imagetext_helpers import FOOD_CLASSES, food101_tree, mvsa_tree, write_jpeg
from pretrained_helpers import tiny_bert

LABELS = ("positive", "neutral", "negative")


@pytest.fixture(scope="module")
def food_raw(tmp_path_factory) -> Path:
    return food101_tree(tmp_path_factory.mktemp("food") / "UPMC_Food101")


# ------------------------------------------------------------------ Food-101


def test_food101_keeps_the_official_split_carves_validation_and_warns_about_counts(tmp_path, food_raw, capsys):
    code, out, err = run_cli(capsys, "prepare", "food101", "--raw", food_raw.parent, "--out", tmp_path / "c",
                             "--preset", "px64")
    assert code == 0, out + err
    assert "not the published train 67,988 / test 22,716" in out  # the count check warns
    assert "101 classes, 0-5 each; none of baby_back_ribs" in out  # per class, in brief past 20 classes
    manifest = read_manifest(tmp_path / "c")
    assert manifest.dataset == "food101" and len(manifest.classes) == 101
    assert manifest.splits == {"train": 15, "val": 3, "test": 6}  # 18 train rows: 10% stratified to val
    assert {c for c, n in manifest.class_counts["val"].items() if n} == set(FOOD_CLASSES)
    assert manifest.modalities["image"].shape == [3, 64, 64] and manifest.modalities["image"].dtype == "uint8"
    assert manifest.modalities["text"].shape == [2, 50]  # CGGM's TEXT_MAX_LENGTH by default
    test = load_split(tmp_path / "c", manifest, "test")
    assert sorted(test.ids) == sorted(f"test/{c}_{i}.jpg" for c in FOOD_CLASSES for i in range(2))
    row = test.ids.index("test/pizza_1.jpg")
    assert manifest.classes[test.labels[row]] == "pizza"
    assert np.array_equal(test.inputs["image"][row], read_image(food_raw / "images/test/pizza/pizza_1.jpg", 64))
    vocab = (tmp_path / "c" / "tokenizers" / "text" / "vocab.txt").read_text().split()
    ids, mask = test.inputs["text"][row]
    words = [vocab[i] for i, m in zip(ids, mask) if m]
    assert words[:4] == ["best", "pizza", "cheese", "tomato"] and mask.sum() == len(words)
    train_ids = set(load_split(tmp_path / "c", manifest, "train").ids) | set(load_split(tmp_path / "c", manifest,
                                                                                          "val").ids)
    assert len(train_ids) == 18 and not train_ids & set(test.ids)
    # the same command again: nothing to do; other parameters: refused without --overwrite
    code, out, _ = run_cli(capsys, "prepare", "food101", "--raw", food_raw, "--out", tmp_path / "c", "--preset", "px64")
    assert code == 0 and "nothing to do" in out
    code, out, err = run_cli(capsys, "prepare", "food101", "--raw", food_raw, "--out", tmp_path / "c", "--preset",
                             "px64", "--max-length", "20")
    assert code == 2 and "--overwrite" in out + err
    code, out, err = run_cli(capsys, "prepare", "food101", "--raw", food_raw, "--out", tmp_path / "s", "--strict")
    assert code == 2 and "67,988" in out + err and not (tmp_path / "s" / "manifest.json").exists()


def test_food101_bad_files_and_rows_are_skipped_and_reported(tmp_path, food_raw, monkeypatch):
    raw = tmp_path / "raw"
    shutil.copytree(food_raw, raw)
    (raw / "images/train/sushi/sushi_0.jpg").write_bytes(b"")  # empty
    (raw / "images/train/sushi/sushi_1.jpg").write_bytes(b"not a jpeg at all")  # corrupt
    whole = (raw / "images/train/pizza/pizza_0.jpg").read_bytes()
    (raw / "images/train/pizza/pizza_0.jpg").write_bytes(whole[:len(whole) // 3])  # truncated
    (raw / "images/train/pizza/pizza_1.jpg").unlink()  # its row names a missing image
    write_jpeg(raw / "images/train/pizza/pizza_9.jpg", (1, 2, 3), 9)  # an image no row names
    with open(raw / "texts/train_titles.csv", "a", encoding="utf-8") as fh:
        fh.write('apple_pie_7.jpg,"  ",apple_pie\n')  # empty text
        fh.write("apple_pie_8.jpg,some text,apple_crumble\n")  # unknown class
        fh.write("apple_pie_2.jpg,again,apple_pie\n")  # a second row for one image
        fh.write("../../pizza/pizza_2.jpg,a path,pizza\n")  # not a file name of its class folder
    write_jpeg(raw / "images/train/apple_pie/apple_pie_7.jpg", (1, 2, 3), 7)
    lines: list[str] = []
    manifest = food101.prepare(raw, tmp_path / "c", preset="px64", log=lines.append)
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    assert reasons["sushi_0.jpg"] == "empty image file (0 bytes)"
    assert reasons["sushi_1.jpg"].startswith("corrupt image")
    assert reasons["pizza_0.jpg"].startswith("corrupt image")  # truncated JPEG data
    assert reasons["train_titles.csv line 8"] == "missing image images/train/pizza/pizza_1.jpg"
    assert reasons["pizza_9.jpg"] == "no row in texts/train_titles.csv"
    assert reasons["train_titles.csv line 19"] == "empty text"
    assert reasons["train_titles.csv line 20"] == "unknown class 'apple_crumble'"
    assert reasons["train_titles.csv line 21"] == "a second row for apple_pie_2.jpg"
    assert reasons["train_titles.csv line 22"] == "'../../pizza/pizza_2.jpg' is not an image file name"
    assert len(manifest.skipped) == 9 and sum(manifest.splits.values()) == 24 - 4
    for image in (raw / "images/train/sushi").iterdir():  # sushi left in test only: it cannot be learnt
        image.unlink()
    manifest = food101.prepare(raw, tmp_path / "c2", preset="px64")
    assert any("class(es) sushi have pairs in val/test but none in train" in w for w in manifest.warnings)
    monkeypatch.setattr(food101, "EXPECTED", {"train": 22, "test": 6})  # the rows the CSVs have: no count problem
    with pytest.raises(UserError, match="sushi have pairs in val/test but none in train: .*--strict"):
        food101.prepare(raw, tmp_path / "c3", preset="px64", strict=True)
    assert any(line.startswith("skipped ") and "sushi_1.jpg" in line for line in lines)


def test_an_interrupted_preparation_resumes_and_git_lfs_pointers_are_named(tmp_path, food_raw, monkeypatch):
    from data_prep import imagetext

    real, calls = imagetext.decode_image, []

    def die_after_five(item):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(item.key)
        return real(item)

    monkeypatch.setattr(imagetext, "decode_image", die_after_five)
    with pytest.raises(KeyboardInterrupt):
        food101.prepare(food_raw, tmp_path / "c", preset="px64")
    monkeypatch.setattr(imagetext, "decode_image", real)
    log: list[str] = []
    manifest = food101.prepare(food_raw, tmp_path / "c", preset="px64", log=log.append)
    assert any("resuming: 5 images already done" in line for line in log) and sum(manifest.splits.values()) == 24
    raw = tmp_path / "lfs"
    shutil.copytree(food_raw, raw)
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n"
    (raw / "texts/test_titles.csv").write_text(pointer)
    with pytest.raises(UserError, match="test_titles.csv is a Git LFS pointer"):
        food101.prepare(raw, tmp_path / "d")
    (raw / "texts/test_titles.csv").write_bytes((food_raw / "texts/test_titles.csv").read_bytes())
    for image in raw.glob("images/*/*/*.jpg"):
        image.write_text(pointer)
    with pytest.raises(UserError, match="every food101 image under --raw .* is a Git LFS pointer"):
        food101.prepare(raw, tmp_path / "d")


def test_cggms_json_form_is_read_with_its_joined_tokens(tmp_path, food_raw):
    raw = tmp_path / "cggm"
    for split, n in (("train", 6), ("test", 2)):
        records = [{"id": f"{cls}_{i}", "text_tokens": ["best", cls.replace("_", " "), "recipe"],
                    "img_path": f"images/{split}/{cls}/{cls}_{i}.jpg", "label": cls}
                   for cls in FOOD_CLASSES for i in range(n)]
        records.append({"id": "x", "text_tokens": ["a"], "img_path": "../../etc/passwd", "label": "pizza"})
        (raw / f"{split}.json").parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{split}.json").write_text(json.dumps(records))
    shutil.copytree(food_raw / "images", raw / "images")
    manifest = food101.prepare(raw, tmp_path / "c", preset="px64", max_length=6)
    assert manifest.splits == {"train": 15, "val": 3, "test": 6} and manifest.params["layout"].startswith("CGGM")
    assert "count_check" not in manifest.sources  # CGGM states no count for its form
    assert [s["reason"] for s in manifest.skipped] == [f"img_path '../../etc/passwd' leads out of {raw}"] * 2
    test = load_split(tmp_path / "c", manifest, "test")
    vocab = (tmp_path / "c" / "tokenizers" / "text" / "vocab.txt").read_text().split()
    row = test.ids.index("test/sushi_0")
    assert [vocab[i] for i in test.inputs["text"][row][0][:3]] == ["best", "sushi", "recipe"]
    (raw / "test.json").write_text(json.dumps([{"id": 1, "text": "x", "image": "a.jpg", "label": "sushi"}]))
    with pytest.raises(UserError, match="expected a list of records with id, text_tokens, img_path, label"):
        food101.prepare(raw, tmp_path / "d")


def test_unfamiliar_food101_layouts_are_one_error_each(tmp_path, food_raw, capsys):
    two_columns = tmp_path / "two"
    shutil.copytree(food_raw, two_columns)
    (two_columns / "texts/test_titles.csv").write_text("apple_pie_0.jpg,apple_pie\npizza_0.jpg,pizza\n")
    no_texts = tmp_path / "notexts"
    shutil.copytree(food_raw / "images", no_texts / "images")
    eth = tmp_path / "eth" / "food-101"
    write_jpeg(eth / "images/pizza/1001.jpg", (9, 9, 9), 0)
    (eth / "meta").mkdir()
    (eth / "meta/classes.txt").write_text("pizza\n")
    cases = {two_columns: "has 2 column(s)", no_texts: "lacks texts/train_titles.csv, texts/test_titles.csv",
             eth: "is ETH Food-101", tmp_path / "empty": "no UPMC Food-101 under"}
    (tmp_path / "empty").mkdir()
    for raw, message in cases.items():
        code, out, err = run_cli(capsys, "prepare", "food101", "--raw", raw, "--out", tmp_path / "out")
        assert code == 2 and message in " ".join((out + err).split()), (raw, out + err)
        assert not (tmp_path / "out").exists()
    proc = run_bogc("prepare", "food101", "--raw", no_texts, "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 2 and "texts/train_titles.csv" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ MVSA-Single


def test_the_label_cleaning_rule_by_hand():
    table = {(t, i): clean_label(t, i) for t in LABELS for i in LABELS}
    assert table == {("positive", "positive"): "positive", ("neutral", "neutral"): "neutral",
                     ("negative", "negative"): "negative", ("positive", "neutral"): "positive",
                     ("neutral", "positive"): "positive", ("negative", "neutral"): "negative",
                     ("neutral", "negative"): "negative", ("positive", "negative"): None,
                     ("negative", "positive"): None}


def test_mvsa_cleans_splits_8_1_1_and_reports_bad_files(tmp_path, capsys):
    pairs = ([("positive", "positive")] * 10 + [("neutral", "positive")] * 10 + [("neutral", "neutral")] * 10
             + [("negative", "neutral")] * 10 + [("positive", "negative"), ("negative", "positive")] * 3)
    raw = mvsa_tree(tmp_path / "MVSA" / "MVSA_Single", pairs)
    (raw / "data/1.txt").write_text("   \n")  # empty text
    (raw / "data/2.txt").write_bytes("caf\xe9 au lait, great".encode("latin-1"))  # not UTF-8: read as Latin-1
    (raw / "data/3.jpg").write_bytes(b"\xff\xd8 broken")  # corrupt image
    with open(raw / "labelResultAll.txt", "a") as fh:
        fh.write("99\tpositive,happy\n")  # an unknown label
        fh.write("../1\tpositive,positive\n")  # not a tweet id
    code, out, err = run_cli(capsys, "prepare", "mvsa_single", "--raw", tmp_path / "MVSA", "--out", tmp_path / "c",
                             "--preset", "px64", "--seed", "3")
    assert code == 0, out + err
    assert "not the published positive 2,683 / neutral 470 / negative 1,358" in " ".join(out.split())
    manifest = read_manifest(tmp_path / "c")
    assert manifest.classes == list(LABELS)
    assert manifest.sources["after_cleaning"] == {"positive": 20, "neutral": 10, "negative": 10}
    assert manifest.sources["dropped_conflicts"] == 6 and manifest.sources["label_lines"] == 48
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    assert reasons["1.txt"] == "empty text" and reasons["3.jpg"].startswith("corrupt image")
    skipped_names = {Path(s["file"]).name for s in manifest.skipped}
    assert {"labelResultAll.txt line 48", "labelResultAll.txt line 49"} <= skipped_names
    # 40 cleaned pairs, 39 with text: 10% test (4), then 1/9 of the rest (4) for validation: 8:1:1; one image lost
    assert sum(manifest.splits.values()) == 38 and manifest.splits["test"] == 4 and manifest.splits["val"] == 4
    splits = {s: load_split(tmp_path / "c", manifest, s) for s in manifest.splits}
    ids = {s: set(a.ids) for s, a in splits.items()}
    assert not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    vocab = (tmp_path / "c" / "tokenizers" / "text" / "vocab.txt").read_text().split()
    where = next(s for s, a in splits.items() if "2" in a.ids)
    text = splits[where].inputs["text"][splits[where].ids.index("2")]
    assert [vocab[i] for i in text[0][:2]] == ["café", "au"]
    # the shipped from-scratch recipe (word vocabulary, no pretrained model) trains one epoch on the cache
    code, out, err = run_cli(capsys, "train", Path(__file__).resolve().parents[1] / "recipes/mvsa_single/joint-scratch.yaml",
                             "--seeds", "0", "--out", tmp_path / "res", "--set", f"dataset.root={tmp_path / 'c'}",
                             "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "model.hidden_dim=16",
                             "--set", "model.feature_dim=16", "--set", "model.cnn_channels=[4]")
    assert code == 0, out + err
    result = json.loads(next((tmp_path / "res").rglob("joint/seed0/eval.json")).read_text())
    assert result["n"] == 4 and 0 <= result["accuracy"] <= 1  # the whole test split, evaluated
    # the split is seeded: the same seed gives the same test ids, another seed other ones
    again = mvsa_single.prepare(tmp_path / "MVSA", tmp_path / "again", preset="px64", seed=3)
    assert set(load_split(tmp_path / "again", again, "test").ids) == ids["test"]
    other = mvsa_single.prepare(tmp_path / "MVSA", tmp_path / "other", preset="px64", seed=4)
    assert set(load_split(tmp_path / "other", other, "test").ids) != ids["test"]


def test_clmlfs_split_files_decide_the_split_when_given(tmp_path, monkeypatch):
    pairs = [("positive", "positive")] * 6 + [("neutral", "neutral")] * 4 + [("negative", "negative")] * 4
    raw = mvsa_tree(tmp_path / "MVSA_Single", pairs)
    label = {"positive": 0, "neutral": 1, "negative": 2}  # CLMLF's emotion_label
    cleaned = {str(i): label[t] for i, (t, _) in enumerate(pairs, start=1)}
    chosen = {"train.json": ["1", "2", "3", "4", "7", "8", "11", "12"], "dev.json": ["5", "9", "13"],
              "test.json": ["6", "10"]}  # tweet 14 is in none
    (raw / "10-flod-1").mkdir()
    for name, ids in chosen.items():
        records = [{"id": i, "text": "...", "emotion_label": cleaned[i] if i != "2" else 2} for i in ids]
        (raw / "10-flod-1" / name).write_text(json.dumps(records))
    manifest = mvsa_single.prepare(raw, tmp_path / "c", preset="px64")
    got = {s: sorted(load_split(tmp_path / "c", manifest, s).ids, key=int) for s in ("train", "val", "test")}
    assert got == {"train": chosen["train.json"], "val": chosen["dev.json"], "test": chosen["test.json"]}
    assert any("not in CLMLF's split files" in s["reason"] and s["file"].endswith("14.txt") for s in manifest.skipped)
    assert manifest.sources["clmlf_split"]["label_differs"] == 1 and any("(2)" in w for w in manifest.warnings)
    monkeypatch.setattr(mvsa_single, "EXPECTED", {"positive": 6, "neutral": 4, "negative": 4})  # --strict: the label
    with pytest.raises(UserError, match="another label in CLMLF's split files"):
        mvsa_single.prepare(raw, tmp_path / "strict", preset="px64", strict=True, overwrite=True)
    (raw / "10-flod-1" / "dev.json").unlink()
    with pytest.raises(UserError, match="has CLMLF's split files but not dev.json"):
        mvsa_single.prepare(raw, tmp_path / "d", preset="px64")


def test_unfamiliar_mvsa_layouts_are_one_error_each(tmp_path, capsys):
    multiple = mvsa_tree(tmp_path / "multiple", [("positive", "positive")] * 3)
    (multiple / "labelResultAll.txt").write_text("ID\ttext,image\ttext,image\ttext,image\n"
                                                 "1\tpositive,positive\tneutral,positive\tpositive,neutral\n")
    no_data = tmp_path / "nodata"
    no_data.mkdir()
    (no_data / "labelResultAll.txt").write_text("ID\ttext,image\n1\tpositive,positive\n")
    cases = {multiple: "MVSA-Multiple", no_data: "no data/ folder", tmp_path / "empty": "no labelResultAll.txt"}
    (tmp_path / "empty").mkdir()
    for raw, message in cases.items():
        code, out, err = run_cli(capsys, "prepare", "mvsa_single", "--raw", raw, "--out", tmp_path / "out")
        assert code == 2 and message in " ".join((out + err).split()), (raw, out + err)
    code, out, err = run_cli(capsys, "prepare", "mvsa_single", "--raw", no_data, "--out", tmp_path / "o2", "--kinds",
                             "image=video")
    assert code == 2 and "--kinds is for" in out + err


# ------------------------------------------------------------------ training


def test_a_tiny_bert_tokenises_food101_and_trains_one_epoch(tmp_path, food_raw, capsys):
    pytest.importorskip("transformers")  # the optional extra `pretrained` (in `dev`, so CI runs this)
    bert = tiny_bert(tmp_path / "bert")
    code, out, err = run_cli(capsys, "prepare", "food101", "--raw", food_raw, "--out", tmp_path / "c", "--preset",
                             "px64", "--tokenizer", bert, "--max-length", "16")
    assert code == 0, out + err
    spec = read_manifest(tmp_path / "c").modalities["text"]
    assert spec.tokenizer["kind"] == "pretrained" and spec.shape == [2, 16]
    text = np.load(tmp_path / "c" / "train" / "text.npy")
    assert (text[:, 0, 0] == 2).all()  # [CLS] starts every text
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"experiment: food\ndataset: {{name: food101, root: {tmp_path / 'c'}}}\n"
                      f"model: {{feature_dim: 16, hidden_dim: 32, mlp_layers: 1, cnn_channels: [4], encoders: "
                      f"{{text: {{name: hf, path: {bert}, freeze: true}}, image: cnn-small}}}}\n"
                      f"method: {{name: joint}}\ntrain: {{epochs: 1, batch_size: 8}}\n"
                      f"output: {{dir: {tmp_path / 'out'}}}\n")
    code, out, err = run_cli(capsys, "train", recipe)
    assert code == 0, out + err
    run = next((tmp_path / "out").rglob("eval.json")).parent
    result = json.loads((run / "eval.json").read_text())
    assert result["split"] == "test" and result["n"] == 6  # the whole test split
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "conflict.cos.text" not in record and math.isfinite(record["conflict.cos.image"])  # BERT is frozen
    trained = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    state = __import__("transformers").AutoModel.from_pretrained(bert).state_dict()
    assert all(torch.equal(trained["encoders.text.backbone." + k], v) for k, v in state.items())
    assert json.loads((run / "environment.json").read_text())["encoders"]["text"]["family"] == "transformers"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["food101", "mvsa_single"])
def test_the_shipped_pretrained_recipes_train_with_tiny_bert_and_vit(tmp_path, food_raw, capsys, dataset):
    """recipes/<dataset>/{cggm,bogc}.yaml as shipped (hf BERT + ViT, freeze, pooling cls, ViT input not normalised),
    on tiny models in the folders they name and a tiny cache; only sizes and epochs are overridden."""
    transformers = pytest.importorskip("transformers")
    models = tmp_path / "models"
    tiny_bert(models / "bert-base-uncased", layers=3)
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                                 intermediate_size=32, image_size=64, patch_size=16)
                          ).save_pretrained(models / "vit-base-patch16-224")
    raw = food_raw if dataset == "food101" else mvsa_tree(tmp_path / "mvsa", [(lb, lb) for lb in LABELS] * 8)
    code, out, err = run_cli(capsys, "prepare", dataset, "--raw", raw, "--out", tmp_path / "data" / dataset,
                             "--preset", "px64", "--tokenizer", models / "bert-base-uncased", "--max-length", "32")
    assert code == 0, out + err
    for method in ("cggm", "bogc") if dataset == "food101" else ("bogc",):
        recipe = Path(__file__).resolve().parents[1] / "recipes" / dataset / f"{method}.yaml"
        code, out, err = run_cli(capsys, "train", recipe, "--seeds", "0", "--out", tmp_path / "res", "--set",
                                 f"dataset.root={tmp_path / 'data' / dataset}", "--set", "train.epochs=1",
                                 "--set", "train.batch_size=8", "--set", "model.encoders.text.freeze=2",
                                 "--set", "model.encoders.image.freeze=2",
                                 "--set", f"model.encoders.text.path={models / 'bert-base-uncased'}",
                                 "--set", f"model.encoders.image.path={models / 'vit-base-patch16-224'}")
        assert code == 0, out + err
        run = next((tmp_path / "res").rglob(f"{method}/seed0/eval.json")).parent
        env = json.loads((run / "environment.json").read_text())["encoders"]
        assert env["text"]["family"] == env["image"]["family"] == "transformers"
