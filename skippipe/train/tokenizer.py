"""SentencePiece tokenizer: trained on a corpus's train split on first use, then cached.

The cache file is `<cache_dir>/tokenizer-<key>.model` where the key hashes the corpus content
hash, the vocabulary size and the training settings below, so a changed corpus or vocabulary
gets a new tokenizer and an unchanged one is never retrained. Training is deterministic: the
input sentences are chosen by a fixed stride (no reservoir sampling), the trainer's random seed
is fixed and it runs single-threaded.

API:
- `tokenizer_key(corpus_hash, vocab_size) -> str`
- `train_tokenizer(sentences, vocab_size) -> bytes` (serialized SentencePiece model)
- `cached_tokenizer(corpus_hash, sentences, vocab_size, cache_dir) -> Path` (trains if absent)
- `load_tokenizer(path, max_vocab=None) -> SentencePieceProcessor`
- `encode_documents(processor, texts) -> np.ndarray[int32]` (EOS after every document)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from ..errors import SkipPipeError
from ..util.files import write_atomic

log = logging.getLogger(__name__)

TOKENIZER_VERSION = 1  # bump when the settings below change: it is part of the cache key
MAX_TRAINING_SENTENCES = 60_000  # sentences fed to the trainer (keeps training to seconds)
TRAINER_SEED = 1  # SentencePiece's internal random generator seed
TRAINER_SETTINGS = {  # passed to SentencePieceTrainer.train
    "model_type": "unigram",
    "character_coverage": 0.9995,  # rarer characters map to <unk>
    "hard_vocab_limit": False,  # a small corpus may yield fewer pieces than asked for
    "bos_id": -1,  # no BOS piece; EOS (id 2) separates documents
    "unk_id": 0,
    "eos_id": 1,
    "pad_id": -1,
    "num_threads": 1,  # deterministic
    "max_sentence_length": 8192,  # bytes; longer lines are skipped by the trainer
    "minloglevel": 2,  # quiet
}


class TokenizerError(SkipPipeError):
    """A tokenizer file that cannot be used or a corpus SentencePiece cannot train on."""


def tokenizer_key(corpus_hash: str, vocab_size: int) -> str:
    """Cache key of the tokenizer for a corpus and vocabulary size (16 hex digits)."""
    text = (
        f"v{TOKENIZER_VERSION}:{corpus_hash}:{vocab_size}:{MAX_TRAINING_SENTENCES}:"
        f"{TRAINER_SEED}:{sorted(TRAINER_SETTINGS.items())}"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _strided(sentences: Sequence[str], limit: int) -> list[str]:
    """At most `limit` sentences spread evenly over the input, in input order."""
    if len(sentences) <= limit:
        return list(sentences)
    return [sentences[i * len(sentences) // limit] for i in range(limit)]


def train_tokenizer(sentences: Sequence[str], vocab_size: int) -> bytes:
    """Train a SentencePiece model on `sentences` (non-empty lines); returns the model bytes."""
    chosen = _strided([s for s in sentences if s.strip()], MAX_TRAINING_SENTENCES)
    if not chosen:
        raise TokenizerError("no text to train the tokenizer on")
    spm.set_random_generator_seed(TRAINER_SEED)
    model = _BytesSink()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chosen),
            model_writer=model,
            vocab_size=vocab_size,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            **TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        raise TokenizerError(
            f"SentencePiece training failed (vocab_size {vocab_size}): {str(e).splitlines()[0]}"
        ) from None
    return model.data


class _BytesSink:
    """A write-only sink SentencePiece can write the trained model into."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def cached_tokenizer(
    corpus_hash: str, sentences: Callable[[], Sequence[str]], vocab_size: int, cache_dir: Path
) -> Path:
    """Path of the tokenizer for this corpus and vocabulary; trains and caches it if absent.

    `sentences` is called only when training is needed.
    """
    path = Path(cache_dir) / f"tokenizer-{tokenizer_key(corpus_hash, vocab_size)}.model"
    if path.is_file():
        log.debug("tokenizer cache hit %s", path)
        return path
    log.info("training a %d-piece SentencePiece tokenizer -> %s", vocab_size, path)
    write_atomic(path, train_tokenizer(sentences(), vocab_size))
    return path


def load_tokenizer(path: str | Path, max_vocab: int | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model; its vocabulary must fit in `max_vocab` (the model's)."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file")
    processor = spm.SentencePieceProcessor()
    try:
        processor.load(str(path))
    except (OSError, RuntimeError):
        raise TokenizerError(f"{path}: not a SentencePiece model") from None
    if max_vocab is not None and processor.vocab_size() > max_vocab:
        raise TokenizerError(
            f"{path}: {processor.vocab_size()} pieces exceed the model's vocab_size {max_vocab}"
        )
    return processor


def encode_documents(processor: spm.SentencePieceProcessor, texts: Iterable[str]) -> np.ndarray:
    """Token ids of the documents, each followed by EOS (the separator), as one int32 array."""
    eos = processor.eos_id()
    pieces: list[int] = []
    for ids in processor.encode(list(texts)):
        pieces.extend(ids)
        if eos >= 0:
            pieces.append(eos)
    return np.asarray(pieces, dtype=np.int32)
