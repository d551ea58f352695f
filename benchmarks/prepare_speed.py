"""How fast `bogc prepare cremad` turns CREMA-D clips into a cache, with 1 and more workers.

Builds a CREMA-D-shaped raw folder of N clips by linking the genuine clips of
../shared/data/crema_d_mini (flv video with its 16 kHz wav) under new actor ids, prepares it once
per worker count into a fresh folder (decoding, features, writing and the final moves included;
worker start-up too), and prints a table of clips per second.

    python benchmarks/prepare_speed.py [--clips 96] [--workers 1,2] [--preset ogmge]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from data_prep import cremad

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "crema_d_mini"


def build_raw(raw: Path, clips: int, mini: Path = MINI) -> int:
    """``clips`` CREMA-D-named links to the mini set's video+wav pairs (cycled); returns the count made."""
    pairs = sorted(p.stem for p in (mini / "VideoFlash").glob("*.flv") if (mini / "AudioWAV" / f"{p.stem}.wav").is_file())
    if not pairs:
        raise SystemExit(f"no CREMA-D clips with video and wav in {mini}")
    (raw / "VideoFlash").mkdir(parents=True)
    (raw / "AudioWAV").mkdir(parents=True)
    test_ids = sorted(cremad.read_test_ids())
    for i in range(clips):
        src = pairs[i % len(pairs)]
        # every tenth clip takes a name from the standard test list, so both splits exist
        name = test_ids[i // 10 % len(test_ids)] if i % 10 == 0 else f"{2001 + i // len(pairs)}_DFA_{src.split('_')[2]}_XX"
        os.symlink(mini / "VideoFlash" / f"{src}.flv", raw / "VideoFlash" / f"{name}.flv")
        os.symlink(mini / "AudioWAV" / f"{src}.wav", raw / "AudioWAV" / f"{name}.wav")
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--preset", default="ogmge", choices=sorted(cremad.PRESETS))
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bogc-prepare-speed-"))
    try:
        build_raw(work / "raw", args.clips)
        rows = []
        for workers in counts:
            out = work / f"out{workers}"
            start = time.perf_counter()
            manifest = cremad.prepare(work / "raw", out, preset=args.preset, workers=workers)
            seconds = time.perf_counter() - start
            rows.append((workers, sum(manifest.splits.values()), seconds))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bogc prepare cremad --preset {args.preset}: {args.clips} CREMA-D clips (flv 480x360 + 16 kHz wav), "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}")
    print()
    print("| workers | clips | seconds | clips/s | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    base = rows[0][1] / rows[0][2]
    for workers, clips, seconds in rows:
        rate = clips / seconds
        print(f"| {workers} | {clips} | {seconds:.1f} | {rate:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
