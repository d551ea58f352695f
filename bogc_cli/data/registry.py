"""The datasets bogc knows: what each holds, its presets, where its cache lives by default.

Two kinds of preset:
- *prepare presets* change how raw files become arrays (``bogc prepare --preset``), and are
  recorded in the cache's manifest;
- *view presets* choose a subset of a cache's modalities at recipe time (``dataset.preset``).

``tasks``: the task types (``data/cache.py`` ``TASKS``) the dataset's caches can hold; which one a cache
holds is its manifest's ``task`` (e.g. CMU-MOSI prepared with ``--preset regression``).
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
    tasks: tuple[str, ...] = ("classification",)

    @property
    def default_root(self) -> str:
        return f"data/{self.name}"


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "synthetic",
            "built in, nothing to download: seeded class patterns with per-modality signal-to-noise "
            "and informativeness, so one modality dominates; imbalance: {ratio, strong, weak, snr} sets two "
            "modalities' SNR ratio at a fixed root-mean-square SNR (an imbalance sweep)",
            ("audio", "image", "vector"),
            needs_prepare=False,
        ),
        DatasetInfo(
            "avdigits",
            "FSDD spoken digits (audio, log-mel) paired by label with MNIST images; FSDD's official "
            "split, saved validation carve-out; preset avmnist: the AV-MNIST protocol (images with 75% of "
            "their energy removed by a train-fitted PCA, pink noise at -3 dB SNR in the speech)",
            ("audio", "image"),
            prepare_presets={
                "logmel-64": "64-bin log-mel spectrogram, 1 s at 8 kHz, 1x64x101 (default)",
                "stft": "log-magnitude STFT, n_fft 256, hop 80, 1x129x101",
                "avmnist": "AV-MNIST protocol: pink noise at -3 dB SNR mixed into the audio, 40-bin log-mel "
                           "(hop 20 ms) 1x40x51; images with 75% of their energy removed by a PCA fitted on train "
                           "(float16 1x28x28)",
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
            "cremad",
            "CREMA-D emotions (NEU HAP SAD FEA DIS ANG): speech audio + face video frames; the standard "
            "6,698 / 744 split with a saved validation carve-out from train",
            ("audio", "visual"),
            prepare_presets={
                "ogmge": "OGM-GE: 22,050 Hz tiled to 3 s, log |STFT| n_fft 512 hop 353 -> 1x257x188; "
                         "3 frames at 1 fps, 224 px (default)",
                "fbank": "128-bin Kaldi fbank at 16 kHz, 10 ms shift, 300 frames (3 s), AST-normalised; "
                         "2 frames at 1 fps, 224 px",
            },
        ),
        DatasetInfo(
            "kinetics_sounds",
            "Kinetics-Sounds: 31 Kinetics-400 classes with audible actions, 14,799 / 2,597 clips",
            ("audio", "visual"),
            prepare_presets={
                "ogmge": "16 kHz tiled to 10 s, log |STFT| n_fft 512 hop 353 -> 1x257x454; 3 frames at 1 fps, "
                         "224 px (default)",
                "fbank": "128-bin Kaldi fbank at 16 kHz, 1,024 frames, AST-normalised; 3 frames at 1 fps, 224 px",
            },
        ),
        DatasetInfo(
            "ave",
            "AVE (Audio-Visual Event): 4,143 10-s clips, 28 event classes, official train/val/test lists",
            ("audio", "visual"),
            prepare_presets={
                "ogmge": "16 kHz tiled to 10 s, log |STFT| n_fft 512 hop 353 -> 1x257x454; 3 frames at 1 fps, "
                         "224 px (default)",
            },
        ),
        DatasetInfo(
            "mosei",
            "CMU-MOSEI sentiment: word-aligned text (GloVe), audio (COVAREP) and vision (Facet) feature "
            "sequences from the MulT pickle; its official train/valid/test",
            ("text", "audio", "vision"),
            prepare_presets={
                "acc2": "binary sentiment: negative (< 0) vs non-negative (>= 0) (default)",
                "acc7": "7 classes: sentiment rounded and clipped to -3..3",
                "regression": "the continuous sentiment in [-3, 3] (task regression; MAE, Corr, Acc-2, F1, Acc-7)",
            },
            tasks=("classification", "regression"),
        ),
        DatasetInfo(
            "mosi",
            "CMU-MOSI sentiment: word-aligned text, audio and vision feature sequences from the MulT "
            "pickle; its official train/valid/test",
            ("text", "audio", "vision"),
            prepare_presets={
                "acc2": "binary sentiment: negative (< 0) vs non-negative (>= 0) (default)",
                "acc7": "7 classes: sentiment rounded and clipped to -3..3",
                "regression": "the continuous sentiment in [-3, 3] (task regression; MAE, Corr, Acc-2, F1, Acc-7)",
            },
            tasks=("classification", "regression"),
        ),
        DatasetInfo(
            "iemocap",
            "IEMOCAP emotions (neutral, happy, sad, angry): text (GloVe), audio (COVAREP) and vision (Facet) "
            "feature sequences from MulT's pickle (aligned or not); its train/valid/test, 2,717 / 798 / 938",
            ("text", "audio", "vision"),
            prepare_presets={
                "multilabel": "MulT's: four present/absent targets, one per emotion (task multilabel) (default)",
                "4class": "CGGM's: one of the four emotions per segment (task classification); segments with "
                          "none or several present are left out and reported",
            },
            tasks=("multilabel", "classification"),
        ),
        DatasetInfo(
            "mmimdb",
            "MM-IMDb movie genres: poster (image) + longest plot (text), the authors' 23 genres, multi-label; "
            "the official split.json, 15,552 / 2,608 / 7,799",
            ("image", "text"),
            prepare_presets={
                "center224": "poster: shorter side 256 px, centre crop 224 (MMBT), uint8 3x224x224; plot tokenised "
                             "(--tokenizer DIR, or a word vocabulary of train) (default)",
            },
            tasks=("multilabel",),
        ),
        DatasetInfo(
            "brats_grade",
            "BraTS glioma grade (HGG vs LGG) from 4 MRI sequences (2018-2020 layouts; 2021+ with a grade table); "
            "seeded patient-level split",
            ("t1", "t1ce", "t2", "flair"),
            prepare_presets={
                "slices2d": "the 3 axial slices around the largest tumour cross-section, 128 px, per-volume "
                            "z-scored (default)",
                "vol3d": "the whole brain resampled to 64 slices of 64 px, per-volume z-scored",
            },
        ),
        DatasetInfo(
            "food101",
            "UPMC Food-101: food images + the text of their web pages, 101 classes, as CGGM uses it; the "
            "official train/test (67,988 / 22,716 rows) with a saved validation carve-out; text tokenised at "
            "prepare time (--tokenizer DIR, else a train word vocabulary; --max-length default 50, CGGM's)",
            ("image", "text"),
            prepare_presets={
                "px224": "images RGB 3x224x224 uint8 (ViT-B/16's and CGGM's input size) (default)",
                "px128": "images RGB 3x128x128 uint8",
                "px64": "images RGB 3x64x64 uint8 (small from-scratch runs)",
            },
        ),
        DatasetInfo(
            "mvsa_single",
            "MVSA-Single: tweet text + image, 3 sentiments after the standard cleaning (agree, or neutral "
            "yields; positive vs negative dropped: 4,511 pairs); no official split: stratified, "
            "seeded 8:1:1; --max-length default 128",
            ("image", "text"),
            prepare_presets={
                "px224": "images RGB 3x224x224 uint8 (default)",
                "px128": "images RGB 3x128x128 uint8",
                "px64": "images RGB 3x64x64 uint8 (small from-scratch runs)",
            },
        ),
        DatasetInfo(
            "arrays",
            "your own data: <split>/<modality>.npy + <split>/labels.npy, or <split>.npz per split; "
            "optional classes.txt; a cache written with data.cache.write_cache may hold any task type",
            (),
            tasks=("classification", "multilabel", "regression"),
        ),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    from bogc_cli.errors import UserError

    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]
