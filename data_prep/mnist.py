"""MNIST in the forms users have it: images uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` per split.

Forms read (searched in ``mnist/`` under ``--raw``, ``--raw`` itself, and their sub-folders two levels down):

- a torchvision root: ``MNIST/raw/`` holding the IDX files (what ``torchvision.datasets.MNIST(root,
  download=True)`` makes);
- the IDX files themselves (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``), extracted or ``.gz`` as LeCun's site serves them, in any folder;
- Keras' ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``);
- the Kaggle CSVs ``mnist_train.csv`` and ``mnist_test.csv`` (a header, the label then 784 pixels per row).

IDX (LeCun et al.): a big-endian header of two zero bytes, a type code (0x08 = unsigned byte) and the
number of dimensions, then each dimension as a 32-bit integer, then the data.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bogc_cli.data.lfs import refuse_pointer
from bogc_cli.errors import UserError
from data_prep._common import folders_below

IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
KAGGLE = {"train": "mnist_train.csv", "test": "mnist_test.csv"}
KERAS = "mnist.npz"
SEARCH_DEPTH = 2
HELP = ("put MNIST under --raw as mnist/: a torchvision root (mnist/MNIST/raw/), the four IDX files (.gz or "
        "extracted), Keras' mnist.npz, or Kaggle's mnist_train.csv and mnist_test.csv")


@dataclass(frozen=True)
class MnistSource:
    """Where MNIST was found: ``form`` (``idx``, ``keras``, ``kaggle``) and its files."""

    form: str
    files: tuple[Path, ...]

    @property
    def root(self) -> Path:
        return self.files[0].parent


def _idx_file(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _find_in(folder: Path) -> MnistSource | None:
    for where in (folder / "MNIST" / "raw", folder / "raw", folder):
        files = [_idx_file(where, n) for pair in IDX.values() for n in pair]
        if all(files):
            return MnistSource("idx", tuple(files))
    if (folder / KERAS).is_file():
        return MnistSource("keras", (folder / KERAS,))
    if all((folder / n).is_file() for n in KAGGLE.values()):
        return MnistSource("kaggle", tuple(folder / n for n in KAGGLE.values()))
    return None


def find_mnist(raw: Path) -> MnistSource:
    """The MNIST files under ``raw`` in any form read (see the module doc); ``UserError`` naming the forms if none."""
    bases = [b for b in (raw / "mnist", raw / "MNIST") if b.is_dir()]
    folders = bases + [p for b in (*bases, raw) for p in folders_below(b, SEARCH_DEPTH)]
    for folder in folders:
        found = _find_in(folder)
        if found is not None:
            for path in found.files:
                refuse_pointer(path)
            return found
    raise UserError(f"no MNIST found under {raw}: {HELP}")


def load_mnist(source: MnistSource, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` of the train or test split."""
    split = "train" if train else "test"
    try:
        if source.form == "idx":
            names = dict(zip([n for pair in IDX.values() for n in pair], source.files))
            images, labels = (read_idx(names[n]) for n in IDX[split])
        elif source.form == "keras":
            with np.load(source.files[0], allow_pickle=False) as archive:
                images, labels = archive[f"x_{split}"], archive[f"y_{split}"]
        else:
            table = np.loadtxt(source.files[0 if train else 1], delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
            images, labels = table[:, 1:].reshape(-1, 28, 28), table[:, 0]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise UserError(f"cannot read MNIST's {split} split from {source.root} ({type(exc).__name__}: {exc}): "
                        f"{HELP}") from None
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise UserError(f"MNIST's {split} split in {source.root} holds images {images.shape} and labels {labels.shape}: "
                        "expected [N, 28, 28] and [N]")
    if images.max(initial=0) > 255 or images.min(initial=0) < 0:
        raise UserError(f"MNIST's {split} images in {source.root} are not pixels 0-255")
    return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (``.gz`` or not) as a numpy array of its stated shape."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path.name} holds {body.size} bytes of data, its header says {shape}")
    return body.reshape(shape)
