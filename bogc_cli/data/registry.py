"""The datasets bogc knows: what each holds, its presets, where its cache lives by default.

Two kinds of preset:
- *prepare presets* change how raw files become arrays (``bogc prepare --preset``), and are
  recorded in the cache's manifest;
- *view presets* choose a subset of a cache's modalities at recipe time (``dataset.preset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    modalities: tuple[str, ...]
    prepare_presets: dict[str, str] = field(default_factory=dict)
    view_presets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    needs_prepare: bool = True

    @property
    def default_root(self) -> str:
        return f"data/{self.name}"


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "synthetic",
            "built in, nothing to download: seeded class patterns with per-modality signal-to-noise "
            "and informativeness, so one modality dominates",
            ("audio", "image", "vector"),
            needs_prepare=False,
        ),
        DatasetInfo(
            "avdigits",
            "FSDD spoken digits (audio, log-mel) paired by label with MNIST images; FSDD's official "
            "split, saved validation carve-out",
            ("audio", "image"),
            prepare_presets={
                "logmel-64": "64-bin log-mel spectrogram, 1 s at 8 kHz, 1x64x101 (default)",
                "stft": "log-magnitude STFT, n_fft 256, hop 80, 1x129x101",
            },
        ),
        DatasetInfo(
            "mfeat",
            "UCI Multiple Features: 2000 handwritten digits, 6 feature views; stratified seeded split",
            ("fou", "fac", "kar", "pix", "zer", "mor"),
            view_presets={
                "all6": ("fou", "fac", "kar", "pix", "zer", "mor"),
                "weak3": ("fou", "zer", "mor"),
            },
        ),
        DatasetInfo(
            "arrays",
            "your own data: <split>/<modality>.npy + <split>/labels.npy, or <split>.npz per split; "
            "optional classes.txt",
            (),
        ),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    from bogc_cli.errors import UserError

    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]
