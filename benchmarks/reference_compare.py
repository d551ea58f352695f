"""Epoch time of a training loop written the way the reference repositories write it, against ``bogc train``,
on the same model, batch and clips, in one run.

    python benchmarks/reference_compare.py                    # CUDA: cremad-gpu; CPU: cremad-cpu

Reference style (OGM-GE's CREMA-D loader and the repositories built on it): a map-style Dataset
whose ``__getitem__`` opens each clip's JPEG frames with PIL and applies torchvision's
``RandomResizedCrop(224)``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize``, reads the WAV
and computes the log-STFT spectrogram (``[1, 257, 188]``) on the fly; the default collate; a shuffled
DataLoader with pinned memory and the same worker count as ours; an fp32 training step. Ours: the
prepared cache (frames decoded and spectrograms computed once, by ``bogc prepare``), crops and flips
on the GPU, bf16 autocast, channels-last, fused optimiser. Both train the ``joint`` method's step of
the same model. Each loop runs 2 epochs; the second is timed. Prints a table and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cremad_like import SECONDS, clips  # noqa: E402
from throughput import PRESETS, measure  # noqa: E402

from bogc_cli.data.cache import ModalitySpec  # noqa: E402
from bogc_cli.data.loader import Batch  # noqa: E402
from bogc_cli.engine.fast_path import worker_count  # noqa: E402
from bogc_cli.engine.runtime import seed_everything  # noqa: E402
from bogc_cli.fusion import METHODS, StepContext  # noqa: E402
from bogc_cli.models.build import build_model  # noqa: E402
from bogc_cli.recipe import ModelBlock  # noqa: E402
from data_prep.audio_features import log_stft  # noqa: E402


class ReferenceStyleClips(Dataset):
    """Per-sample decoding, as the reference loaders do: ``(spectrogram [1, 257, 188], frames [T, 3, S, S], label)``."""

    def __init__(self, items: list[dict], side: int):
        from torchvision import transforms

        self.items = items
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(side), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        wave, sr = sf.read(item["wav"], dtype="float32")
        spec = torch.from_numpy(log_stft(wave, sr, SECONDS))
        frames = []
        for path in item["frames"]:
            with Image.open(path) as img:
                frames.append(self.transform(img.convert("RGB")))
        return spec, torch.stack(frames), item["label"]


def reference_epochs(items: list[dict], preset: dict, workers: int, epochs: int = 2) -> list[float]:
    """Seconds per epoch of the reference-style loop (fp32, per-sample decode)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(0)  # the same determinism settings as a default bogc recipe
    shape = preset["shape"]
    specs = {"audio": ModalitySpec("audio", [1, 257, 188], "float16"),
             "visual": ModalitySpec("video", [shape.frames, 3, shape.side, shape.side], "uint8")}
    model = build_model(ModelBlock(encoders=preset["encoders"], **preset["model"]), specs, 6).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    method = METHODS["joint"](METHODS["joint"].Options(), model, StepContext(device=device, optimizer=opt))
    loader = DataLoader(ReferenceStyleClips(items, shape.side), batch_size=preset["batch"], shuffle=True,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(epochs):
        model.train()
        sync()
        t0 = time.perf_counter()
        for spec, frames, labels in loader:
            batch = Batch({"audio": spec.to(device, non_blocking=True), "visual": frames.to(device, non_blocking=True)},
                          labels.to(device, non_blocking=True), torch.arange(len(labels)))
            method.step(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default=None, help="default: cremad-gpu on CUDA, else cremad-cpu")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers for both loops (default: bogc's auto)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the data (default: a temporary one); "
                    "throughput.py's data there is reused")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    preset_name = args.preset or ("cremad-gpu" if cuda else "cremad-cpu")
    preset = PRESETS[preset_name]
    n = args.samples or preset["samples"]
    device = torch.device("cuda" if cuda else "cpu")
    # the reference loop decodes in workers, so it gets some even where bogc's auto would use none (the CPU)
    ref_workers = args.workers if args.workers is not None else max(worker_count("auto", device), min(4, _cores() - 1))
    our_workers = args.workers if args.workers is not None else worker_count("auto", device)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        items, prep_s = clips(work, n, preset["shape"])
        ref = reference_epochs(items, preset, ref_workers)
        ours = measure(work / "cache", preset, "joint", {}, work / "results", our_workers, False)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# reference-style loop vs bogc train, preset {preset_name}: {n} clips, batch {preset['batch']}, "
          f"{where}, torch {torch.__version__}")
    print(f"{'loop':<48}{'workers':>8}{'epoch s':>9}{'samples/s':>11}")
    print(f"{'reference style (PIL + STFT per sample, fp32)':<48}{ref_workers:>8}{ref[-1]:>9.2f}{n / ref[-1]:>11.1f}")
    print(f"{'bogc train (prepared cache, augment on device)':<48}{ours['num_workers']:>8}"
          f"{ours['epoch_time_s']:>9.2f}{n / ours['epoch_time_s']:>11.1f}")
    print(f"ratio (reference / bogc): {ref[-1] / ours['epoch_time_s']:.2f}x; "
          f"bogc's one-off preparation of these clips: {prep_s:.1f} s "
          f"(= {prep_s / ref[-1]:.1f} reference epochs)")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
