"""The resumable per-item cache writer: journal, resume, compaction of skipped items, changed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.clipstore import JOURNAL, PLAN, STAGING, Item, SkipItem, build_store

LAYOUT = {"x": ((2, 3), "float16"), "y": ((4,), "uint8")}


def decode(item: Item) -> dict[str, np.ndarray]:
    """Item i -> x filled with i, y filled with i % 256; items whose source is 'bad' are skipped."""
    if item.source == "bad":
        raise SkipItem("bad file")
    if item.source == "boom":
        raise ValueError("decoder crashed")
    if item.source == "shape":
        return {"x": np.zeros((3, 3), np.float16), "y": np.zeros(4, np.uint8)}
    i = int(item.key)
    return {"x": np.full((2, 3), i, np.float16), "y": np.full(4, i % 256, np.uint8)}


def _items(n: int, bad: dict[int, str] | None = None) -> list[Item]:
    bad = bad or {}
    return [Item(str(i), "test" if i % 4 == 0 else "train", i % 3, bad.get(i, f"file{i}.bin")) for i in range(n)]


def test_skipped_items_are_left_out_and_rows_stay_aligned(tmp_path):
    items = _items(12, {1: "bad", 5: "boom", 6: "shape"})
    splits, skipped, _ = build_store(tmp_path, items, LAYOUT, decode, fingerprint="f")
    assert {s["file"]: s["reason"].split(" (")[0] if s["file"] == "boom" else s["reason"] for s in skipped} == {
        "bad": "bad file", "boom": "cannot decode", "shape": "decoder returned x of shape (3, 3), expected (2, 3)"}
    train = splits["train"]
    assert train.ids == [str(i) for i in range(12) if i % 4 and i not in (1, 5, 6)]
    for row, key in enumerate(train.ids):
        assert np.all(np.asarray(train.inputs["x"][row]) == int(key))
        assert train.labels[row] == int(key) % 3
    assert splits["test"].ids == ["0", "4", "8"]
    assert (tmp_path / "train" / "x.npy").is_file() and not (tmp_path / STAGING).exists()


def test_a_cut_journal_line_is_redone_and_a_changed_plan_starts_over(tmp_path, monkeypatch):
    items = _items(8)

    done = []

    def stop_after_five(item):
        if len(done) == 5:
            raise KeyboardInterrupt
        done.append(item.key)
        return decode(item)

    with pytest.raises(KeyboardInterrupt):
        build_store(tmp_path, items, LAYOUT, stop_after_five, fingerprint="f")
    journal = tmp_path / STAGING / JOURNAL
    lines = journal.read_text().splitlines()
    assert len(lines) == 5
    journal.write_text("\n".join(lines[:4]) + "\n" + lines[4][:3])  # the kill cut the last line short
    redone = []

    def counting(item):
        redone.append(item.key)
        return decode(item)

    splits, _, _ = build_store(tmp_path, items, LAYOUT, counting, fingerprint="f")
    assert len(redone) == 4  # 3 never done + 1 whose journal line was cut
    assert sum(len(s) for s in splits.values()) == 8

    # a staging folder from other inputs is discarded, not mixed in
    with pytest.raises(KeyboardInterrupt):
        done.clear()
        build_store(tmp_path, items, LAYOUT, stop_after_five, fingerprint="f")
    redone.clear()
    log: list[str] = []
    build_store(tmp_path, items, LAYOUT, counting, fingerprint="other", log=log.append)
    assert len(redone) == 8 and any("discarding" in line for line in log)
    assert not (tmp_path / STAGING / PLAN).exists()


def test_a_warning_keeps_the_item_and_survives_a_resume(tmp_path):
    from data_prep.clipstore import WARNING

    def warn_on_three(item):
        out = decode(item)
        if item.key == "3":
            out[WARNING] = "silent audio (every sample is 0): kept"
        return out

    items = _items(6)
    splits, skipped, warnings = build_store(tmp_path, items, LAYOUT, warn_on_three, fingerprint="f")
    assert not skipped and warnings == ["file3.bin: silent audio (every sample is 0): kept"]
    assert "3" in splits["train"].ids
    # the journal keeps the warning for a resumed run (4 tab-separated fields; 3-field lines still read)
    from data_prep.clipstore import _read_journal

    journal = tmp_path / "j.tsv"
    journal.write_text("train\t0\t\ttoo quiet\ntrain\t1\tbad file\ntest\t0\t\n")
    assert _read_journal(journal) == ({("train", 0): None, ("train", 1): "bad file", ("test", 0): None},
                                      {("train", 0): "too quiet"})


def test_a_run_stopped_while_moving_finished_splits_starts_over(tmp_path, monkeypatch):
    """Killed after the train split's arrays left the staging folder: the resumed run must not fill train
    with empty rows from new staging arrays; it decodes everything again."""
    import os

    from data_prep import clipstore

    items = _items(8)
    real_replace = os.replace
    moved = []

    def die_after_first_move(src, dst):
        real_replace(src, dst)
        moved.append(dst)
        if len(moved) == 2:  # both arrays of the first split moved, nothing of the second
            raise KeyboardInterrupt

    monkeypatch.setattr(clipstore.os, "replace", die_after_first_move)
    with pytest.raises(KeyboardInterrupt):
        build_store(tmp_path, items, LAYOUT, decode, fingerprint="f")
    monkeypatch.setattr(clipstore.os, "replace", real_replace)
    log: list[str] = []
    splits, _, _ = build_store(tmp_path, items, LAYOUT, decode, fingerprint="f", log=log.append)
    assert any("starting again" in line for line in log)
    for split in splits.values():
        for row, key in enumerate(split.ids):
            assert np.all(np.asarray(split.inputs["x"][row]) == int(key))
