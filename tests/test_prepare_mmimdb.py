"""MM-IMDb preparation from a small tree in the official layout (split.json, dataset/<id>.jpeg + <id>.json)
written by the test: multi-hot labels over the authors' 23 genres, the longest plot, posters resized and
centre-cropped, bad files skipped and reported, other layouts refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bogc_cli.data.cache import load_split, read_manifest
from cli_helpers import run_bogc, run_cli
from data_prep.mmimdb import GENRES

ROOT = Path(__file__).resolve().parents[1]

# id -> (genres, plots); train 6, dev 2, test 3 in split.json
MOVIES = {
    "0000001": (["Drama", "Romance"], ["A short plot.", "A much longer plot about love and loss in Paris."]),
    "0000002": (["Comedy"], ["Two friends rob a bank by mistake."]),
    "0000003": (["Action", "Sci-Fi", "News"], ["Robots fight.", "Robots fight for the city."]),
    "0000004": (["Horror", "Thriller"], ["A house that eats its guests."]),
    "0000005": (["Documentary"], ["Penguins walk across the ice."]),
    "0000006": (["Drama"], ["A family farm in a dry year."]),
    "0000007": (["Comedy", "Family"], ["A dog runs for mayor."]),
    "0000008": (["Western"], ["A stranger rides into town."]),
    "0000009": (["Crime", "Drama"], ["A detective hunts a thief."]),
    "0000010": (["Animation", "Adventure"], ["A fox sails to the moon."]),
    "0000011": (["Music"], ["A band tours small towns."]),
}
SPLIT = {"train": ["0000001", "0000002", "0000003", "0000004", "0000005", "0000006"],
         "dev": ["0000007", "0000008"], "test": ["0000009", "0000010", "0000011"]}


def _write_tree(root: Path) -> Path:
    """The official layout, posters of 60 x 90 px (portrait, like real posters) in distinct colours."""
    data = root / "mmimdb"
    (data / "dataset").mkdir(parents=True)
    for k, (movie, (genres, plots)) in enumerate(MOVIES.items()):
        pixels = np.zeros((90, 60, 3), np.uint8)
        pixels[:, :, 0] = 20 * k
        pixels[:45, :, 1] = 200  # top half differs from the bottom: the centre crop is checked below
        Image.fromarray(pixels).save(data / "dataset" / f"{movie}.jpeg", quality=95)
        (data / "dataset" / f"{movie}.json").write_text(json.dumps({"title": f"movie {k}", "genres": genres,
                                                                    "plot": plots}))
    (data / "split.json").write_text(json.dumps(SPLIT))
    return data


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("mmimdb_raw"))


def test_cache_labels_text_image_and_counts_warning(capsys, tmp_path, raw):
    code, out, err = run_cli(capsys, "prepare", "mmimdb", "--raw", raw.parent, "--out", tmp_path / "c")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.task == "multilabel" and manifest.classes == GENRES and len(GENRES) == 23
    assert manifest.splits == {"train": 6, "val": 2, "test": 3}
    assert {m: (s.kind, s.shape, s.dtype) for m, s in manifest.modalities.items()} == {
        "image": ("image", [3, 224, 224], "uint8"), "text": ("text", [2, 128], "int32")}
    flat = " ".join(out.split())  # the console wraps lines
    assert "not the published 15,552 / 2,608 / 7,799" in flat
    assert "Crime, Adventure, Family, Music, Animation, Western have movies in val/test but none in train" in flat
    assert len(manifest.warnings) == 1
    train = load_split(tmp_path / "c", manifest, "train")
    assert train.ids == SPLIT["train"]
    expected = np.zeros((6, 23), np.uint8)
    for row, movie in enumerate(SPLIT["train"]):
        for genre in MOVIES[movie][0]:
            if genre in GENRES:
                expected[row, GENRES.index(genre)] = 1
    np.testing.assert_array_equal(train.labels, expected)
    assert expected[2].sum() == 2  # Action, Sci-Fi; News is not one of the 23 genres
    assert manifest.params["genres_not_kept"] == {"News": 1}
    assert manifest.class_counts["train"]["Drama"] == 2
    # the longest plot is the one tokenised: the word vocabulary (train only) has its words
    vocab = (tmp_path / "c" / "tokenizers" / "text" / "vocab.txt").read_text().split()
    assert "paris" in vocab and "penguins" in vocab and "fox" not in vocab  # fox is a test word
    text = np.asarray(train.inputs["text"])
    assert text[0, 1].sum() == len("a much longer plot about love and loss in paris .".split())
    # posters: 60 x 90 -> shorter side 256 (256 x 384) -> centre 224 x 224, which cuts across both halves
    image = np.asarray(train.inputs["image"])
    assert image[0, 1, 5, 112] > 150 and image[0, 1, 218, 112] < 50
    assert abs(int(image[3, 0, 210, 112]) - 60) <= 6  # movie 4 has red 60 (JPEG-rounded)


def test_same_inputs_nothing_to_do_other_refused(capsys, tmp_path, raw):
    from data_prep.mmimdb import prepare

    prepare(raw, tmp_path / "c")
    messages = []
    prepare(raw, tmp_path / "c", log=messages.append)
    assert any("nothing to do" in m for m in messages)
    code, _, err = run_cli(capsys, "prepare", "mmimdb", "--raw", raw, "--out", tmp_path / "c", "--max-length", "16")
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli(capsys, "prepare", "mmimdb", "--raw", raw, "--out", tmp_path / "v", "--val-fraction", "0.2")
    assert code == 2 and "official validation split" in err and not (tmp_path / "v").exists()


def test_bad_files_skipped_and_reported_strict_refuses(capsys, tmp_path):
    data = _write_tree(tmp_path / "raw")
    (data / "dataset" / "0000002.jpeg").unlink()  # missing poster
    (data / "dataset" / "0000004.jpeg").write_bytes(b"\xff\xd8\xff not a jpeg")  # corrupt poster
    (data / "dataset" / "0000005.json").write_text("{ broken")  # unreadable json
    (data / "dataset" / "0000006.json").write_text(json.dumps({"genres": ["Drama"], "plot": [""]}))  # no plot
    code, out, err = run_cli(capsys, "prepare", "mmimdb", "--raw", data, "--out", tmp_path / "c")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    assert manifest.splits["train"] == 2
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest.skipped}
    assert set(reasons) == {"0000002.jpeg", "0000004.jpeg", "0000005.json", "0000006.json"}
    assert "missing poster" in reasons["0000002.jpeg"] and "corrupt poster" in reasons["0000004.jpeg"]
    assert "unreadable json" in reasons["0000005.json"] and "no plot" in reasons["0000006.json"]
    assert "0000004.jpeg" in out and "skipped 4 file(s)" in " ".join(out.split())
    assert load_split(tmp_path / "c", manifest, "train").ids == ["0000001", "0000003"]
    code, _, err = run_cli(capsys, "prepare", "mmimdb", "--raw", data, "--out", tmp_path / "s", "--strict",
                           "--overwrite")
    assert code == 2 and "15,552" in " ".join(err.split()) and "--strict" in err
    assert not (tmp_path / "s" / "manifest.json").exists()


@pytest.mark.parametrize("variant", ["no_split", "jsonl", "bad_split", "no_dev", "twice"])
def test_wrong_layouts_exit_2(capsys, tmp_path, variant):
    data = _write_tree(tmp_path / "raw")
    expect = {"no_split": "no split.json", "jsonl": "MMBT", "bad_split": "not readable JSON",
              "no_dev": "'dev' id list", "twice": "listed in both"}[variant]
    if variant == "no_split":
        (data / "split.json").unlink()
    elif variant == "jsonl":
        (data / "split.json").unlink()
        (data / "train.jsonl").write_text("{}\n")
    elif variant == "bad_split":
        (data / "split.json").write_text("[1, 2")
    elif variant == "no_dev":
        (data / "split.json").write_text(json.dumps({"train": SPLIT["train"], "test": SPLIT["test"]}))
    else:
        (data / "split.json").write_text(json.dumps({**SPLIT, "test": SPLIT["test"] + ["0000001"]}))
    code, out, err = run_cli(capsys, "prepare", "mmimdb", "--raw", tmp_path / "raw", "--out", tmp_path / "c")
    assert code == 2 and expect in " ".join(err.split()), out + err
    assert not (tmp_path / "c").exists()


def test_wrong_layout_through_the_real_entry_point(tmp_path):
    data = _write_tree(tmp_path / "raw")
    (data / "split.json").unlink()
    proc = run_bogc("prepare", "mmimdb", "--raw", tmp_path / "raw", "--out", tmp_path / "c", timeout=300)
    assert proc.returncode == 2 and "no split.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


def test_a_local_tokenizer_tokenises_the_longest_plot(capsys, tmp_path, raw):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tok"
    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "much", "longer", "plot", "about", "love", "paris", "."]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    code, out, err = run_cli(capsys, "prepare", "mmimdb", "--raw", raw, "--out", tmp_path / "c", "--tokenizer", folder,
                             "--max-length", "12")
    assert code == 0, out + err
    manifest = read_manifest(tmp_path / "c")
    spec = manifest.modalities["text"]
    assert spec.shape == [2, 12] and spec.tokenizer["kind"] == "pretrained"
    text = np.asarray(load_split(tmp_path / "c", manifest, "train").inputs["text"])
    reference = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(
        MOVIES["0000001"][1][1], max_length=12, padding="max_length", truncation=True)
    assert text[0, 0].tolist() == reference["input_ids"] and text[0, 1].tolist() == reference["attention_mask"]


def test_an_interrupted_prepare_resumes(tmp_path, raw, monkeypatch):
    import data_prep.mmimdb as mmimdb

    real, calls = mmimdb.decode_poster, []

    def stopped_at_the_fifth(item):
        calls.append(item.key)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(item)

    monkeypatch.setattr(mmimdb, "decode_poster", stopped_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        mmimdb.prepare(raw, tmp_path / "c")
    assert not (tmp_path / "c" / "manifest.json").exists()
    monkeypatch.setattr(mmimdb, "decode_poster", real)
    messages = []
    manifest = mmimdb.prepare(raw, tmp_path / "c", log=messages.append)
    assert any("resuming: 4 posters already done" in m for m in messages)
    assert manifest.splits == {"train": 6, "val": 2, "test": 3}
    fresh = mmimdb.prepare(raw, tmp_path / "fresh")
    for split in manifest.splits:
        np.testing.assert_array_equal(load_split(tmp_path / "c", manifest, split).inputs["image"],
                                      load_split(tmp_path / "fresh", fresh, split).inputs["image"])


def test_one_epoch_of_bogc_on_the_prepared_cache(capsys, tmp_path, raw):
    """The recipe as shipped (tiny encoders, one epoch): BCE per genre, selection on validation micro-F1."""
    from data_prep.mmimdb import prepare

    prepare(raw, tmp_path / "c", max_length=16)
    code, out, err = run_cli(capsys, "train", ROOT / "recipes/mmimdb/bogc.yaml", "--seeds", "0", "--out", tmp_path / "r",
                             "--set", f"dataset.root={tmp_path / 'c'}", "--set", "train.epochs=1",
                             "--set", "train.batch_size=4", "--set", "model.encoders.image=cnn-small",
                             "--set", "model.cnn_channels=[4, 8]", "--set", "model.feature_dim=16",
                             "--set", "model.hidden_dim=32", "--set", "model.mlp_layers=1")
    assert code == 0, out + err
    ev = json.loads((tmp_path / "r/mmimdb/mmimdb/bogc/seed0/eval.json").read_text())
    assert ev["task"] == "multilabel" and ev["select_metric"] == "micro_f1" and ev["n"] == 3
    assert 0 <= ev["micro_f1"] <= 1 and set(ev["unimodal_micro_f1"]) == {"image", "text"}
