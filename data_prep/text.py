"""Text -> token ids and attention masks, at ``bogc prepare`` time, for every preparer with a text modality.

Two tokenizers, one interface (``encode``, ``describe``, ``save``):

- ``PretrainedTokenizer``: the tokenizer of a local Hugging Face model directory (``--tokenizer DIR``),
  loaded with ``transformers.AutoTokenizer.from_pretrained(DIR, local_files_only=True)`` (never a
  download). Use it with the same model as the text encoder (``model.encoders.<m>: {name: hf, path:
  DIR}``): the ids are that model's vocabulary. A tokenizer without a padding token (GPT-2's) pads with
  its end-of-text token; the mask tells padding apart either way.
- ``WordTokenizer``: without ``--tokenizer``, a word-level vocabulary built from the TRAIN split only
  (so validation and test words the model never saw become ``[UNK]``): scikit-learn's
  ``CountVectorizer`` lower-cases and splits into words and punctuation marks
  (``(?u)\\b\\w+\\b|[^\\w\\s]``) and keeps the ``WORD_VOCAB_LIMIT`` most frequent tokens. Ids: 0
  ``[PAD]``, 1 ``[UNK]``, then the kept tokens in alphabetical order. No pretrained model is needed; the
  ``text-transformer`` encoder learns embeddings for it from scratch.

Each text is truncated or padded to ``max_length`` tokens (``--max-length``, default
``DEFAULT_MAX_LENGTH``; special tokens such as ``[CLS]``/``[SEP]`` count). ``encode_texts`` returns the
cache's ``text`` array ``[N, 2, L]`` int32 (``bogc_cli.data.cache``): row 0 ids, row 1 mask. The
tokenizer is saved in the cache (``tokenizers/<modality>/``) and described in the manifest
(``ModalitySpec.tokenizer``).

A preparer uses it as::

    tokenizer = make_tokenizer(tokenizer_dir, train_texts)          # before tokenising any split
    arrays = {split: encode_texts(texts, tokenizer, max_length) for split, texts in texts_by_split.items()}
    write_cache(..., kinds={"text": "text"}, tokenizers={"text": tokenizer.describe(max_length)})
    save_tokenizer(out, "text", tokenizer)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from bogc_cli.data.cache import TOKENIZERS_DIR
from bogc_cli.errors import UserError

DEFAULT_MAX_LENGTH = 128
WORD_VOCAB_LIMIT = 30_000
WORD_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
PAD, UNK = "[PAD]", "[UNK]"
#: Files that hold a tokenizer's vocabulary, one of which a ``--tokenizer`` directory must have.
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
               "tokenizer.model")
#: Every file a tokenizer may be read from (hashed for the manifest and the cache's fingerprint).
TOKENIZER_FILES = (*VOCAB_FILES, "tokenizer_config.json", "special_tokens_map.json", "merges.txt",
                   "added_tokens.json")
MAX_ID = 2**24  # batches carry ids as float32, exact below 2**24


class Tokenizer(Protocol):
    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self, max_length: int) -> dict[str, Any]: ...

    def save(self, folder: Path) -> None: ...


class WordTokenizer:
    """Word-level vocabulary fitted on training texts (see module doc); ``vocabulary[i]`` is id ``i``."""

    kind = "word"

    def __init__(self, vocabulary: list[str]):
        from sklearn.feature_extraction.text import CountVectorizer

        self.vocabulary = list(vocabulary)
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        self.analyzer = CountVectorizer(lowercase=True, token_pattern=WORD_PATTERN).build_analyzer()

    @classmethod
    def fit(cls, texts: Sequence[str], max_size: int = WORD_VOCAB_LIMIT) -> "WordTokenizer":
        """The ``max_size`` most frequent tokens of ``texts`` (the train split). ``UserError`` when they hold
        no word at all."""
        from sklearn.feature_extraction.text import CountVectorizer

        vectorizer = CountVectorizer(lowercase=True, token_pattern=WORD_PATTERN, max_features=max_size)
        try:
            vectorizer.fit(list(texts))
        except ValueError:  # "empty vocabulary"
            raise UserError(f"the {len(texts)} training texts hold no word: the word vocabulary cannot be built "
                            "(check the text files, or give --tokenizer DIR)") from None
        return cls([PAD, UNK, *vectorizer.get_feature_names_out().tolist()])

    @classmethod
    def load(cls, path: Path) -> "WordTokenizer":
        """From a ``vocab.txt`` that ``save`` wrote."""
        return cls(Path(path).read_text(encoding="utf-8").splitlines())

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and mask, each ``[N, max_length]`` int32; unknown tokens are 1, padding 0."""
        ids = np.zeros((len(texts), max_length), np.int32)
        mask = np.zeros((len(texts), max_length), np.int32)
        for row, text in enumerate(texts):
            tokens = [self.index.get(t, 1) for t in self.analyzer(str(text))][:max_length]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return ids, mask

    def describe(self, max_length: int) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": len(self.vocabulary), "pad_id": 0, "unk_id": 1,
                "max_length": max_length, "built_from": "the train split", "limit": WORD_VOCAB_LIMIT,
                "pattern": WORD_PATTERN, "lowercase": True, "file": f"{TOKENIZERS_DIR}/<modality>/vocab.txt"}

    def save(self, folder: Path) -> None:
        from bogc_cli.atomic import write_text

        write_text(Path(folder) / "vocab.txt", "\n".join(self.vocabulary) + "\n")


class PretrainedTokenizer:
    """The tokenizer of a local Hugging Face model directory (see module doc)."""

    kind = "pretrained"

    def __init__(self, directory: str | Path):
        from bogc_cli.optional import require

        self.directory = Path(directory).expanduser().resolve()
        check_tokenizer_dir(self.directory)
        transformers = require("transformers", f"--tokenizer {directory}")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"--tokenizer {directory}: transformers cannot read a tokenizer there "
                            f"({type(exc).__name__}: {_first_line(exc)}); expected the files `save_pretrained` "
                            "writes (tokenizer.json, or vocab.txt with tokenizer_config.json)") from None
        special = set(self.tokenizer.all_special_ids)
        if len(self.tokenizer) <= len(special):
            raise UserError(f"--tokenizer {directory}: the tokenizer read there has no vocabulary besides its "
                            f"{len(special)} special tokens; its vocabulary file is empty or of another format")
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise UserError(f"--tokenizer {directory}: the tokenizer has neither a padding nor an end-of-text "
                                "token to pad with; add a pad_token to its tokenizer_config.json")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if len(self.tokenizer) > MAX_ID:
            raise UserError(f"--tokenizer {directory}: {len(self.tokenizer):,} tokens; at most {MAX_ID:,} are supported")
        self.version = transformers.__version__

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and mask, each ``[N, max_length]`` int32 (the tokenizer's special tokens included)."""
        enc = self.tokenizer([str(t) for t in texts], max_length=max_length, padding="max_length", truncation=True,
                             return_attention_mask=True, return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)

    def describe(self, max_length: int) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": len(self.tokenizer), "pad_id": int(self.tokenizer.pad_token_id),
                "max_length": max_length, "path": str(self.directory), "class": type(self.tokenizer).__name__,
                "files_sha256": tokenizer_files_sha256(self.directory), "transformers": self.version,
                "file": f"{TOKENIZERS_DIR}/<modality>/"}

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))


def check_tokenizer_dir(directory: Path) -> None:
    """Refuse a ``--tokenizer`` that is no directory or holds no vocabulary file (before transformers is asked:
    given a name it does not find as a folder, it would try the hub)."""
    if not directory.exists():
        raise UserError(f"--tokenizer {directory} does not exist: give the local directory of a Hugging Face "
                        "model or tokenizer (what `save_pretrained` wrote); nothing is downloaded")
    if not directory.is_dir():
        raise UserError(f"--tokenizer {directory} is a file: give the directory that holds it and the tokenizer's "
                        "other files")
    if not any((directory / name).is_file() for name in VOCAB_FILES):
        raise UserError(f"--tokenizer {directory} holds no tokenizer: expected one of {', '.join(VOCAB_FILES)} (save "
                        "the tokenizer there with tokenizer.save_pretrained(DIR))")


def tokenizer_files_sha256(directory: Path) -> dict[str, str]:
    """sha256 of each tokenizer file in ``directory`` (``TOKENIZER_FILES`` that exist)."""
    out = {}
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def text_fingerprint(directory: str | Path | None, max_length: int | None) -> dict[str, Any]:
    """What a cache's text depends on besides the raw files, for a preparer's fingerprint: the tokenizer's
    files (their sha256) and the length. Empty when neither is given (no text options)."""
    if directory is None and max_length is None:
        return {}
    out: dict[str, Any] = {"max_length": check_max_length(max_length)}
    if directory is not None:
        path = Path(directory).expanduser().resolve()
        check_tokenizer_dir(path)
        out["tokenizer"] = {"path": str(path), "files_sha256": tokenizer_files_sha256(path)}
    return out


def make_tokenizer(directory: str | Path | None, train_texts: Sequence[str]) -> WordTokenizer | PretrainedTokenizer:
    """``PretrainedTokenizer(directory)``, or without one a ``WordTokenizer`` fitted on ``train_texts``."""
    if directory is not None:
        return PretrainedTokenizer(directory)
    return WordTokenizer.fit(train_texts)


def check_max_length(max_length: int | None) -> int:
    """``--max-length`` (default ``DEFAULT_MAX_LENGTH``), a positive number of tokens."""
    value = DEFAULT_MAX_LENGTH if max_length is None else int(max_length)
    if value < 1:
        raise UserError(f"--max-length {value}: a text needs at least one token; give a positive length, e.g. "
                        f"{DEFAULT_MAX_LENGTH}")
    return value


def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, max_length: int) -> np.ndarray:
    """The cache's text array ``[N, 2, max_length]`` int32: ids (row 0) and attention mask (row 1)."""
    ids, mask = tokenizer.encode(texts, max_length)
    return np.stack([ids, mask], axis=1).astype(np.int32)


def save_tokenizer(out: Path, modality: str, tokenizer: Tokenizer) -> Path:
    """Save the tokenizer into the cache at ``out/tokenizers/<modality>/``; returns that folder."""
    folder = Path(out) / TOKENIZERS_DIR / modality
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder)
    return folder


def tokenise_splits(out: Path, splits: dict, text_of: dict[str, str], tokenizer: Tokenizer | None, max_length: int,
                    modality: str = "text") -> Tokenizer:
    """Tokenise the texts of a cache's splits, already written to ``out`` (``SplitArrays`` whose ``ids`` key
    ``text_of``): each split's ``out/<split>/<modality>.npy`` int32 ``[N, 2, max_length]`` is written and
    attached, memory-mapped, as its ``modality`` input, and the tokenizer saved in the cache. Without a
    ``tokenizer``, the word vocabulary is fitted on the train split's texts. Returns the tokenizer used."""
    from bogc_cli.atomic import save_numpy

    tok = tokenizer or WordTokenizer.fit([text_of[k] for k in splits["train"].ids])
    for name, split in splits.items():
        path = Path(out) / name / f"{modality}.npy"
        save_numpy(path, encode_texts([text_of[k] for k in split.ids], tok, max_length))
        split.inputs[modality] = np.load(path, mmap_mode="r")
    save_tokenizer(out, modality, tok)
    return tok


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


__all__ = ["DEFAULT_MAX_LENGTH", "PretrainedTokenizer", "WordTokenizer", "check_max_length", "check_tokenizer_dir",
           "encode_texts", "make_tokenizer", "save_tokenizer", "text_fingerprint", "tokenise_splits",
           "tokenizer_files_sha256"]
