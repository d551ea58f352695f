"""CREMA-D preparation on the genuine clips in ../shared/data/crema_d_mini (6 flv with all six emotions,
12 wav of which 6 have no video)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from PIL import Image

from bogc_cli.data.cache import load_split, read_manifest
from cli_helpers import run_cli
from data_prep import avclips, cremad
from data_prep.clipstore import JOURNAL, STAGING

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


@pytest.fixture(scope="module")
def mini(shared_data) -> Path:
    return shared_data / "crema_d_mini"


@pytest.fixture(scope="module")
def ogmge(tmp_path_factory, mini) -> Path:
    out = tmp_path_factory.mktemp("cremad") / "ogmge"
    cremad.prepare(mini, out, preset="ogmge")
    return out


def _rows(cache: Path) -> dict[str, tuple[str, int, int]]:
    """clip id -> (split, row, label) over every split of a cache."""
    manifest = read_manifest(cache)
    rows = {}
    for split in manifest.splits:
        data = load_split(cache, manifest, split)
        for row, (clip_id, label) in enumerate(zip(data.ids, data.labels)):
            rows[clip_id] = (split, row, int(label))
    return rows


def test_ogmge_preset_shapes_labels_and_standard_test_split(ogmge):
    manifest = read_manifest(ogmge)
    assert manifest.classes == CLASSES
    assert manifest.preset == "ogmge"
    assert (manifest.modalities["audio"].kind, manifest.modalities["audio"].shape,
            manifest.modalities["audio"].dtype) == ("audio", [1, 257, 188], "float16")
    assert (manifest.modalities["visual"].kind, manifest.modalities["visual"].shape,
            manifest.modalities["visual"].dtype) == ("video", [3, 3, 224, 224], "uint8")
    rows = _rows(ogmge)
    assert sorted(rows) == [f"1001_DFA_{e}_XX" for e in sorted(CLASSES)]
    for clip_id, (split, _, label) in rows.items():
        assert CLASSES[label] == clip_id.split("_")[2]
    # 1001_DFA_HAP_XX and 1001_DFA_SAD_XX are in the standard 744-clip test list; the rest is train (+ val)
    assert sorted(c for c, (s, _, _) in rows.items() if s == "test") == ["1001_DFA_HAP_XX", "1001_DFA_SAD_XX"]
    # each of the 4 train emotions has a single clip: a carve-out would take a class's only training sample,
    # so there is no val split, and the manifest says why
    assert manifest.splits["train"] == 4 and "val" not in manifest.splits
    assert any("no validation sample could be carved" in w for w in manifest.warnings)
    assert manifest.params["sample_rate"] == 22050 and manifest.params["hop"] == 353
    assert manifest.sources["audio_from"] == {"AudioWAV": 6, "video track": 0}


def test_the_shipped_test_list_is_the_standard_744_clips():
    ids = cremad.read_test_ids()
    assert len(ids) == 744
    assert all(cremad._ID.match(i) for i in ids)
    counts = {c: sum(i.split("_")[2] == c for i in ids) for c in CLASSES}
    assert min(counts.values()) > 50  # every emotion is tested


def test_wavs_without_video_are_skipped_and_reported(ogmge, reliability):
    skipped = read_manifest(ogmge).skipped
    reliability("unusable media files given to prepare (skipped with a reason, the rest written)", len(skipped))
    assert sorted(Path(s["file"]).name for s in skipped) == sorted(
        f"1002_DFA_{e}_XX.{ext}" for e in CLASSES for ext in ("mp3", "wav"))  # AudioMP3/ and AudioWAV/, no video
    assert all("no video" in s["reason"] for s in skipped)


def test_a_cached_frame_equals_the_frame_decoded_independently(ogmge, mini):
    """Frame 2 of a clip is the one in the middle of second 1: decode the flv with PyAV and compare."""
    split, row, _ = _rows(ogmge)["1001_DFA_ANG_XX"]
    cached = np.load(ogmge / split / "visual.npy", mmap_mode="r")[row]
    with av.open(str(mini / "VideoFlash" / "1001_DFA_ANG_XX.flv")) as container:
        fps = float(container.streams.video[0].average_rate)
        frames = list(container.decode(video=0))
    def resized(frame) -> np.ndarray:
        return np.asarray(frame.to_image().convert("RGB").resize((224, 224), Image.BILINEAR)).transpose(2, 0, 1)

    assert len(frames) / fps < 2.5  # the clip ends before the middle of second 2
    for k, second in enumerate((0, 1)):
        np.testing.assert_array_equal(cached[k], resized(frames[round((second + 0.5) * fps)]))
    # the third frame wraps into the clip's last second instead of failing or repeating the first
    last_second = [resized(f) for f in frames[-int(np.ceil(fps)):]]
    assert any(np.array_equal(cached[2], f) for f in last_second)
    assert not np.array_equal(cached[0], cached[2])


def test_cached_spectrogram_matches_the_ogmge_recipe(ogmge, mini):
    """Recompute OGM-GE's audio from the wav: resample to 22,050 Hz, tile to 3 s, clip, log |STFT| (512, 353)."""
    split, row, _ = _rows(ogmge)["1001_DFA_DIS_XX"]
    cached = np.load(ogmge / split / "audio.npy", mmap_mode="r")[row].astype(np.float32)
    wave, rate = sf.read(str(mini / "AudioWAV" / "1001_DFA_DIS_XX.wav"), dtype="float32")
    wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, 22050)
    tiled = wave.repeat(3)[:66150].clamp(-1, 1)
    spec = torch.stft(tiled, 512, 353, window=torch.hann_window(512), return_complex=True).abs()
    expected = torch.log(spec + 1e-7).numpy()
    np.testing.assert_allclose(cached[0], expected, atol=2e-2, rtol=2e-3)  # float16 storage
    # the 2.27 s clip is tiled: the frames one clip-length apart repeat
    period = wave.shape[0] / 353
    assert period < 188


def test_fbank_preset_through_the_cli(capsys, tmp_path, mini):
    out = tmp_path / "fbank"
    code, stdout, _ = run_cli(capsys, "prepare", "cremad", "--raw", mini, "--out", out, "--preset", "fbank")
    assert code == 0, stdout
    manifest = read_manifest(out)
    assert manifest.modalities["audio"].shape == [1, 128, 300]
    assert manifest.modalities["visual"].shape == [2, 3, 224, 224]
    audio = np.load(out / "test" / "audio.npy").astype(np.float32)
    assert np.isfinite(audio).all() and -3 < audio.mean() < 3  # AST-normalised, not raw log-mel
    assert "wrote 6 clips, skipped 12" in stdout
    assert "not the published 6,698 / 744" in stdout  # the count warning
    assert "per class" in stdout


def test_strict_refuses_a_partial_download(capsys, tmp_path, mini):
    code, out, err = run_cli(capsys, "prepare", "cremad", "--raw", mini, "--out", tmp_path / "c", "--strict")
    assert code == 2
    assert "train 4 / test 2" in err and "6,698 / 744" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_wrong_raw_folder_and_unknown_preset_exit_2(capsys, tmp_path, mini):
    code, _, err = run_cli(capsys, "prepare", "cremad", "--raw", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "VideoFlash" in err
    code, _, err = run_cli(capsys, "prepare", "cremad", "--raw", mini, "--out", tmp_path / "o", "--preset", "x")
    assert code == 2 and "ogmge" in err and "fbank" in err


def test_interrupted_prepare_resumes_without_redoing_finished_clips(tmp_path, mini, monkeypatch):
    out = tmp_path / "cache"
    real_decode = avclips.decode_clip
    calls: list[str] = []

    def decode_then_die(item):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        calls.append(item.key)
        return real_decode(item)

    monkeypatch.setattr(avclips, "decode_clip", decode_then_die)
    with pytest.raises(KeyboardInterrupt):
        cremad.prepare(mini, out)
    assert not (out / "manifest.json").exists()
    journal = (out / STAGING / JOURNAL).read_text().splitlines()
    assert len(journal) == 3

    resumed: list[str] = []

    def counting(item):
        resumed.append(item.key)
        return real_decode(item)

    monkeypatch.setattr(avclips, "decode_clip", counting)
    log: list[str] = []
    manifest = cremad.prepare(mini, out, log=log.append)
    assert len(resumed) == 3 and not set(resumed) & set(calls)
    assert any("resuming: 3 clips already done" in line for line in log)
    assert not (out / STAGING).exists()
    assert sum(manifest.splits.values()) == 6
    # the resumed cache equals one made in one go
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(avclips, "decode_clip", real_decode)
    cremad.prepare(mini, fresh)
    for split in manifest.splits:
        for name in ("audio.npy", "visual.npy", "labels.npy"):
            np.testing.assert_array_equal(np.load(out / split / name), np.load(fresh / split / name))


def test_second_identical_prepare_does_nothing_and_other_params_redo(ogmge, mini):
    log: list[str] = []
    before = (ogmge / "manifest.json").read_text()
    cremad.prepare(mini, ogmge, preset="ogmge", log=log.append)
    assert any("nothing to do" in line for line in log)
    assert (ogmge / "manifest.json").read_text() == before


def test_two_workers_write_the_same_cache_as_one(tmp_path, mini, ogmge):
    out = tmp_path / "two"
    cremad.prepare(mini, out, workers=2)
    assert json.loads((out / "manifest.json").read_text())["splits"] == read_manifest(ogmge).splits
    for split in read_manifest(ogmge).splits:
        for name in ("audio.npy", "visual.npy", "labels.npy", "ids.txt"):
            a, b = out / split / name, ogmge / split / name
            assert a.read_bytes() == b.read_bytes(), f"{split}/{name} differs"


def test_a_short_training_run_on_the_prepared_clips(capsys, tmp_path, ogmge):
    args = ["train", "recipes/cremad/joint.yaml", "--seeds", "0", "--set", "train.epochs=1", "--set",
            "train.batch_size=4", "--set", "model.encoders=cnn-small", "--set", "model.cnn_channels=[8,8,8]"]
    # the mini set has one training clip per emotion: no validation split can be carved, and training says so
    code, _, err = run_cli(capsys, *args, "--set", f"dataset.root={ogmge}", "--out", tmp_path / "r0")
    assert code == 2 and "too few to carve one" in err
    raw = tmp_path / "raw"  # 24 clips named as CREMA-D's, linked to the genuine ones
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from prepare_speed import build_raw

    build_raw(raw, 24)
    cremad.prepare(raw, tmp_path / "cache")
    code, out, err = run_cli(capsys, *args, "--set", f"dataset.root={tmp_path / 'cache'}", "--out", tmp_path / "r")
    assert code == 0, out + err
    evals = list((tmp_path / "r").rglob("eval.json"))
    assert len(evals) == 1 and json.loads(evals[0].read_text())["n"] == read_manifest(tmp_path / "cache").splits["test"]


def test_sigkill_mid_prepare_then_rerun_finishes_and_leaves_no_orphan_workers(tmp_path):
    """A real kill -9 of `bogc prepare --workers 2`: the rerun resumes and equals an uninterrupted cache."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from prepare_speed import build_raw

    raw = tmp_path / "raw"
    build_raw(raw, 150)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bogc_cli", "prepare", "cremad", "--raw", str(raw), "--out", str(out)]
    proc = subprocess.Popen(cmd + ["--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / STAGING / JOURNAL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 8:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "prepare finished before it could be killed"
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    assert workers and not [w for w in workers if Path(f"/proc/{w}").exists() and _parent(w) is not None]
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming:" in rerun.stdout and "wrote 150 clips" in rerun.stdout
    fresh = tmp_path / "fresh"
    cremad.prepare(raw, fresh)
    for split in read_manifest(fresh).splits:
        for name in ("audio.npy", "visual.npy", "labels.npy", "ids.txt"):
            assert (out / split / name).read_bytes() == (fresh / split / name).read_bytes(), f"{split}/{name}"


def _parent(pid: int) -> int | None:
    """The parent pid of a live process (Linux /proc), None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


# ------------------------------------------------------------------------------------------------
# the forms CREMA-D comes in, through the real `bogc` entry point where the CLI is involved

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 414429\n"


def _bogc(*args) -> "subprocess.CompletedProcess":
    """The installed ``bogc`` console script (``python -m bogc_cli`` where it is not on PATH), as a user runs it."""
    import subprocess

    command = [shutil.which("bogc")] if shutil.which("bogc") else [sys.executable, "-m", "bogc_cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_a_clone_without_git_lfs_exits_2_naming_git_lfs_pull(tmp_path, mini, reliability):
    """GitHub's ZIP (or a clone without git-lfs): every flv/wav is a ~130-byte pointer. One message, exit 2,
    no cache; and `train` on an empty cache (as the old prepare wrote one) is one clear error too."""
    raw = tmp_path / "CREMA-D-master"
    for folder in ("VideoFlash", "AudioWAV"):
        (raw / folder).mkdir(parents=True)
        for i, src in enumerate(sorted((mini / folder).iterdir())):
            (raw / folder / src.name).write_text(LFS_POINTER.format(f"{i:064x}"))
    done = _bogc("prepare", "cremad", "--raw", tmp_path, "--out", tmp_path / "out")
    reliability("empty or unusable results refused with exit 2 (never exit 0)")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Git LFS pointer" in done.stderr and "git lfs pull" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    # some pointers among real files: those clips are skipped with the same reason, the rest written
    mixed = tmp_path / "mixed"
    shutil.copytree(mini, mixed, symlinks=True)
    for name in ("1001_DFA_ANG_XX", "1001_DFA_SAD_XX"):
        (mixed / "VideoFlash" / f"{name}.flv").unlink()
        (mixed / "VideoFlash" / f"{name}.flv").write_text(LFS_POINTER.format("0" * 64))
    manifest = cremad.prepare(mixed, tmp_path / "mixed_out")
    lfs = [s for s in manifest.skipped if "Git LFS pointer" in s["reason"]]
    assert sorted(Path(s["file"]).name for s in lfs) == ["1001_DFA_ANG_XX.flv", "1001_DFA_SAD_XX.flv"]


def test_train_on_an_empty_split_is_one_clear_error(tmp_path, reliability):
    """A cache whose train split holds 0 samples (what prepare used to write from LFS pointers)."""
    from bogc_cli.data.cache import SplitArrays, write_cache

    empty = SplitArrays({"x": np.zeros((0, 4), np.float32)}, np.zeros(0, np.int64))
    full = SplitArrays({"x": np.ones((6, 4), np.float32)}, np.arange(6) % 2)
    write_cache(tmp_path / "cache", dataset="arrays", classes=["a", "b"], kinds={"x": "vector"},
                splits={"train": empty, "test": full},
                skipped=[{"file": f"c{i}.flv", "reason": "Git LFS pointer file, not the file's content"}
                         for i in range(3)])
    done = _bogc("train", "recipes/quickstart.yaml", "--set", "dataset.name=arrays", "--set",
                 f"dataset.root={tmp_path / 'cache'}", "--set", "train.epochs=1", "--out", tmp_path / "r")
    reliability("empty or unusable results refused with exit 2 (never exit 0)")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "empty train split" in done.stderr and "3 x Git LFS pointer" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def _linked(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def test_variants_mp3_audio_nested_folders_44k_wav_and_ogmge_frames(tmp_path, mini, ogmge, reliability):
    """The official AudioMP3/ (44.1 kHz) as the only audio, nested re-pack folders, a 44.1 kHz wav, and OGM-GE's
    Image-01-FPS/ frames without videos: each read, giving the same clips as the official layout."""
    ids = sorted(p.stem for p in (mini / "VideoFlash").glob("*.flv"))
    # 1. videos in nested folders, audio from AudioMP3 only (the mini set's mp3s are of actor 1002: renamed to 1001)
    raw = tmp_path / "repack" / "CREMA-D" / "CREMA-D"
    for i, clip in enumerate(ids):
        _linked(mini / "VideoFlash" / f"{clip}.flv", raw / "VideoFlash" / f"part{i % 2}" / f"{clip}.flv")
        mp3 = mini / "AudioMP3" / f"{clip.replace('1001', '1002')}.mp3"
        _linked(mp3, raw / "AudioMP3" / f"{clip}.mp3")
    manifest = cremad.prepare(tmp_path / "repack", tmp_path / "c1")
    reliability("raw-data variants and misnamed samples given to prepare (read, or reported with the fix)", 3)
    assert sum(manifest.splits.values()) == 6 and manifest.sources["audio_from"]["AudioMP3"] == 6
    # 2. a wav resampled to 44.1 kHz gives (nearly) the same features as the 16 kHz original
    raw44 = tmp_path / "hz44"
    shutil.copytree(mini, raw44, symlinks=True)
    wave, rate = sf.read(mini / "AudioWAV" / "1001_DFA_DIS_XX.wav", dtype="float32")
    (raw44 / "AudioWAV" / "1001_DFA_DIS_XX.wav").unlink()
    up = torchaudio.functional.resample(torch.from_numpy(wave), rate, 44100).numpy()
    sf.write(raw44 / "AudioWAV" / "1001_DFA_DIS_XX.wav", up, 44100, subtype="FLOAT")
    cremad.prepare(raw44, tmp_path / "c2")
    a, b = _rows(tmp_path / "c2")["1001_DFA_DIS_XX"], _rows(ogmge)["1001_DFA_DIS_XX"]
    got = np.load(tmp_path / "c2" / a[0] / "audio.npy")[a[1]].astype(np.float32)
    want = np.load(ogmge / b[0] / "audio.npy")[b[1]].astype(np.float32)
    assert np.abs(got - want).mean() < 0.05 * np.abs(want).mean()
    # 3. OGM-GE's layout: Image-01-FPS/<id>/00000.jpg ... and AudioWAV/, no VideoFlash/
    ogm = tmp_path / "ogm"
    for clip in ids:
        (ogm / "Image-01-FPS" / clip).mkdir(parents=True)
        with av.open(str(mini / "VideoFlash" / f"{clip}.flv")) as container:
            fps = round(float(container.streams.video[0].average_rate))
            for k, frame in enumerate(container.decode(video=0)):
                if k % fps == 0:
                    frame.to_image().save(ogm / "Image-01-FPS" / clip / f"{k:05d}.jpg")
        _linked(mini / "AudioWAV" / f"{clip}.wav", ogm / "AudioWAV" / f"{clip}.wav")
    manifest = cremad.prepare(ogm, tmp_path / "c3")
    assert sum(manifest.splits.values()) == 6 and "Image-01-FPS" in manifest.params["visual_from"]
    assert manifest.modalities["visual"].shape == [3, 3, 224, 224]
    split, row, _ = _rows(tmp_path / "c3")["1001_DFA_ANG_XX"]
    frames = np.load(tmp_path / "c3" / split / "visual.npy")[row]
    first = np.asarray(Image.open(ogm / "Image-01-FPS" / "1001_DFA_ANG_XX" / "00000.jpg").convert("RGB")
                       .resize((224, 224), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(frames[0], first)


def test_audio_only_copy_duplicates_misnamed_empty_and_silent_files(capsys, tmp_path, mini, reliability):
    # Kaggle's CREMA-D: AudioWAV/ alone: refused, saying what is missing
    kaggle = tmp_path / "kaggle"
    shutil.copytree(mini / "AudioWAV", kaggle / "AudioWAV" / "AudioWAV", symlinks=True)
    code, _, err = run_cli(capsys, "prepare", "cremad", "--raw", kaggle, "--out", tmp_path / "o")
    assert code == 2 and "audio-only copy" in err and "VideoFlash" in err
    # a second copy of a clip, a misnamed file, a 0-sample wav and a silent wav
    raw = tmp_path / "raw"
    shutil.copytree(mini, raw, symlinks=True)
    _linked(mini / "VideoFlash" / "1001_DFA_ANG_XX.flv", raw / "VideoFlash" / "copy" / "1001_DFA_ANG_XX.flv")
    _linked(mini / "VideoFlash" / "1001_DFA_NEU_XX.flv", raw / "VideoFlash" / "1001_dfa_neu_xx (1).flv")
    for name, samples in (("1001_DFA_FEA_XX", 0), ("1001_DFA_HAP_XX", 16000)):
        (raw / "AudioWAV" / f"{name}.wav").unlink()
        sf.write(raw / "AudioWAV" / f"{name}.wav", np.zeros(samples, np.float32), 16000)
    manifest = cremad.prepare(raw, tmp_path / "out")
    reasons = {str(Path(s["file"]).relative_to(raw)): s["reason"] for s in manifest.skipped
               if not s["file"].startswith(str(raw / "AudioMP3")) and "1002_" not in s["file"]}
    reliability("unusable media files given to prepare (skipped with a reason, the rest written)", len(reasons))
    assert "a second file for clip 1001_DFA_ANG_XX" in reasons["VideoFlash/copy/1001_DFA_ANG_XX.flv"]
    assert "does not follow its siblings'" in reasons["VideoFlash/1001_dfa_neu_xx (1).flv"]
    assert reasons["VideoFlash/1001_DFA_FEA_XX.flv"] == "empty audio (0 samples)"
    assert "1001_DFA_HAP_XX" in _rows(tmp_path / "out")  # silent: kept ...
    assert [w for w in manifest.warnings if "1001_DFA_HAP_XX" in w and "silent audio" in w]  # ... and reported
