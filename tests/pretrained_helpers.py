"""Tiny pretrained models and text data made by the tests (nothing is downloaded): a BERT built from a config with
its WordPiece tokenizer saved beside it, torchvision and timm state-dict files, an arrays folder with text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["good", "great", "happy", "fine", "bad", "awful", "sad", "poor", "the", "movie", "was", "very", "plot",
         "and", "a", "film", "not", "it", "is"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE, NEGATIVE = WORDS[:4], WORDS[4:8]


def tiny_bert(folder: Path, *, layers: int = 2, hidden: int = 16, positions: int = 64, tokenizer: bool = True) -> Path:
    """A 2-layer, 16-wide BERT (``BertModel(BertConfig(...)).save_pretrained``) and, with ``tokenizer``, a
    WordPiece tokenizer over ``WORDS`` (its vocab.txt written here, then ``save_pretrained``), in ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS + ["##s", "##ing", "##ed"]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=positions)
    BertModel(config).save_pretrained(folder)
    if tokenizer:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    return folder


def sentiment_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` short reviews whose label (1 positive, 0 negative) is told by one sentiment word among fillers."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = []
    for y in labels:
        filler = list(rng.choice(WORDS[8:], size=rng.integers(2, 6)))
        word = rng.choice(POSITIVE if y else NEGATIVE)
        filler.insert(int(rng.integers(0, len(filler) + 1)), word)
        texts.append(" ".join(filler))
    return texts, labels.astype(np.int64)


def text_arrays_folder(root: Path, n_train: int = 48, n_test: int = 16, with_image: bool = True) -> Path:
    """An arrays folder: ``<split>/text.txt`` (one review per line), ``<split>/image.npy`` (uint8 3x8x8 noise,
    uninformative) and ``labels.npy``, for train and test."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        texts, labels = sentiment_texts(n, seed)
        (folder / "text.txt").write_text("\n".join(texts) + "\n")
        if with_image:
            np.save(folder / "image.npy", np.random.default_rng(seed).integers(0, 255, (n, 3, 8, 8), dtype=np.uint8))
        np.save(folder / "labels.npy", labels)
    return root
